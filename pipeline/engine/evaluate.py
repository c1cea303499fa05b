"""What every stage's model is judged by when it is made: the deployable ONNX file, its size and
its accuracy under ONNX Runtime (validation split for decisions, test split for the report).

These numbers belong to the stage's output (the accuracy guard decides on them), so they are
cached with the stage. Latency is not here: it is a measurement (``edgeslim.engine.measure``),
cached separately by what was measured and how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.data.datasets import DataSplits
from edgeslim.engine.store import TORCH, TORCH_QAT, Artifact, sha256_file
from edgeslim.export.onnx_io import export_onnx, onnx_logits
from edgeslim.models.loader import ModelLoader

DEPLOY_FILE = "deploy.onnx"


def deployable_onnx(artifact: Artifact, models: ModelLoader, work_dir: Path) -> Path:
    """The ONNX file that would ship for this artifact (exported for PyTorch artifacts)."""
    if artifact.kind in (TORCH, TORCH_QAT):
        return export_onnx(models.load_deployable(artifact), models.example, work_dir / DEPLOY_FILE)
    return artifact.file("model")


def onnx_accuracy(path: Path, data: DataSplits, batch_size: int, split: str = "test", exact_int8: bool = True) -> float:
    """Top-1 accuracy under ONNX Runtime on one split (decisions use ``val``; reports use ``test``).

    ``batch_size`` only sets how many samples go through at once; the result does not depend on it.
    ``exact_int8=False``: ONNX Runtime's default INT8 kernels (they saturate on x86 without VNNI)."""
    samples = getattr(data, split)
    logits = onnx_logits(path, samples, batch_size=batch_size, exact_int8=exact_int8)
    return float((logits.argmax(1) == samples.labels.numpy()).mean())


def output_parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """How closely ``candidate`` outputs follow ``reference`` on the same inputs (export, emulation)."""
    diff = np.abs(reference - candidate)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        "samples": len(reference),
    }


def evaluate_artifact(
    artifact: Artifact, data: DataSplits, models: ModelLoader, work_dir: Path, eval_batch_size: int
) -> dict[str, Any]:
    """Size, accuracy and identity of the file that would ship for ``artifact``, and whether its
    output holds logits or probabilities (judged on the test split's outputs)."""
    from edgeslim.export.mobile import output_kind

    onnx_path = deployable_onnx(artifact, models, work_dir)
    logits = onnx_logits(onnx_path, data.test, batch_size=eval_batch_size)
    return {
        "accuracy": float((logits.argmax(1) == data.test.labels.numpy()).mean()),
        "output_kind": output_kind(logits),
        "val_accuracy": onnx_accuracy(onnx_path, data, eval_batch_size, split="val"),
        "size_bytes": onnx_path.stat().st_size,
        "params": artifact.meta.get("params"),
        "macs": artifact.meta.get("macs"),
        "model_sha256": sha256_file(onnx_path),
        "deployable": onnx_path.name,
    }
