"""Quantization, one module per method family: ONNX Runtime static/dynamic/INT4 with sensitivity
and auto selection (``ort``), Intel Neural Compressor (``inc``), PT2E quantization-aware training (``qat``)."""
