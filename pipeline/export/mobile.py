"""The phone bundle: what an Android or iOS app needs to run the model with ONNX Runtime Mobile.

``mobile/`` holds the optimized ONNX model, the ORT-format ``model.ort`` (what ONNX Runtime
Mobile loads fastest), the required-operators config for a reduced ONNX Runtime build,
``model_info.json`` (every input's name, dtype, shape with its dynamic axes named and an
``example_shape`` sized from the run's data; whether the output is logits or probabilities;
preprocessing, labels) and a README with loading snippets for Kotlin, Java, Swift and
Objective-C that use the example shape (a made-up 1 for a dynamic height or width would be a
different model). ``edgeslim-bench`` reads those example shapes too. The ``.ort`` file is
produced by ONNX Runtime's own converter (optimization style Fixed: the Runtime style fails on
PT2E QDQ models here).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.config.schema import Preprocessing
from edgeslim.data.batches import Inputs
from edgeslim.engine.children import run_child
from edgeslim.engine.store import ONNX_MODEL_FILE, write_json, write_text
from edgeslim.errors import StageFailed

BUNDLE_DIR = "mobile"
ORT_FILE = "model.ort"
OPS_FILE = "required_operators.config"
INFO_FILE = "model_info.json"
README_FILE = "README.md"
PROBE_SAMPLES = 16  # real samples run to tell probabilities from logits
OUTPUT_IS = {  # model_info.json's plain-words line for each output kind
    "logits": "logits (apply softmax for probabilities; argmax is the class id)",
    "probabilities": "probabilities (softmax is already applied: do not apply it again; argmax is the class id)",
    "unchecked": "not checked (no input samples): logits unless the model applies softmax; argmax is the class id",
}


def convert_to_ort(model: Path, out_dir: Path, platform: str) -> None:
    """Run ONNX Runtime's converter; copy the optimized ONNX, .ort and operator config into out_dir."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "model.onnx"
        shutil.copyfile(model, work)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(work)]
        cmd += ["--optimization_style", "Fixed", "--save_optimized_onnx_model", "--target_platform", platform]
        proc = run_child(cmd, capture_output=True, text=True, check=False)
        produced = Path(tmp) / "model.ort"
        if proc.returncode != 0 or not produced.is_file():
            last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise StageFailed(f"ONNX Runtime could not convert the model to ORT format: {last}")
        shutil.copyfile(produced, out_dir / ORT_FILE)
        shutil.copyfile(Path(tmp) / "model.optimized.onnx", out_dir / ONNX_MODEL_FILE)
        shutil.copyfile(Path(tmp) / "model.required_operators.config", out_dir / OPS_FILE)


# How each input dtype is written in the app snippets: Kotlin/Java array and buffer, Swift element
# type, ONNX Runtime's Swift/Obj-C element type. Other dtypes are shown as float with a note.
SNIPPET_TYPES = {
    "float32": ("FloatArray", "float[]", "FloatBuffer", "Float", ".float", "Float"),
    "int64": ("LongArray", "long[]", "LongBuffer", "Int64", ".int64", "Int64"),
    "int32": ("IntArray", "int[]", "IntBuffer", "Int32", ".int32", "Int32"),
}


def _dims(value: Any) -> list[int | str]:
    """Axes of a graph input/output: sizes, or the dynamic axis's name from the graph (made up if it has none)."""
    dims = value.type.tensor_type.shape.dim
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or ("batch" if i == 0 else f"dim{i}"))
        for i, d in enumerate(dims)
    ]


def example_shape(shape: list[int | str], sample_shape: tuple[int, ...] | None) -> list[int] | None:
    """Concrete sizes for an app's single input: batch 1, the other dynamic axes as in the run's data.

    ``None`` when a dynamic axis other than the batch has no size to take (no sample of that rank)."""
    out: list[int] = []
    for i, dim in enumerate(shape):
        if isinstance(dim, int) and dim > 0:
            out.append(dim)
        elif i == 0:
            out.append(1)
        elif sample_shape is not None and len(sample_shape) == len(shape):
            out.append(int(sample_shape[i]))
        else:
            return None
    return out


def output_kind(outputs: np.ndarray) -> str:
    """``probabilities`` when every value is >= 0 and each row sums to 1 (within 1e-3), else ``logits``.

    Rows are the last axis of a 2-D output, the class axis (1) of a larger one. An app must not apply
    softmax to probabilities a second time, so the bundle says which one the model gives."""
    if outputs.dtype.kind != "f" or outputs.ndim < 2 or outputs.size == 0:
        return "logits"
    sums = outputs.sum(axis=-1 if outputs.ndim == 2 else 1, dtype=np.float64)
    return "probabilities" if bool((outputs >= 0).all() and np.abs(sums - 1).max() <= 1e-3) else "logits"


def probe_outputs(
    model: Path, samples: dict[str, np.ndarray] | None, example: dict[str, list[int]]
) -> tuple[str, str | None]:
    """The first output's kind, judged on the model's answers to real samples (or seeded random inputs).

    Returns the kind and what it was judged on (``None``: not checked, a dynamic axis had no size)."""
    from edgeslim.devices.edgeslim_bench import ShapeError, make_feed
    from edgeslim.export.onnx_io import open_session

    session = open_session(model)
    batch = len(next(iter(samples.values()))) if samples else PROBE_SAMPLES
    try:
        feed, _ = make_feed(session, batch, samples, info=example)
    except ShapeError:
        return "logits", None
    on = f"{batch} real input samples" if samples else f"{batch} seeded random inputs"
    return output_kind(session.run(None, feed)[0]), on


def named_samples(
    samples: Inputs | np.ndarray | dict[str, np.ndarray] | None, names: list[str]
) -> dict[str, np.ndarray] | None:
    """A few samples by the model's input names: named inputs by name, one tensor or array for the
    first input (whatever the ONNX file calls it)."""
    if samples is None:
        return None
    if isinstance(samples, dict):
        arrays = {k: np.asarray(v) for k, v in samples.items() if k in names}
    else:
        arrays = {names[0]: np.asarray(samples)}
    return {k: v[:PROBE_SAMPLES] for k, v in arrays.items()} or None


def model_info(
    model: Path,
    preprocessing: Preprocessing | None,
    labels: list[str] | None,
    accuracy: float | None,
    samples: Inputs | np.ndarray | dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Input/output description an app needs, read from the ONNX model itself.

    ``samples`` (a few real inputs, by input name) give the example shapes for dynamic axes and show
    whether the model outputs probabilities or logits."""
    import onnx

    from edgeslim.export.onnx_io import load_onnx

    proto = load_onnx(model, external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    names = [v.name for v in proto.graph.input if v.name not in initializers]
    samples = named_samples(samples, names)

    def describe(value: Any) -> dict[str, Any]:
        elem = value.type.tensor_type.elem_type
        return {"name": value.name, "shape": _dims(value), "dtype": onnx.helper.tensor_dtype_to_np_dtype(elem).name}

    inputs = [describe(v) for v in proto.graph.input if v.name not in initializers]
    for inp in inputs:  # real samples size their input; an input without samples keeps its fixed axes
        given = samples.get(inp["name"]) if samples else None
        inp["example_shape"] = example_shape(inp["shape"], given.shape if given is not None else None)
    outputs = [describe(v) for v in proto.graph.output]
    example = {i["name"]: i["example_shape"] for i in inputs if i["example_shape"]}
    kind, judged_on = probe_outputs(model, samples, example)
    return {
        "format": "edgeslim.mobile-bundle/1",
        "model": ORT_FILE,
        "onnx_model": ONNX_MODEL_FILE,
        "inputs": inputs,
        "outputs": outputs,
        "output": {"name": outputs[0]["name"], "kind": kind, "kind_judged_on": judged_on, "labels": labels},
        "preprocessing": preprocessing.model_dump() if preprocessing else None,
        "labels": labels,
        "output_is": OUTPUT_IS[kind] if judged_on else OUTPUT_IS["unchecked"],
        "test_accuracy": accuracy,
    }


TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def copy_tokenizer(folder: Path, bundle: Path, pad_id: int, max_length: int) -> dict[str, Any]:
    """The tokenizer files the ids were made with, and how app code turns text into the model's input."""
    target = bundle / TOKENIZER_DIR
    target.mkdir(exist_ok=True)
    files = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    for name in files:
        (target / name).write_bytes((folder / name).read_bytes())
    return {
        "directory": TOKENIZER_DIR,
        "files": files,
        "max_length": max_length,
        "pad_id": pad_id,
        "encode": f"token ids of the text (special tokens added), truncated to {max_length} and padded with "
        f"{pad_id} to {max_length}; where the model has an attention_mask input: 1 for each token, 0 for padding",
    }


def readme(info: dict[str, Any]) -> str:
    inp, out = info["inputs"][0], info["outputs"][0]
    kind = info.get("output", {}).get("kind", "logits")
    checked = info.get("output", {}).get("kind_judged_on") is not None
    pre = info["preprocessing"]
    if pre:
        pre_text = (
            f"Input: {pre['raw_input'] or 'raw values'} in {pre['layout']} layout; model input = "
            f"(raw × {pre['scale']:.6g} − mean) / std with mean {pre['mean']} and std {pre['std']} per channel."
        )
    elif info.get("tokenizer"):
        tok = info["tokenizer"]
        pre_text = (
            f"Input: text, encoded with the tokenizer in `{tok['directory']}/` ({', '.join(tok['files'])}; e.g. "
            f"the Hugging Face `tokenizers` library on Android/iOS): {tok['encode']}."
        )
    else:
        pre_text = "Preprocessing: as the training data factory produced its tensors (not recorded)."
    code = [_input_code(i, k, info) for k, i in enumerate(info["inputs"])]
    dims = code[0].dims
    sized = all(c.sized for c in code)
    inputs_text = "; ".join(
        f"input `{i['name']}` [{', '.join(str(d) for d in i['shape'])}] {i['dtype']}"
        + (f", example {'×'.join(str(d) for d in i['example_shape'])}" if i.get("example_shape") else "")
        for i in info["inputs"]
    )
    size_text = (
        f" The example shape {'×'.join(str(d) for d in dims)} is the size of the data this run used."
        if sized and any(isinstance(d, str) for d in inp["shape"][1:])
        else ""
    )
    if not sized:
        unknown = dict.fromkeys(str(d) for c in code for d in c.dims if isinstance(d, str))
        size_text = f" Set {', '.join(unknown)} to your input's size."
    kotlin_inputs = "\n".join(c.kotlin for c in code)
    java_inputs = "\n".join(c.java for c in code)
    swift_inputs = "\n".join(c.swift for c in code)
    objc_inputs = "\n".join(c.objc for c in code)
    kotlin_map = ", ".join(f'"{c.name}" to {c.tensor}' for c in code)
    java_map = (
        f'Collections.singletonMap("{code[0].name}", {code[0].tensor})'
        if len(code) == 1
        else "Map.of(" + ", ".join(f'"{c.name}", {c.tensor}' for c in code) + ")"
    )
    swift_map = ", ".join(f'"{c.name}": {c.tensor}' for c in code)
    objc_map = ", ".join(f'@"{c.name}": {c.tensor}' for c in code)
    if kind == "probabilities":
        var = "probs"
        out_text = (
            f"The output `{out['name']}` holds class probabilities (the model applies softmax itself: do not "
            "apply it again): the class id is the argmax;"
        )
    elif checked:
        var = "logits"
        out_text = (
            f"The output `{out['name']}` holds logits (apply softmax for probabilities): the class id is the argmax;"
        )
    else:
        var = "scores"
        out_text = (
            f"The output `{out['name']}` holds class scores (logits or probabilities: not checked, as no input "
            "samples were given; apply softmax only to logits): the class id is the argmax;"
        )
    return f"""# Phone bundle

| file | what |
|---|---|
| `{ORT_FILE}` | the model in ORT format: load this with ONNX Runtime Mobile |
| `{ONNX_MODEL_FILE}` | the same optimized model as ONNX (for tools, or the full ONNX Runtime) |
| `{OPS_FILE}` | operators the model needs: build a reduced ONNX Runtime with `--include_ops_by_config {OPS_FILE}` |
| `{INFO_FILE}` | {inputs_text}; output `{out["name"]}` ({kind}), preprocessing, labels |

{pre_text}{size_text} {out_text} `labels` in
`{INFO_FILE}` names it. Measured test accuracy of this `.ort` file: {_pct(info["test_accuracy"])}.

## Android (Kotlin) — `com.microsoft.onnxruntime:onnxruntime-android`

```kotlin
val env = OrtEnvironment.getEnvironment()
val session = env.createSession(assets.open("{ORT_FILE}").readBytes(), OrtSession.SessionOptions())
{kotlin_inputs}
session.run(mapOf({kotlin_map})).use {{ result ->
    val {var} = (result[0].value as Array<FloatArray>)[0]
    val classId = {var}.indices.maxBy {{ {var}[it] }}
}}
```

## Android (Java)

```java
OrtEnvironment env = OrtEnvironment.getEnvironment();
OrtSession session = env.createSession(modelBytes, new OrtSession.SessionOptions());
{java_inputs}
try (OrtSession.Result result = session.run({java_map})) {{
    float[] {var} = ((float[][]) result.get(0).getValue())[0];
}}
```

## iOS (Swift) — CocoaPods `onnxruntime-objc` (or `onnxruntime-mobile-objc`)

```swift
let env = try ORTEnv(loggingLevel: .warning)
let path = Bundle.main.path(forResource: "model", ofType: "ort")!
let session = try ORTSession(env: env, modelPath: path, sessionOptions: ORTSessionOptions())
{swift_inputs}
let outputs = try session.run(withInputs: [{swift_map}], outputNames: ["{out["name"]}"], runOptions: nil)
let {var} = try outputs["{out["name"]}"]!.tensorData() as Data
```

## iOS (Objective-C)

```objc
ORTEnv *env = [[ORTEnv alloc] initWithLoggingLevel:ORTLoggingLevelWarning error:&error];
ORTSessionOptions *options = [[ORTSessionOptions alloc] initWithError:&error];
ORTSession *session = [[ORTSession alloc] initWithEnv:env modelPath:path
                                       sessionOptions:options error:&error];
{objc_inputs}
NSDictionary *outputs = [session runWithInputs:@{{{objc_map}}}
    outputNames:[NSSet setWithObject:@"{out["name"]}"] runOptions:nil error:&error];
```

Measure it on the device with `edgeslim-bench {ORT_FILE} --output device.json` (one Python file; needs only
onnxruntime and numpy, e.g. in Termux; it feeds the example shapes from `{INFO_FILE}` next to the model,
or pass `--shape NAME=1x3x224x224`) and compare with `edgeslim compare device.json RUN_FOLDER`.
"""


@dataclass(frozen=True)
class _InputCode:
    """One model input written out for the app snippets: its array, tensor and shape in each language."""

    name: str
    tensor: str  # the variable holding its tensor
    dims: list[int | str]  # example shape; an unknown dynamic size stays a named placeholder
    sized: bool
    kotlin: str
    java: str
    swift: str
    objc: str


def _input_code(inp: dict[str, Any], k: int, info: dict[str, Any]) -> _InputCode:
    """Snippet lines that make input ``k``: the example shape, never a made-up 1 for a dynamic axis."""
    dims: list[int | str] = inp.get("example_shape") or [
        d if isinstance(d, int) else (1 if i == 0 else d.upper()) for i, d in enumerate(inp["shape"])
    ]
    sized = all(isinstance(d, int) for d in dims)
    numel = math.prod(int(d) for d in dims) if sized else " * ".join(str(d) for d in dims)
    long_shape = ", ".join(f"{d}L" if isinstance(d, int) else f"{d}.toLong()" for d in dims)
    java_shape = ", ".join(f"{d}L" if isinstance(d, int) else f"(long) {d}" for d in dims)
    num_shape = ", ".join(f"{d}" if isinstance(d, int) else f"NSNumber(value: {d})" for d in dims)
    objc_shape = ", ".join(f"@{d}" if isinstance(d, int) else f"@({d})" for d in dims)
    kt_array, java_array, buffer, swift_type, ort_type, objc_type = SNIPPET_TYPES.get(
        inp["dtype"], SNIPPET_TYPES["float32"]
    )
    type_note = "" if inp["dtype"] in SNIPPET_TYPES else f" (the input is {inp['dtype']}: use that element type)"
    pre, tok = info.get("preprocessing"), info.get("tokenizer")
    if tok and "mask" in inp["name"]:
        note = f"1 for each token, 0 for padding{type_note}"
    elif tok and k == 0:
        note = f"fill with the token ids (padded with {tok['pad_id']}){type_note}"
    elif k == 0:
        note = f"fill with preprocessed values, {pre['layout'] if pre else 'NCHW'}{type_note}"
    else:
        note = f"fill with the values of `{inp['name']}`{type_note}"
    parts = [p for p in re.split(r"[^0-9a-zA-Z]+", inp["name"]) if p] or [f"input{k}"]
    var = parts[0].lower() + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    var = var if var[0].isalpha() else f"input{var}"
    tensor = "tensor" if len(info["inputs"]) == 1 else f"{var}Tensor"
    data = "data" if len(info["inputs"]) == 1 else f"{var}Data"
    return _InputCode(
        name=inp["name"],
        tensor=tensor,
        dims=dims,
        sized=sized,
        kotlin=(
            f"val {var} = {kt_array}({numel})            // {note}\n"
            f"val {tensor} = OnnxTensor.createTensor(env, {buffer}.wrap({var}), longArrayOf({long_shape}))"
        ),
        java=(
            f"{java_array} {var} = new {java_array[:-2]}[{numel}];  // {note}\n"
            f"OnnxTensor {tensor} = OnnxTensor.createTensor(env, {buffer}.wrap({var}), new long[]{{{java_shape}}});"
        ),
        swift=(
            f"var {var} = [{swift_type}](repeating: 0, count: {numel})   // {note}\n"
            f"let {data} = NSMutableData(bytes: &{var}, length: {var}.count * MemoryLayout<{swift_type}>.size)\n"
            f"let {tensor} = try ORTValue(tensorData: {data}, elementType: {ort_type}, shape: [{num_shape}])"
        ),
        objc=(
            f"ORTValue *{tensor} = [[ORTValue alloc] initWithTensorData:{data}  // {note}\n"
            f"    elementType:ORTTensorElementDataType{objc_type} shape:@[{objc_shape}] error:&error];"
        ),
    )


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2%}"


def build_bundle(
    model: Path,
    out_dir: Path,
    *,
    preprocessing: Preprocessing | None,
    labels: list[str] | None,
    platform: str = "arm",
    accuracy_of: Any = None,
    samples: Inputs | np.ndarray | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the bundle into ``out_dir/mobile``; ``accuracy_of(path)`` checks the reloaded .ort model.

    ``samples``: a few real inputs (the run's data), which size the snippets' dynamic axes and show
    whether the output is probabilities or logits. ``tokenizer`` (text models: ``folder``, ``pad_id``,
    ``max_length``): its files are copied into ``tokenizer/``, so app code encodes text as in training."""
    bundle = out_dir / BUNDLE_DIR
    bundle.mkdir(parents=True, exist_ok=True)
    convert_to_ort(model, bundle, platform)
    accuracy = accuracy_of(bundle / ORT_FILE) if accuracy_of else None
    info = model_info(bundle / ONNX_MODEL_FILE, preprocessing, labels, accuracy, samples)
    if tokenizer is not None:
        info["tokenizer"] = copy_tokenizer(
            Path(tokenizer["folder"]), bundle, tokenizer["pad_id"], tokenizer["max_length"]
        )
    write_json(bundle / INFO_FILE, info)
    write_text(bundle / README_FILE, readme(info))
    operators = [
        line for line in (bundle / OPS_FILE).read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    return {
        "directory": BUNDLE_DIR,
        "files": sorted(p.name for p in bundle.iterdir()),
        "ort_size_bytes": (bundle / ORT_FILE).stat().st_size,
        "ort_accuracy": accuracy,
        "operators": operators,
        "platform": platform,
        "info": json.loads((bundle / INFO_FILE).read_text()),
    }
