"""The phone bundle: what an Android or iOS app needs to run the model with ONNX Runtime Mobile.

``mobile/`` holds the optimized ONNX model, the ORT-format ``model.ort`` (what ONNX Runtime
Mobile loads fastest), the required-operators config for a reduced ONNX Runtime build,
``model_info.json`` (input name/shape/dtype, preprocessing, labels) and a README with
loading snippets for Kotlin, Java, Swift and Objective-C. The ``.ort`` file is produced by
ONNX Runtime's own converter (optimization style Fixed: the Runtime style fails on PT2E
QDQ models here).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeslim.config.schema import Preprocessing
from edgeslim.engine.children import run_child
from edgeslim.engine.store import ONNX_MODEL_FILE, write_json, write_text
from edgeslim.errors import StageFailed

BUNDLE_DIR = "mobile"
ORT_FILE = "model.ort"
OPS_FILE = "required_operators.config"
INFO_FILE = "model_info.json"
README_FILE = "README.md"


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


def model_info(
    model: Path, preprocessing: Preprocessing | None, labels: list[str] | None, accuracy: float | None
) -> dict[str, Any]:
    """Input/output description an app needs, read from the ONNX model itself."""
    import onnx

    from edgeslim.export.onnx_io import load_onnx

    proto = load_onnx(model, external_data=False)

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        return {"name": value.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}

    initializers = {i.name for i in proto.graph.initializer}
    return {
        "format": "edgeslim.mobile-bundle/1",
        "model": ORT_FILE,
        "onnx_model": ONNX_MODEL_FILE,
        "inputs": [describe(v) for v in proto.graph.input if v.name not in initializers],
        "outputs": [describe(v) for v in proto.graph.output],
        "preprocessing": preprocessing.model_dump() if preprocessing else None,
        "labels": labels,
        "output_is": "logits (apply softmax for probabilities; argmax is the class id)",
        "test_accuracy": accuracy,
    }


def readme(info: dict[str, Any]) -> str:
    inp, out = info["inputs"][0], info["outputs"][0]
    shape = ", ".join(str(d) for d in inp["shape"])
    pre = info["preprocessing"]
    if pre:
        pre_text = (
            f"Input: {pre['raw_input'] or 'raw values'} in {pre['layout']} layout; model input = "
            f"(raw × {pre['scale']:.6g} − mean) / std with mean {pre['mean']} and std {pre['std']} per channel."
        )
    else:
        pre_text = "Preprocessing: as the training data factory produced its tensors (not recorded)."
    dims = [1 if isinstance(d, str) else d for d in inp["shape"]]
    numel = 1
    for d in dims:
        numel *= d
    long_shape = ", ".join(f"{d}L" for d in dims)
    num_shape = ", ".join(f"{d}" for d in dims)
    return f"""# Phone bundle

| file | what |
|---|---|
| `{ORT_FILE}` | the model in ORT format: load this with ONNX Runtime Mobile |
| `{ONNX_MODEL_FILE}` | the same optimized model as ONNX (for tools, or the full ONNX Runtime) |
| `{OPS_FILE}` | operators the model needs: build a reduced ONNX Runtime with `--include_ops_by_config {OPS_FILE}` |
| `{INFO_FILE}` | input `{inp["name"]}` [{shape}] {inp["dtype"]}, output `{out["name"]}`, preprocessing, labels |

{pre_text} The output `{out["name"]}` holds logits: the class id is the argmax; `labels` in
`{INFO_FILE}` names it. Measured test accuracy of this `.ort` file: {_pct(info["test_accuracy"])}.

## Android (Kotlin) — `com.microsoft.onnxruntime:onnxruntime-android`

```kotlin
val env = OrtEnvironment.getEnvironment()
val session = env.createSession(assets.open("{ORT_FILE}").readBytes(), OrtSession.SessionOptions())
val input = FloatArray({numel})            // fill with preprocessed values, {pre["layout"] if pre else "NCHW"}
val tensor = OnnxTensor.createTensor(env, FloatBuffer.wrap(input), longArrayOf({long_shape}))
session.run(mapOf("{inp["name"]}" to tensor)).use {{ result ->
    val logits = (result[0].value as Array<FloatArray>)[0]
    val classId = logits.indices.maxBy {{ logits[it] }}
}}
```

## Android (Java)

```java
OrtEnvironment env = OrtEnvironment.getEnvironment();
OrtSession session = env.createSession(modelBytes, new OrtSession.SessionOptions());
OnnxTensor tensor = OnnxTensor.createTensor(env, FloatBuffer.wrap(input), new long[]{{{long_shape}}});
try (OrtSession.Result result = session.run(Collections.singletonMap("{inp["name"]}", tensor))) {{
    float[] logits = ((float[][]) result.get(0).getValue())[0];
}}
```

## iOS (Swift) — CocoaPods `onnxruntime-objc` (or `onnxruntime-mobile-objc`)

```swift
let env = try ORTEnv(loggingLevel: .warning)
let path = Bundle.main.path(forResource: "model", ofType: "ort")!
let session = try ORTSession(env: env, modelPath: path, sessionOptions: ORTSessionOptions())
var input = [Float](repeating: 0, count: {numel})   // preprocessed values
let data = NSMutableData(bytes: &input, length: input.count * MemoryLayout<Float>.size)
let tensor = try ORTValue(tensorData: data, elementType: .float, shape: [{num_shape}])
let outputs = try session.run(withInputs: ["{inp["name"]}": tensor], outputNames: ["{out["name"]}"], runOptions: nil)
let logits = try outputs["{out["name"]}"]!.tensorData() as Data
```

## iOS (Objective-C)

```objc
ORTEnv *env = [[ORTEnv alloc] initWithLoggingLevel:ORTLoggingLevelWarning error:&error];
ORTSessionOptions *options = [[ORTSessionOptions alloc] initWithError:&error];
ORTSession *session = [[ORTSession alloc] initWithEnv:env modelPath:path
                                       sessionOptions:options error:&error];
ORTValue *tensor = [[ORTValue alloc] initWithTensorData:data
    elementType:ORTTensorElementDataTypeFloat shape:@[{", ".join(f"@{d}" for d in dims)}] error:&error];
NSDictionary *outputs = [session runWithInputs:@{{@"{inp["name"]}": tensor}}
    outputNames:[NSSet setWithObject:@"{out["name"]}"] runOptions:nil error:&error];
```

Measure it on the device with `edgeslim-bench {ORT_FILE} --output device.json` (one Python file; needs only
onnxruntime and numpy, e.g. in Termux) and compare with `edgeslim compare device.json RUN_FOLDER`.
"""


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
) -> dict[str, Any]:
    """Write the bundle into ``out_dir/mobile``; ``accuracy_of(path)`` checks the reloaded .ort model."""
    bundle = out_dir / BUNDLE_DIR
    bundle.mkdir(parents=True, exist_ok=True)
    convert_to_ort(model, bundle, platform)
    accuracy = accuracy_of(bundle / ORT_FILE) if accuracy_of else None
    info = model_info(bundle / ONNX_MODEL_FILE, preprocessing, labels, accuracy)
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
