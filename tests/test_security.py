"""No unsafe deserialization anywhere: an AST scan of the project's own code.

Model files, checkpoints, configs and device reports come from users, so nothing may turn them
into Python objects by running code: ``torch.load`` needs ``weights_only=True``, ``np.load`` needs
``allow_pickle=False``, YAML goes through ``yaml.safe_load``, ONNX files through
``pipeline.onnx_io`` (which checks external-data paths first), and there is no pickle, ``eval``,
``exec`` or shell anywhere.

The scan parses every ``.py`` file (``ast``, not regex, so comments, strings and ``model.eval()``
never count) and resolves import aliases (``import numpy as np``, ``from pickle import loads``).
``pipeline/``, ``stages/`` and ``bench/`` get every rule. ``tests/`` gets only the pickle and YAML
rules: tests do build hostile inputs (a pickled checkpoint that must be refused, written with
``torch.save``/``pickle.dump``, which no rule forbids) and read the pipeline's own ONNX output with
``onnx.load``/``InferenceSession`` directly, but they never need to *load* a pickle or unsafe YAML.
``test_scanner_*`` feed the scanner known bad and good snippets so the scan cannot pass silently.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CODE_ROOTS = ("pipeline", "stages", "bench")  # every rule
TEST_ROOTS = ("tests",)  # pickle and yaml rules only (see the module docstring)
TEST_RULES = frozenset({"pickle", "yaml"})

PICKLE_LOADERS = frozenset(
    {
        "pickle.load",
        "pickle.loads",
        "pickle.Unpickler",
        "_pickle.load",
        "_pickle.loads",
        "_pickle.Unpickler",
        "joblib.load",
        "marshal.load",
        "marshal.loads",
        "shelve.open",
        "pandas.read_pickle",
    }
)
PICKLE_MODULES = ("cPickle", "dill")  # any call into these
YAML_UNSAFE_CALLS = frozenset(
    {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"}
)
YAML_UNSAFE_LOADERS = frozenset(
    {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader", "yaml.CUnsafeLoader", "yaml.CFullLoader"}
)
CODE_BUILTINS = frozenset({"eval", "exec", "compile", "builtins.eval", "builtins.exec", "builtins.compile"})
SHELL_CALLS = frozenset(
    {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "asyncio.create_subprocess_shell"}
)
ONNX_LOADS = frozenset({"onnx.load", "onnx.load_model"})
ONNX_LOAD_FILE = "pipeline/export/onnx_io.py"  # load_onnx / check_onnx_file: the only readers of ONNX files
# (file, function) allowed to construct an ONNX Runtime session, and whether a check_onnx_file call on the
# same path must come first in that function. create_session is the standalone on-device runner (it cannot
# import the pipeline); the pipeline reaches it only through pipeline.onnx_io.open_session, which checks first.
SESSION_ALLOWED = {
    ("pipeline/devices/edgeslim_bench.py", "create_session"): False,
    ("pipeline/quant/ort.py", "ort_optimize"): True,
    ("pipeline/quant/coverage.py", "executed_graph"): True,  # saves the optimized graph ORT would run
    ("pipeline/export/onnx_io.py", "_exact_int8_loads"): True,  # probes ORT's exact INT8 mode, logs silenced
}


@dataclass(frozen=True)
class Finding:
    rule: str
    file: str
    line: int
    detail: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.detail}"


def qualified_name(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``np.load`` -> ``numpy.load`` (via the file's imports); None for calls on expressions."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def import_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name for every import in the file (function-level ones included)."""
    aliases = {"np": "numpy", "ort": "onnxruntime"}  # the usual spellings, even if imported oddly
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                aliases[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    """True when ``name=value`` is passed as a literal (a variable or ``**kwargs`` does not count)."""
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def _unwrap_path(node: ast.AST) -> str:
    """``str(p)`` / ``os.fspath(p)`` -> the dump of ``p``: the same file whichever way it is spelled."""
    if isinstance(node, ast.Call) and len(node.args) == 1 and ast.unparse(node.func) in ("str", "os.fspath"):
        node = node.args[0]
    return ast.dump(node)


def _checked_before(call: ast.Call, function: ast.AST, aliases: dict[str, str]) -> bool:
    """A ``check_onnx_file(<same path>)`` call earlier in ``function`` than the session ``call``."""
    if not call.args:
        return False
    target = _unwrap_path(call.args[0])
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and node.args and node.lineno < call.lineno:
            name = qualified_name(node.func, aliases) or ""
            if name.split(".")[-1] == "check_onnx_file" and _unwrap_path(node.args[0]) == target:
                return True
    return False


def _call_rules(call: ast.Call, name: str, file: str, function: ast.AST | None, aliases: dict[str, str]):
    """(rule, detail) for each rule this resolved call breaks."""
    if name in ("torch.load", "torch.serialization.load") and not _keyword_is(call, "weights_only", True):
        yield "torch-load", f"{name}(...) without weights_only=True"
    if name in PICKLE_LOADERS or name.split(".")[0] in PICKLE_MODULES:
        yield "pickle", f"{name}(...) unpickles arbitrary objects"
    if name in YAML_UNSAFE_CALLS:
        yield "yaml", f"{name}(...): use yaml.safe_load"
    if name in CODE_BUILTINS:
        yield "eval-exec", f"{name}(...) runs code built at run time"
    if name == "numpy.load" and not _keyword_is(call, "allow_pickle", False):
        yield "numpy-load", "numpy.load(...) without allow_pickle=False"
    if name in ONNX_LOADS and file != ONNX_LOAD_FILE:
        yield "onnx-load", f"{name}(...) outside {ONNX_LOAD_FILE}: use pipeline.onnx_io.load_onnx"
    if name.split(".")[-1] == "InferenceSession":
        where = (file, getattr(function, "name", "<module>"))
        needs_check = SESSION_ALLOWED.get(where)
        if needs_check is None:
            yield "inference-session", f"InferenceSession in {where[1]}(): use pipeline.onnx_io.open_session"
        elif needs_check and not _checked_before(call, function, aliases):
            yield "inference-session", f"InferenceSession in {where[1]}() without check_onnx_file on its path first"
    if name in SHELL_CALLS:
        yield "shell", f"{name}(...) runs a shell"
    for keyword in call.keywords:
        if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
            yield "shell", f"{name}(..., shell={ast.unparse(keyword.value)})"


def scan_source(source: str, file: str) -> list[Finding]:
    """Every rule broken in one file's source; ``file`` is its repo-relative posix path."""
    tree = ast.parse(source, filename=file)
    aliases = import_aliases(tree)
    enclosing: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):  # breadth first: inner functions overwrite their outer ones
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            enclosing.update(dict.fromkeys(ast.walk(node), node))
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = qualified_name(node.func, aliases)
            if name is not None:
                for rule, detail in _call_rules(node, name, file, enclosing.get(node), aliases):
                    findings.append(Finding(rule, file, node.lineno, detail))
        elif isinstance(node, ast.Attribute | ast.Name) and qualified_name(node, aliases) in YAML_UNSAFE_LOADERS:
            findings.append(Finding("yaml", file, node.lineno, f"{ast.unparse(node)}: use yaml.safe_load"))
    return sorted(set(findings), key=lambda f: (f.file, f.line, f.rule))


def python_files(roots: tuple[str, ...]) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts)


@cache
def repo_findings() -> tuple[Finding, ...]:
    """Findings over the repository: every rule in the code roots, pickle/yaml in tests."""
    out: list[Finding] = []
    for roots, rules in ((CODE_ROOTS, None), (TEST_ROOTS, TEST_RULES)):
        for path in python_files(roots):
            found = scan_source(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())
            out.extend(f for f in found if rules is None or f.rule in rules)
    return tuple(out)


def assert_clean(rule: str, what: str) -> None:
    found = [f for f in repo_findings() if f.rule == rule]
    assert not found, f"{len(found)} {what}:\n" + "\n".join(map(str, found))


# ---------------------------------------------------------------- the rules, over the repository


def test_torch_load_requires_weights_only() -> None:
    assert_clean("torch-load", "torch.load call(s) without the literal weights_only=True")


def test_no_pickle_family_loads() -> None:
    assert_clean("pickle", "pickle-family load(s) (pickle/cPickle/dill/joblib/marshal/shelve)")


def test_yaml_only_safe_load() -> None:
    assert_clean("yaml", "unsafe YAML load(s) or loader(s); only yaml.safe_load is allowed")


def test_no_eval_exec_or_compile() -> None:
    assert_clean("eval-exec", "eval/exec/compile call(s)")


def test_numpy_load_disallows_pickle() -> None:
    assert_clean("numpy-load", "numpy.load call(s) without the literal allow_pickle=False")


def test_onnx_load_only_in_onnx_io() -> None:
    assert_clean("onnx-load", f"onnx.load call(s) outside {ONNX_LOAD_FILE}")


def test_inference_session_only_in_allowed_functions() -> None:
    assert_clean("inference-session", "InferenceSession construction(s) outside the checked entry points")


def test_no_shell() -> None:
    assert_clean("shell", "shell invocation(s)")


def test_scan_sees_the_code() -> None:
    """The scan covers the real files, and every allow-listed session site still exists (no stale entries)."""
    scanned = {p.relative_to(REPO).as_posix() for p in python_files(CODE_ROOTS)}
    assert {"pipeline/config/schema.py", "pipeline/models/zoo.py", "stages/prune.py", ONNX_LOAD_FILE} <= scanned
    for file, function in SESSION_ALLOWED:
        tree = ast.parse((REPO / file).read_text(encoding="utf-8"))
        aliases = import_aliases(tree)
        sites = [
            node
            for func in ast.walk(tree)
            if isinstance(func, ast.FunctionDef) and func.name == function
            for node in ast.walk(func)
            if isinstance(node, ast.Call) and (qualified_name(node.func, aliases) or "").endswith(".InferenceSession")
        ]
        assert sites, f"SESSION_ALLOWED names {file}:{function}(), which no longer opens a session: remove it"


# ---------------------------------------------------------------- the scanner itself

BAD_SOURCE = """\
import pickle, marshal, shelve, joblib, dill, yaml, torch, subprocess, os
import numpy
import onnx
import onnxruntime as rt
from pickle import loads as unpickle
from onnxruntime import InferenceSession

torch.load("m.pt")
torch.load("m.pt", weights_only=False)
torch.load("m.pt", **kwargs)
pickle.load(f)
unpickle(b)
cPickle.loads(b)
dill.load(f)
joblib.load("x")
marshal.loads(b)
shelve.open("db")
yaml.load(text)
yaml.unsafe_load(text)
yaml.full_load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.safe_load(text, Loader=yaml.UnsafeLoader)
yaml.load_all(text, Loader=yaml.FullLoader)
eval("1")
exec("x = 1")
exec(compile("x = 1", "f", "exec"))
numpy.load("a.npy")
numpy.load("a.npy", allow_pickle=True)
onnx.load("m.onnx")
onnx.load_model("m.onnx")
rt.InferenceSession("m.onnx")
def helper(path):
    return InferenceSession(path)
subprocess.run("ls", shell=True)
subprocess.Popen(cmd, shell=flag)
os.system("ls")
"""

EXPECTED_BAD = {
    ("torch-load", 8),
    ("torch-load", 9),
    ("torch-load", 10),
    ("pickle", 11),
    ("pickle", 12),
    ("pickle", 13),
    ("pickle", 14),
    ("pickle", 15),
    ("pickle", 16),
    ("pickle", 17),
    ("yaml", 18),
    ("yaml", 19),
    ("yaml", 20),
    ("yaml", 21),
    ("yaml", 22),
    ("yaml", 23),
    ("eval-exec", 24),
    ("eval-exec", 25),
    ("eval-exec", 26),
    ("numpy-load", 27),
    ("numpy-load", 28),
    ("onnx-load", 29),
    ("onnx-load", 30),
    ("inference-session", 31),
    ("inference-session", 33),
    ("shell", 34),
    ("shell", 35),
    ("shell", 36),
}

GOOD_SOURCE = """\
import re, subprocess, torch, yaml
import numpy as np
from edgeslim.export.onnx_io import check_onnx_file, load_onnx

torch.load("m.pt", map_location="cpu", weights_only=True)
np.load("a.npy", allow_pickle=False)
yaml.safe_load(text)
yaml.safe_dump(data)
model.eval()
re.compile("x")
subprocess.run(["ls"], check=True)
subprocess.run(["ls"], shell=False)
pickle_checkpoint(case)
load_onnx(path)
text = "pickle.loads(b); eval('1'); yaml.load(x)"
# torch.load("m.pt")
"""


def test_scanner_detects_every_forbidden_pattern() -> None:
    found = {(f.rule, f.line) for f in scan_source(BAD_SOURCE, "pipeline/example.py")}
    assert found == EXPECTED_BAD, f"missed: {sorted(EXPECTED_BAD - found)}; unexpected: {sorted(found - EXPECTED_BAD)}"


def test_scanner_accepts_safe_code() -> None:
    assert scan_source(GOOD_SOURCE, "pipeline/example.py") == []


def test_scanner_onnx_and_session_allow_lists() -> None:
    """onnx.load only in onnx_io; sessions only in the allow-listed functions, ort_optimize only after a check."""
    onnx_source = "import onnx\ndef load_onnx(path):\n    return onnx.load(str(path))\n"
    assert scan_source(onnx_source, ONNX_LOAD_FILE) == []
    assert [f.rule for f in scan_source(onnx_source, "stages/export.py")] == ["onnx-load"]

    runner = "import onnxruntime as ort\ndef create_session(p):\n    return ort.InferenceSession(p)\n"
    assert scan_source(runner, "pipeline/devices/edgeslim_bench.py") == []
    assert [f.rule for f in scan_source(runner, "pipeline/engine/measure.py")] == ["inference-session"]

    checked = (
        "import onnxruntime as ort\n"
        "from edgeslim.export.onnx_io import check_onnx_file\n"
        "def ort_optimize(source, out):\n"
        "    check_onnx_file(source)\n"
        "    ort.InferenceSession(str(source))\n"
    )
    assert scan_source(checked, "pipeline/quant/ort.py") == []
    unchecked = checked.replace("check_onnx_file(source)", "pass")
    other_file = checked.replace("check_onnx_file(source)", "check_onnx_file(out)")
    late = checked.replace("    check_onnx_file(source)\n", "") + "    check_onnx_file(source)\n"
    for source in (unchecked, other_file, late):
        assert [f.rule for f in scan_source(source, "pipeline/quant/ort.py")] == ["inference-session"], source
    nested = "def ort_optimize(source):\n    def inner():\n        return InferenceSession(source)\n"
    assert [f.rule for f in scan_source(nested, "pipeline/quant/ort.py")] == ["inference-session"]
