"""ONNX export and safe loading (``onnx_io``), and the phone bundle (``mobile``)."""
