"""Pipeline stages, one module each. Importing this package registers them all."""

from stages import baseline, benchmark, export, finetune, prune, quantize, train

__all__ = ["baseline", "benchmark", "export", "finetune", "prune", "quantize", "train"]
