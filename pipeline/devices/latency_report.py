"""The latency report schema (``edgeslim.latency-report/1``), shared by the benchmark stage,
the on-device runner (``edgeslim_bench.py``) and ``edgeslim compare``.

The runner cannot import pydantic (it must run with only numpy and onnxruntime), so it
writes plain JSON; this module is the schema that JSON is validated against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeslim.errors import UserError

SCHEMA = "edgeslim.latency-report/1"
DeviceKind = Literal["host", "arm64-emulated", "remote"]


class _Open(BaseModel):
    """Known fields are checked; extra fields from newer writers are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class LatencyStats(_Open):
    p50: float = Field(..., ge=0)
    p90: float = Field(..., ge=0)
    p95: float = Field(..., ge=0)
    p99: float = Field(..., ge=0)
    mean: float = Field(..., ge=0)
    std: float = Field(..., ge=0)
    min: float = Field(..., ge=0)
    max: float = Field(..., ge=0)


class OpTime(_Open):
    mean_ms_per_run: float = Field(..., ge=0)
    nodes_per_run: float = Field(..., ge=0)
    share: float = Field(..., ge=0, le=1)


class Measurement(_Open):
    threads: int = Field(..., ge=1)
    batch_size: int = Field(..., ge=1)
    input_name: str
    input_shape: list[int]
    input_dtype: str
    graph_optimization: str
    warmup: int = Field(..., ge=0)
    runs: int = Field(..., ge=1)
    latency_ms: LatencyStats
    samples_ms: list[float] = Field(..., min_length=1)
    throughput_per_s: float = Field(..., gt=0)
    session_init_ms: float = Field(..., ge=0)
    first_inference_ms: float = Field(..., ge=0)
    peak_rss_mb: float | None = None
    session_rss_mb: float | None = None
    op_profile: dict[str, OpTime] | None = None


class ModelFacts(_Open):
    label: str
    file: str
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(..., ge=0)


class DeviceFacts(_Open):
    profile: str
    kind: DeviceKind
    emulated: bool
    cpu: str
    isa_flags: list[str]
    logical_cores: int | None
    machine: str
    os: str
    python: str
    onnxruntime: str


class LatencyReport(_Open):
    schema_: Literal["edgeslim.latency-report/1"] = Field(..., alias="schema")
    tool: dict[str, str]
    created: str
    model: ModelFacts
    device: DeviceFacts
    context: dict[str, Any] = Field(default_factory=dict)
    results: list[Measurement] = Field(..., min_length=1)
    notes: list[str] = Field(default_factory=list)


def validate_report(raw: Any, source: str = "report") -> LatencyReport:
    """Parse a report object, or raise a one-line UserError naming the first bad field."""
    try:
        return LatencyReport.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise UserError(f"{source}: not an edgeslim latency report: {where}: {err['msg']}") from None


def load_report(path: Path) -> LatencyReport:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such report file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read a JSON report: {exc}") from None
    return validate_report(raw, str(path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a report, for tools outside Python."""
    return LatencyReport.model_json_schema(by_alias=True)
