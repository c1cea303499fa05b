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

Text models also get ``tokenizer/`` (the tokenizer's files, ``vocab.txt`` written from the
vocabulary the ids were made with) and, in ``model_info.json``, the tokenizer recipe read from
those files (WordPiece, lowercase, accents, special-token ids, max length, right-side padding and
truncation; ``token_type_ids`` only when the model takes them, zeros for one sentence). The README
then has a self-contained WordPiece encoder in Kotlin and Swift over the shipped ``vocab.txt``
(:func:`wordpiece_encode` is its Python twin, checked against the Hugging Face tokenizer in the
tests) and the ONNX Runtime Extensions route (its tokenizer model is not made here: that needs the
``onnxruntime-extensions`` package).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import string
import sys
import tempfile
import unicodedata
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
    if samples and TOKEN_TYPE_IDS in names and TOKEN_TYPE_IDS not in samples and "input_ids" in samples:
        samples[TOKEN_TYPE_IDS] = np.zeros_like(samples["input_ids"])  # one sentence: type 0 everywhere

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
VOCAB_FILE = "vocab.txt"
TOKEN_TYPE_IDS = "token_type_ids"
# Tokenizer classes whose vocab.txt + tokenizer_config.json describe BERT's WordPiece steps (used when a
# folder has no tokenizer.json to read them from).
BERT_TOKENIZER_CLASSES = {
    f"{name}Tokenizer{fast}" for name in ("Bert", "DistilBert", "Electra", "Funnel", "Lxmert") for fast in ("", "Fast")
}
# Characters BERT's normalizer puts spaces around (the Hugging Face tokenizers library's ranges).
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
EXAMPLE_TEXT = "an utterly charming film"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken object."""
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else None


def _vocab_tokens(folder: Path, spec: dict[str, Any]) -> list[str] | None:
    """Tokens in id order: tokenizer.json's WordPiece vocabulary (what the fast tokenizer made the ids
    with), else vocab.txt; ``None`` when there is neither or the ids have gaps."""
    table = (spec.get("model") or {}).get("vocab")
    if isinstance(table, dict) and table:
        tokens = sorted(table, key=table.__getitem__)
        return tokens if [table[t] for t in tokens] == list(range(len(tokens))) else None
    return read_vocab_lines(folder / VOCAB_FILE) if (folder / VOCAB_FILE).is_file() else None


def read_vocab_lines(path: Path) -> list[str]:
    """vocab.txt's tokens, line i = id i (as BERT tokenizers and the app snippets read it)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_vocab(path: Path) -> dict[str, int]:
    return {token: i for i, token in enumerate(read_vocab_lines(path))}  # a repeated line: the last id wins


def tokenizer_recipe(folder: Path, pad_id: int, max_length: int) -> tuple[dict[str, Any], list[str] | None]:
    """How the tokenizer in ``folder`` turns one text into ids, read from its own files (tokenizer.json,
    else tokenizer_config.json + vocab.txt), and its tokens in id order.

    ``app_encoder`` is ``"wordpiece"`` when the steps are exactly BERT's (normalizer, pre-tokenizer,
    WordPiece, ``[CLS] … [SEP]``, right-side truncation and padding), which the bundle's Kotlin/Swift
    ``WordPiece`` code and :func:`wordpiece_encode` follow; otherwise ``None`` and ``app_encoder_note``
    says what differs."""
    spec = _read_json(folder / "tokenizer.json")
    config = _read_json(folder / "tokenizer_config.json")
    model = spec.get("model") or {}
    tokens = _vocab_tokens(folder, spec)
    vocab = {t: i for i, t in enumerate(tokens or [])}
    problems: list[str] = []
    if spec:
        kind = str(model.get("type") or "unknown")
        norm, pre, post = (
            spec.get("normalizer") or {},
            spec.get("pre_tokenizer") or {},
            spec.get("post_processor") or {},
        )
        if norm.get("type") != "BertNormalizer" or not norm.get("clean_text", True):
            problems.append(f"normalizer {norm.get('type')} (not BERT's, with clean_text)")
        if pre.get("type") != "BertPreTokenizer":
            problems.append(f"pre-tokenizer {pre.get('type')} (not BERT's)")
        lowercase = bool(norm.get("lowercase", True))
        strip = norm.get("strip_accents")
        split_cjk = bool(norm.get("handle_chinese_chars", True))
        prefix = str(model.get("continuing_subword_prefix", "##"))
        max_chars = int(model.get("max_input_chars_per_word", 100))
        unk = _token(model.get("unk_token")) or "[UNK]"
        cls = sep = None
        if post.get("type") == "BertProcessing":
            cls, sep = post["cls"][0], post["sep"][0]
        elif post.get("type") == "TemplateProcessing":
            single = post.get("single") or []
            if len(single) == 3 and "Sequence" in single[1] and all("SpecialToken" in p for p in single[::2]):
                cls, sep = single[0]["SpecialToken"]["id"], single[2]["SpecialToken"]["id"]
        if cls is None or sep is None:
            problems.append(f"post-processor {post.get('type')} (not [CLS] text [SEP])")
        if any(not t.get("special") for t in spec.get("added_tokens") or []):
            problems.append("added (non-special) tokens")
    else:
        tok_class = str(config.get("tokenizer_class") or "unknown")
        kind = "WordPiece" if tok_class in BERT_TOKENIZER_CLASSES and tokens else tok_class
        lowercase = bool(config.get("do_lower_case", True))
        strip = config.get("strip_accents")
        split_cjk = bool(config.get("tokenize_chinese_chars", True))
        prefix, max_chars = "##", 100
        unk = _token(config.get("unk_token")) or "[UNK]"
        cls, sep = _token(config.get("cls_token")) or "[CLS]", _token(config.get("sep_token")) or "[SEP]"
        if not config.get("do_basic_tokenize", True) or config.get("never_split"):
            problems.append("do_basic_tokenize/never_split settings")
    if kind != "WordPiece":
        problems.insert(0, f"a {kind} tokenizer, not WordPiece")
    if tokens is None:
        problems.append("no vocabulary (tokenizer.json's WordPiece vocab or vocab.txt)")
    elif any("\n" in t or "\r" in t for t in tokens):
        problems.append("tokens with line breaks (vocab.txt cannot hold them)")
    sides = {k: config.get(f"{k}_side", "right") for k in ("padding", "truncation")}
    problems += [f"{k} on the {v}" for k, v in sides.items() if v != "right"]
    ids = {name: vocab.get(t) if t is not None else None for name, t in (("cls", cls), ("sep", sep), ("unk", unk))}
    problems += [
        f"{name} token {t!r} not in the vocabulary"
        for name, t in (("cls", cls), ("sep", sep), ("unk", unk))
        if t is not None and ids[name] is None
    ]
    recipe: dict[str, Any] = {
        "kind": kind,
        "vocab_file": f"{TOKENIZER_DIR}/{VOCAB_FILE}" if tokens is not None else None,
        "vocab_size": len(tokens) if tokens is not None else None,
        "clean_text": True,
        "lowercase": lowercase,
        "strip_accents": bool(lowercase if strip is None else strip),  # BERT: None follows lowercase
        "split_cjk_chars": split_cjk,
        "continuing_subword_prefix": prefix,
        "max_input_chars_per_word": max_chars,
        "special_tokens": {"cls": cls, "sep": sep, "pad": None, "unk": unk},
        "cls_id": ids["cls"],
        "sep_id": ids["sep"],
        "pad_id": pad_id,
        "unk_id": ids["unk"],
        "max_length": max_length,
        "padding": sides["padding"],
        "truncation": sides["truncation"],
    }
    if tokens is not None and 0 <= pad_id < len(tokens):
        recipe["special_tokens"]["pad"] = tokens[pad_id]
    recipe["app_encoder"] = None if problems else "wordpiece"
    if problems:
        recipe["app_encoder_note"] = (
            "the WordPiece code in README.md does not cover this tokenizer (" + "; ".join(problems) + "): "
            "use ONNX Runtime Extensions or the Hugging Face tokenizers library"
        )
    return recipe, tokens


def copy_tokenizer(
    folder: Path, bundle: Path, pad_id: int, max_length: int, token_type_ids: bool = False
) -> dict[str, Any]:
    """The tokenizer files the ids were made with, and the recipe app code follows to make the model's
    inputs from a text (``token_type_ids``: whether the model takes them). ``vocab.txt`` is written from
    tokenizer.json's vocabulary when it has one, so the shipped vocabulary is the one the ids came from."""
    target = bundle / TOKENIZER_DIR
    target.mkdir(exist_ok=True)
    recipe, tokens = tokenizer_recipe(folder, pad_id, max_length)
    files = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    for name in files:
        (target / name).write_bytes((folder / name).read_bytes())
    if tokens is not None and not any("\n" in t or "\r" in t for t in tokens):
        write_text(target / VOCAB_FILE, "".join(t + "\n" for t in tokens))
        files = [*dict.fromkeys([*files, VOCAB_FILE])]
    types = "; token_type_ids: 0 for every position (one sentence)" if token_type_ids else ""
    if recipe["app_encoder"] == "wordpiece":
        steps = (
            ("lowercase, " if recipe["lowercase"] else "")
            + ("strip accents, " if recipe["strip_accents"] else "")
            + "split on whitespace and punctuation"
            + (" (CJK characters apart)" if recipe["split_cjk_chars"] else "")
            + f", WordPiece (greedy longest match in {recipe['vocab_file']}, '{recipe['continuing_subword_prefix']}'"
            f" continuations, {recipe['special_tokens']['unk']} for a word without a match), "
        )
        head = (
            f"{steps}{recipe['special_tokens']['cls']} ({recipe['cls_id']}) + the first {max_length - 2} ids + "
            f"{recipe['special_tokens']['sep']} ({recipe['sep_id']})"
        )
    else:
        head = "token ids of the text (special tokens added), truncated"
    return {
        "directory": TOKENIZER_DIR,
        "files": files,
        **recipe,
        "token_type_ids": token_type_ids,
        "encode": f"{head} to {max_length}, padded with {pad_id} to {max_length}; attention_mask: 1 for each "
        f"token, 0 for padding{types}",
    }


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def _is_punct(ch: str) -> bool:
    """BERT's punctuation: ASCII punctuation (``$``, ``+``, ``^``… too) or a Unicode P* category."""
    return (ch.isascii() and ch in string.punctuation) or unicodedata.category(ch).startswith("P")


def wordpiece_words(text: str, recipe: dict[str, Any]) -> list[str]:
    """BERT's normalizer and pre-tokenizer, one code point at a time, exactly as the README's Kotlin and
    Swift ``WordPiece`` code does it: drop NUL, U+FFFD and C* characters (tab, newline, CR become
    spaces), whitespace -> space, spaces around CJK characters; NFD and drop Mn marks (strip accents);
    lowercase each code point; split on whitespace (dropped) and punctuation (kept as words)."""
    clean: list[str] = []
    for ch in text:
        cp = ord(ch)
        if cp in (0, 0xFFFD) or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if ch.isspace():
            clean.append(" ")
        elif recipe["split_cjk_chars"] and _is_cjk(cp):
            clean += [" ", ch, " "]
        else:
            clean.append(ch)
    normalized = "".join(clean)
    if recipe["strip_accents"]:
        normalized = "".join(c for c in unicodedata.normalize("NFD", normalized) if unicodedata.category(c) != "Mn")
    words: list[str] = []
    word: list[str] = []
    for c in normalized:
        for ch in c.lower() if recipe["lowercase"] else c:  # one code point at a time: no final-sigma rule
            if ch.isspace() or _is_punct(ch):
                if word:
                    words.append("".join(word))
                    word = []
                if not ch.isspace():
                    words.append(ch)
            else:
                word.append(ch)
    if word:
        words.append("".join(word))
    return words


def wordpiece_pieces(word: str, recipe: dict[str, Any], vocab: dict[str, int]) -> list[int]:
    """Greedy longest-match-first WordPiece ids of one word; the whole word is [UNK] when a part has no match."""
    if len(word) > recipe["max_input_chars_per_word"]:
        return [recipe["unk_id"]]
    out: list[int] = []
    start = 0
    while start < len(word):
        end, found = len(word), None
        while end > start:
            found = vocab.get((recipe["continuing_subword_prefix"] if start > 0 else "") + word[start:end])
            if found is not None:
                break
            end -= 1
        if found is None:
            return [recipe["unk_id"]]
        out.append(found)
        start = end
    return out


def wordpiece_encode(text: str, recipe: dict[str, Any], vocab: dict[str, int]) -> dict[str, list[int]]:
    """The model inputs of one text, following a ``tokenizer_recipe`` (``app_encoder: wordpiece``) with the
    shipped vocab.txt: the Python twin of the README's Kotlin/Swift code, checked against the Hugging Face
    tokenizer in the tests. (A text holding a special token's literal string, e.g. ``[SEP]``, is the one
    known difference: the Hugging Face tokenizer keeps it as that token.)"""
    n = recipe["max_length"]
    ids = [i for w in wordpiece_words(text, recipe) for i in wordpiece_pieces(w, recipe, vocab)][: n - 2]
    ids = [recipe["cls_id"], *ids, recipe["sep_id"]]
    pad = n - len(ids)
    return {
        "input_ids": ids + [recipe["pad_id"]] * pad,
        "attention_mask": [1] * len(ids) + [0] * pad,
        "token_type_ids": [0] * n,
    }


def _literal(text: str) -> str:
    """A Kotlin or Swift string literal (JSON's escapes, ``$`` escaped for Kotlin's templates)."""
    return json.dumps(text, ensure_ascii=False)


KOTLIN_WORDPIECE = """import java.text.Normalizer

/** BERT's WordPiece tokenizer, as model_info.json's "tokenizer" describes it: one text -> model inputs. */
class WordPiece(vocabLines: List<String>) {  // the lines of tokenizer/vocab.txt: line i is token id i
    // (String.codePoints() needs Android API 24+)
    private val vocab = HashMap<String, Long>().apply { vocabLines.forEachIndexed { i, t -> put(t, i.toLong()) } }
    private val maxLength = <<max_length>>
    private val cls = <<cls>>L; private val sep = <<sep>>L; private val pad = <<pad>>L; private val unk = <<unk>>L
    private val lowercase = <<lowercase>>; private val stripAccents = <<strip>>; private val splitCjk = <<cjk>>

    class Encoded(val inputIds: LongArray, val attentionMask: LongArray, val tokenTypeIds: LongArray)

    fun encode(text: String): Encoded {
        val tokens = listOf(cls) + words(text).flatMap { pieces(it) }.take(maxLength - 2) + sep
        return Encoded(
            LongArray(maxLength) { tokens.getOrElse(it) { pad } },
            LongArray(maxLength) { if (it < tokens.size) 1L else 0L },
            LongArray(maxLength),  // token type 0 everywhere: one sentence
        )
    }

    private fun words(text: String): List<String> {
        val clean = StringBuilder()  // drop control characters, whitespace -> ' ', spaces around CJK
        text.codePoints().forEach { cp ->
            when {
                cp == 0 || cp == 0xFFFD || (isOther(cp) && cp != 9 && cp != 10 && cp != 13) -> {}
                isSpace(cp) -> clean.append(' ')
                splitCjk && CJK.any { cp in it } -> clean.append(' ').appendCodePoint(cp).append(' ')
                else -> clean.appendCodePoint(cp)
            }
        }
        val text2 = if (!stripAccents) clean.toString() else buildString {  // NFD, drop nonspacing marks
            Normalizer.normalize(clean, Normalizer.Form.NFD).codePoints()
                .forEach { if (Character.getType(it) != Character.NON_SPACING_MARK.toInt()) appendCodePoint(it) }
        }
        val words = mutableListOf<String>()
        val word = StringBuilder()
        text2.codePoints().forEach { c ->  // lowercase one code point at a time, split on spaces and punctuation
            val s = String(Character.toChars(c))
            (if (lowercase) s.lowercase() else s).codePoints().forEach { cp ->
                if (isSpace(cp) || isPunct(cp)) {
                    if (word.isNotEmpty()) { words += word.toString(); word.setLength(0) }
                    if (!isSpace(cp)) words += String(Character.toChars(cp))
                } else word.appendCodePoint(cp)
            }
        }
        if (word.isNotEmpty()) words += word.toString()
        return words
    }

    private fun pieces(word: String): List<Long> {  // greedy longest match first; no match: the word is unk
        val cps = word.codePoints().toArray()
        if (cps.size > <<max_chars>>) return listOf(unk)
        val ids = mutableListOf<Long>()
        var start = 0
        while (start < cps.size) {
            var end = cps.size
            var id: Long? = null
            while (end > start) {
                id = vocab[(if (start > 0) <<prefix>> else "") + String(cps, start, end - start)]
                if (id != null) break
                end--
            }
            ids += id ?: return listOf(unk)
            start = end
        }
        return ids
    }

    private fun isSpace(cp: Int) = Character.isWhitespace(cp) || Character.isSpaceChar(cp)
    private fun isOther(cp: Int) = Character.getType(cp).toByte() in OTHER
    private fun isPunct(cp: Int) =
        cp in 33..47 || cp in 58..64 || cp in 91..96 || cp in 123..126 || Character.getType(cp).toByte() in PUNCT

    private companion object {
        val OTHER = setOf(
            Character.CONTROL, Character.FORMAT, Character.SURROGATE, Character.PRIVATE_USE, Character.UNASSIGNED,
        )
        val PUNCT = setOf(
            Character.CONNECTOR_PUNCTUATION, Character.DASH_PUNCTUATION, Character.START_PUNCTUATION,
            Character.END_PUNCTUATION, Character.INITIAL_QUOTE_PUNCTUATION, Character.FINAL_QUOTE_PUNCTUATION,
            Character.OTHER_PUNCTUATION,
        )
        val CJK = listOf(<<kotlin_cjk>>)
    }
}"""

SWIFT_WORDPIECE = """import Foundation

/// BERT's WordPiece tokenizer, as model_info.json's "tokenizer" describes it: one text -> model inputs.
struct WordPiece {
    let maxLength = <<max_length>>
    let cls: Int64 = <<cls>>, sep: Int64 = <<sep>>, pad: Int64 = <<pad>>, unk: Int64 = <<unk>>
    let lowercase = <<lowercase>>, stripAccents = <<strip>>, splitCjk = <<cjk>>
    let prefix = Array(<<prefix>>.unicodeScalars)
    private var vocab = [[Unicode.Scalar]: Int64]()  // keyed by code points: String's == is canonical

    init(vocabPath: String) throws {  // tokenizer/vocab.txt: line i is token id i
        let lines = try String(contentsOfFile: vocabPath, encoding: .utf8).components(separatedBy: "\\n")
        for (i, token) in lines.enumerated() { vocab[Array(token.unicodeScalars)] = Int64(i) }
    }

    func encode(_ text: String) -> (inputIds: [Int64], attentionMask: [Int64], tokenTypeIds: [Int64]) {
        var ids = [cls] + words(text).flatMap { pieces($0) }.prefix(maxLength - 2)
        ids.append(sep)
        let n = ids.count
        return (ids + [Int64](repeating: pad, count: maxLength - n),
                [Int64](repeating: 1, count: n) + [Int64](repeating: 0, count: maxLength - n),
                [Int64](repeating: 0, count: maxLength))  // token type 0 everywhere: one sentence
    }

    private func words(_ text: String) -> [[Unicode.Scalar]] {
        var clean = String.UnicodeScalarView()  // drop control characters, whitespace -> " ", spaces around CJK
        for s in text.unicodeScalars where s.value != 0 && s.value != 0xFFFD {
            if isOther(s) && !"\\t\\n\\r".unicodeScalars.contains(s) { continue }
            if s.properties.isWhitespace { clean.append(" ") }
            else if splitCjk && Self.cjk.contains(where: { $0.contains(s.value) }) {
                clean.append(contentsOf: [" ", s, " "])
            }
            else { clean.append(s) }
        }
        var scalars = Array(clean)
        if stripAccents {  // NFD, drop nonspacing marks
            scalars = Array(String(clean).decomposedStringWithCanonicalMapping.unicodeScalars)
                .filter { $0.properties.generalCategory != .nonspacingMark }
        }
        var words = [[Unicode.Scalar]](), word = [Unicode.Scalar]()
        for c in scalars {  // lowercase one code point at a time, split on spaces and punctuation
            for s in (lowercase ? String(c).lowercased() : String(c)).unicodeScalars {
                if s.properties.isWhitespace || isPunct(s) {
                    if !word.isEmpty { words.append(word); word = [] }
                    if !s.properties.isWhitespace { words.append([s]) }
                } else { word.append(s) }
            }
        }
        if !word.isEmpty { words.append(word) }
        return words
    }

    private func pieces(_ word: [Unicode.Scalar]) -> [Int64] {  // greedy longest match first; no match: unk
        if word.count > <<max_chars>> { return [unk] }
        var ids = [Int64](), start = 0
        while start < word.count {
            var end = word.count, id: Int64? = nil
            while end > start {
                id = vocab[(start > 0 ? prefix : []) + word[start..<end]]
                if id != nil { break }
                end -= 1
            }
            guard let found = id else { return [unk] }
            ids.append(found)
            start = end
        }
        return ids
    }

    private func isOther(_ s: Unicode.Scalar) -> Bool {
        [.control, .format, .surrogate, .privateUse, .unassigned].contains(s.properties.generalCategory)
    }
    private func isPunct(_ s: Unicode.Scalar) -> Bool {
        Self.asciiPunct.contains(where: { $0.contains(s.value) }) || [
            .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
            .initialPunctuation, .finalPunctuation, .otherPunctuation,
        ].contains(s.properties.generalCategory)
    }
    private static let asciiPunct: [ClosedRange<UInt32>] = [33...47, 58...64, 91...96, 123...126]
    private static let cjk: [ClosedRange<UInt32>] = [<<swift_cjk>>]
}"""


def _fill(template: str, values: dict[str, Any]) -> str:
    for key, value in values.items():
        template = template.replace(f"<<{key}>>", str(value))
    return template


def wordpiece_code(tok: dict[str, Any]) -> tuple[str, str]:
    """The Kotlin and Swift ``WordPiece`` encoders, with the recipe's ids and settings written in."""
    flag = {True: "true", False: "false"}
    values = {
        "max_length": tok["max_length"],
        "cls": tok["cls_id"],
        "sep": tok["sep_id"],
        "pad": tok["pad_id"],
        "unk": tok["unk_id"],
        "lowercase": flag[tok["lowercase"]],
        "strip": flag[tok["strip_accents"]],
        "cjk": flag[tok["split_cjk_chars"]],
        "max_chars": tok["max_input_chars_per_word"],
        "kotlin_cjk": ", ".join(f"0x{lo:X}..0x{hi:X}" for lo, hi in CJK_RANGES),
        "swift_cjk": ", ".join(f"0x{lo:X}...0x{hi:X}" for lo, hi in CJK_RANGES),
    }
    prefix = tok["continuing_subword_prefix"]
    kotlin = _fill(KOTLIN_WORDPIECE, {**values, "prefix": _literal(prefix).replace("$", "\\$")})
    swift = _fill(SWIFT_WORDPIECE, {**values, "prefix": _literal(prefix)})
    return kotlin, swift


def text_section(info: dict[str, Any]) -> str:
    """README section for text models: the recipe in words, the shipped-vocabulary encoders (Kotlin,
    Swift) when the tokenizer is BERT's WordPiece, and the ONNX Runtime Extensions route."""
    tok = info["tokenizer"]
    n = tok["max_length"]
    names = ", ".join(f"`{i['name']}`" for i in info["inputs"])
    wordpiece = tok.get("app_encoder") == "wordpiece"
    if wordpiece:
        kotlin, swift = wordpiece_code(tok)
        vocab = tok["vocab_file"]
        first = f"""**1. The shipped vocabulary** (no extra library): the `WordPiece` code below follows the recipe
step by step with `{vocab}` and gives the same ids as the Hugging Face tokenizer the model was trained
with (edgeslim's tests check its Python twin, `edgeslim.export.mobile.wordpiece_encode`, on real reviews;
a text holding a special token's literal string, e.g. `{tok["special_tokens"]["sep"]}`, is the one
difference). Ship `{vocab}` with the app (Android: `assets/{vocab}`; iOS: add `vocab.txt` to the target).

```kotlin
{kotlin}
```

```swift
{swift}
```
"""
    else:
        first = f"**1. The shipped vocabulary**: not for this tokenizer — {tok.get('app_encoder_note', '')}.\n"
    return f"""
## Text → {names}

`{INFO_FILE}` → `tokenizer` is the recipe, read from the tokenizer's own files in `{tok["directory"]}/`:
{tok["encode"]}. Two ways to follow it in an app:

{first}
**2. ONNX Runtime Extensions** (the tokenizer as an ONNX model with a custom operator, e.g. `BertTokenizer`).
edgeslim does not make that model (it needs the `onnxruntime-extensions` Python package, which it does
not install and cannot download); make it once on a computer:

```python
# pip install onnxruntime-extensions transformers onnx
import onnx
from onnxruntime_extensions import gen_processing_models
from transformers import AutoTokenizer

pre, _ = gen_processing_models(AutoTokenizer.from_pretrained("{tok["directory"]}"), pre_kwargs={{}})
onnx.save(pre, "tokenizer.onnx")  # outputs input_ids, token_type_ids, attention_mask (check with onnx.load)
```

Run it in a second session with the extensions' operators registered; its ids are not padded: keep the
first {n} (the last one the end token's id, e.g. `[SEP]`), pad to {n} as the recipe says, and feed them as above.

```kotlin
// implementation("com.microsoft.onnxruntime:onnxruntime-extensions-android:<version>")
val tokOptions = OrtSession.SessionOptions().apply {{ registerCustomOpLibrary(OrtxPackage.getLibraryPath()) }}
val tokSession = env.createSession(assets.open("tokenizer.onnx").readBytes(), tokOptions)
val text = OnnxTensor.createTensor(env, arrayOf({_literal(EXAMPLE_TEXT)}), longArrayOf(1L))
tokSession.run(mapOf(tokSession.inputNames.first() to text)).use {{ r ->
    val ids = (r.get("input_ids").get() as OnnxTensor).longBuffer  // then cut, pad, mask
}}
```

```swift
// pod 'onnxruntime-extensions-c'; bridging header: #include "onnxruntime_extensions.h"
let tokOptions = try ORTSessionOptions()
try tokOptions.registerCustomOps(functionPointer: RegisterCustomOps)
let tokSession = try ORTSession(env: env, modelPath: Bundle.main.path(forResource: "tokenizer", ofType: "onnx")!,
                                sessionOptions: tokOptions)
let text = try ORTValue(tensorStringData: [{_literal(EXAMPLE_TEXT)}], shape: [1])
let tokOut = try tokSession.run(withInputs: [try tokSession.inputNames()[0]: text],
                                outputNames: ["input_ids"], runOptions: nil)
let ids = try tokOut["input_ids"]!.tensorData() as Data  // Int64 values; then cut, pad, mask
```
"""


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
            f"Input: text, encoded with the tokenizer in `{tok['directory']}/` ({', '.join(tok['files'])}) as "
            f"`{INFO_FILE}` → `tokenizer` says; *Text* below has the recipe and app code."
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
    if _wordpiece(info):  # the text's inputs come from the WordPiece code of the Text section
        text = _literal(EXAMPLE_TEXT)
        vocab = f"{info['tokenizer']['directory']}/{VOCAB_FILE}"
        kotlin_inputs = (
            f'val enc = WordPiece(assets.open("{vocab}").bufferedReader().readLines()).encode({text})  // class below\n'
            + kotlin_inputs
        )
        swift_inputs = (
            'let vocabPath = Bundle.main.path(forResource: "vocab", ofType: "txt")!\n'
            f"let enc = try WordPiece(vocabPath: vocabPath).encode({text})  // struct below\n" + swift_inputs
        )
    text_part = text_section(info) if info.get("tokenizer") else ""
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
{text_part}
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
    elif tok and inp["name"] == TOKEN_TYPE_IDS:
        note = f"0 everywhere (one sentence){type_note}"
    elif tok and k == 0:
        note = f"the token ids (padded with {tok['pad_id']}){type_note}"
    elif k == 0:
        note = f"fill with preprocessed values, {pre['layout'] if pre else 'NCHW'}{type_note}"
    else:
        note = f"fill with the values of `{inp['name']}`{type_note}"
    parts = [p for p in re.split(r"[^0-9a-zA-Z]+", inp["name"]) if p] or [f"input{k}"]
    var = parts[0].lower() + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    var = var if var[0].isalpha() else f"input{var}"
    tensor = "tensor" if len(info["inputs"]) == 1 else f"{var}Tensor"
    data = "data" if len(info["inputs"]) == 1 else f"{var}Data"
    field = TEXT_FIELDS.get(inp["name"], "inputIds" if k == 0 else None) if _wordpiece(info) else None
    kotlin_array = f"val {var} = enc.{field}" if field else f"val {var} = {kt_array}({numel})         "
    swift_array = f"var {var} = enc.{field}" if field else f"var {var} = [{swift_type}](repeating: 0, count: {numel})"
    return _InputCode(
        name=inp["name"],
        tensor=tensor,
        dims=dims,
        sized=sized,
        kotlin=(
            f"{kotlin_array}   // {note}\n"
            f"val {tensor} = OnnxTensor.createTensor(env, {buffer}.wrap({var}), longArrayOf({long_shape}))"
        ),
        java=(
            f"{java_array} {var} = new {java_array[:-2]}[{numel}];  // {note}\n"
            f"OnnxTensor {tensor} = OnnxTensor.createTensor(env, {buffer}.wrap({var}), new long[]{{{java_shape}}});"
        ),
        swift=(
            f"{swift_array}   // {note}\n"
            f"let {data} = NSMutableData(bytes: &{var}, length: {var}.count * MemoryLayout<{swift_type}>.size)\n"
            f"let {tensor} = try ORTValue(tensorData: {data}, elementType: {ort_type}, shape: [{num_shape}])"
        ),
        objc=(
            f"ORTValue *{tensor} = [[ORTValue alloc] initWithTensorData:{data}  // {note}\n"
            f"    elementType:ORTTensorElementDataType{objc_type} shape:@[{objc_shape}] error:&error];"
        ),
    )


TEXT_FIELDS = {"input_ids": "inputIds", "attention_mask": "attentionMask", TOKEN_TYPE_IDS: "tokenTypeIds"}


def _wordpiece(info: dict[str, Any]) -> bool:
    """Whether the snippets make the text's inputs with the bundle's WordPiece code (every input is one
    of its arrays, int64)."""
    tok = info.get("tokenizer") or {}
    return tok.get("app_encoder") == "wordpiece" and all(
        i["name"] in TEXT_FIELDS and i["dtype"] == "int64" for i in info["inputs"]
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
        types = any(i["name"] == TOKEN_TYPE_IDS for i in info["inputs"])
        info["tokenizer"] = copy_tokenizer(
            Path(tokenizer["folder"]), bundle, tokenizer["pad_id"], tokenizer["max_length"], types
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
