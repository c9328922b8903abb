"""Facts for the model card, read from a converted model folder and from verification.json.

Everything here is read, checked and returned as plain data; nothing is guessed. A value the card needs
that is missing from the folder is a ``CardError`` naming the file and the key, never a default.
Only deterministic fields are kept (no timings, no dates): a re-release of the same checkpoint must
render a byte-identical card so that nothing new is uploaded.
"""

from __future__ import annotations

import json
import math
import subprocess
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from release._io import attrs_dict
from release.errors import CardError

FFN_LABELS = {
    "swiglu": "SwiGLU",
    "relu": "ReLU MLP",
}


@dataclass(frozen=True)
class WeightFile:
    name: str  # path relative to the model folder
    size: int  # bytes
    tensors: int
    parameters: int
    dtypes: tuple[str, ...]  # safetensors dtype codes, sorted (e.g. ("F32",))


@dataclass(frozen=True)
class ModelFacts:
    """What the card says about the architecture and the weights (from config.json and the weight files)."""

    model_type: str
    architectures: tuple[str, ...]
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    ffn_type: str
    intermediate_size: int
    dtype: str
    parameters: int  # sum of element counts over every tensor in the safetensors files
    weight_files: tuple[WeightFile, ...]
    tokenizer_vocab_size: int | None  # from tokenizer.json when the folder has one


def read_json_object(path: Path, *, what: str) -> dict:
    """Read a JSON file that must hold an object; CardError names the file and what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise CardError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CardError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise CardError(f"{path}: expected a JSON object, found {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    """What a parsed JSON value is, in words."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")


def get_field(
    data: Mapping, dotted: str, *, source: Path | str, types: tuple[type, ...], nullable: bool = False
):
    """Return ``data[a][b]...`` for ``dotted="a.b"``, checking its type; CardError names the file and key.

    ``nullable`` allows an explicit JSON null (the key must still be present: absent and null differ).
    """
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise CardError(f"{source}: missing key '{dotted}'")
        value = value[part]
    if value is None:
        if nullable:
            return None
        raise CardError(f"{source}: '{dotted}' is null")
    if isinstance(value, str) and value in ("nan", "inf", "-inf") and str not in types:
        raise CardError(f"{source}: '{dotted}' is {value}; the card reports finite numbers only")
    if isinstance(value, bool) and bool not in types:
        raise CardError(f"{source}: '{dotted}' must be {_type_names(types)}, found a boolean")
    if not isinstance(value, types):
        raise CardError(f"{source}: '{dotted}' must be {_type_names(types)}, found {_json_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise CardError(f"{source}: '{dotted}' is {value}, not a finite number")
    return value


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", dict: "an object"}
    names[list] = "an array"
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


# --- the weights -------------------------------------------------------------------------------------


def weight_file_facts(path: Path, *, name: str) -> WeightFile:
    """Tensor count, parameter count and dtypes of one safetensors file, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:  # reads the header; no tensor is loaded
            slices = [f.get_slice(key) for key in f.keys()]
    except (OSError, SafetensorError) as exc:
        raise CardError(f"{path}: not a readable safetensors file ({exc})") from None
    return WeightFile(
        name=name,
        size=path.stat().st_size,
        tensors=len(slices),
        parameters=sum(math.prod(s.get_shape()) for s in slices),
        dtypes=tuple(sorted({s.get_dtype() for s in slices})),
    )


def read_model_facts(model_dir: Path, release: Mapping) -> ModelFacts:
    """Architecture from ``config.json``, parameter count and sizes from the ``*.safetensors`` headers."""
    config_path = model_dir / "config.json"
    config = read_json_object(config_path, what="model config")

    def get_int(key: str) -> int:
        value = get_field(config, key, source=config_path, types=(int,))
        if value <= 0:
            raise CardError(f"{config_path}: '{key}' must be positive, found {value}")
        return value

    n_embd = get_int("n_embd")
    ffn_type = get_field(config, "ffn_type", source=config_path, types=(str,))
    intermediate_size = get_int("intermediate_size") if "intermediate_size" in config else 4 * n_embd
    # transformers 5 writes `dtype`, 4.x writes `torch_dtype`; release.json records what convert produced.
    dtype = config.get("dtype") or config.get("torch_dtype") or release.get("dtype")
    if not isinstance(dtype, str) or not dtype:
        raise CardError(
            f"{config_path}: no 'dtype' (or 'torch_dtype'), and release.json has no 'dtype' either"
        )
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise CardError(f"{config_path}: 'architectures' must be a list of class names")

    paths = sorted(model_dir.glob("*.safetensors"))
    if not paths:
        raise CardError(f"{model_dir}: no *.safetensors weight files; run `release convert` first")
    files = tuple(weight_file_facts(p, name=p.name) for p in paths)

    return ModelFacts(
        model_type=get_field(config, "model_type", source=config_path, types=(str,)),
        architectures=tuple(architectures),
        vocab_size=get_int("vocab_size"),
        n_positions=get_int("n_positions"),
        n_embd=n_embd,
        n_layer=get_int("n_layer"),
        n_head=get_int("n_head"),
        ffn_type=ffn_type,
        intermediate_size=intermediate_size,
        dtype=dtype,
        parameters=sum(f.parameters for f in files),
        weight_files=files,
        tokenizer_vocab_size=_tokenizer_vocab_size(model_dir / "tokenizer.json"),
    )


def _tokenizer_vocab_size(path: Path) -> int | None:
    """Token count of a `tokenizers` file: the model's vocab plus added tokens that are not in it."""
    if not path.is_file():
        return None
    data = read_json_object(path, what="tokenizer")
    vocab = (data.get("model") or {}).get("vocab")
    if not isinstance(vocab, dict):
        return None  # not a BPE/WordPiece-style vocab we can count; the card just leaves it out
    added = {t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    return len(vocab) + len(added - set(vocab))


# --- provenance --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseFacts:
    """Provenance from ``release.json`` (written by ``release convert``)."""

    converter_name: str
    converter_version: str
    git_commit: str | None
    dirty: bool
    checkpoint_filename: str
    checkpoint_sha256: str
    checkpoint_size: int
    checkpoint_format: str | None
    iter_num: int | None
    val_loss: float | None
    best_val_loss: float | None
    train_config: dict | None
    libraries: tuple[tuple[str, str], ...]  # (name, version), in a fixed order
    files: tuple[tuple[str, str, int], ...]  # (relpath, sha256, size), sorted by path


LIBRARY_ORDER = ("python", "torch", "transformers", "safetensors", "tokenizers")


def read_release_facts(model_dir: Path) -> tuple[dict, ReleaseFacts]:
    path = model_dir / "release.json"
    if not path.is_file():
        raise CardError(f"{path} not found: {model_dir} is not a folder written by `release convert`")
    data = read_json_object(path, what="release record")

    def get(key, types, nullable=False):
        return get_field(data, key, source=path, types=types, nullable=nullable)

    sha = get("checkpoint.sha256", (str,))
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise CardError(f"{path}: 'checkpoint.sha256' is not 64 lowercase hex digits")
    libraries = get("libraries", (dict,))
    for name, version in libraries.items():
        if not isinstance(version, str):
            raise CardError(f"{path}: 'libraries.{name}' must be a version string")
    ordered = [n for n in LIBRARY_ORDER if n in libraries] + sorted(set(libraries) - set(LIBRARY_ORDER))
    files = []
    for rel, info in sorted(get("files", (dict,)).items()):
        files.append(
            (
                rel,
                get_field(info, "sha256", source=path, types=(str,)),
                get_field(info, "size", source=path, types=(int,)),
            )
        )
    facts = ReleaseFacts(
        converter_name=get("converter.name", (str,)),
        converter_version=get("converter.version", (str,)),
        git_commit=get("converter.git_commit", (str,), nullable=True),
        dirty=bool(get("converter.dirty", (bool,), nullable=True)),
        checkpoint_filename=get("checkpoint.filename", (str,)),
        checkpoint_sha256=sha,
        checkpoint_size=get("checkpoint.size", (int,)),
        checkpoint_format=get("checkpoint.format", (str,), nullable=True),
        iter_num=get("checkpoint.iter_num", (int,), nullable=True),
        val_loss=_as_float(get("checkpoint.val_loss", (int, float), nullable=True)),
        best_val_loss=_as_float(get("checkpoint.best_val_loss", (int, float), nullable=True)),
        train_config=get("checkpoint.train_config", (dict,), nullable=True),
        libraries=tuple((n, libraries[n]) for n in ordered),
        files=tuple(files),
    )
    return data, facts


def _as_float(value: int | float | None) -> float | None:
    return None if value is None else float(value)


def git_head_commit(cwd: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` where the card is rendered; None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if len(commit) == 40 else None


# --- verification.json -------------------------------------------------------------------------------

SAMPLING_PARAMETERS = ("seed", "temperature", "top_k", "top_p")


def check_verification(report, *, source: Path | str, checkpoint_sha256: str) -> dict:
    """Validate the fields of a verification report that the card shows; return them as plain data.

    ``report`` is a ``release.verify.VerificationReport`` or the parsed ``verification.json`` (read through it).

    Raises CardError when the report is not a readable report, is for another checkpoint, or records failed
    gates: a card must not claim a verification the release does not have.
    """
    from release.errors import ReportError
    from release.verify.report import VerificationReport

    try:
        typed = report if isinstance(report, VerificationReport) else VerificationReport.from_dict(report)
    except ReportError as exc:
        raise CardError(f"{source}: {exc}") from None

    sha = typed.checkpoint.sha256
    if sha != checkpoint_sha256:
        raise CardError(
            f"{source} verifies checkpoint {sha[:12]}…, but the model folder was converted from "
            f"{checkpoint_sha256[:12]}…; run `release verify` on this folder"
        )
    if not typed.verified:
        failures = typed.recorded_failures or typed.failures
        detail = "; ".join(failures) if failures else "see the report"
        raise CardError(
            f"{source}: verification failed ({detail}); a card is only rendered for a verified model"
        )
    if not typed.gates:
        raise CardError(f"{source}: 'gates' is empty; nothing was verified")
    gates = [attrs_dict(g, "name", "title", "passed", "value", "threshold", "detail") for g in typed.gates]

    def finite(value, key: str, *, nullable: bool = False):
        if value is None:
            if nullable:
                return None
            raise CardError(f"{source}: '{key}' is null")
        if not math.isfinite(value):
            raise CardError(f"{source}: '{key}' is {value}; the card reports finite numbers only")
        return value

    # A figure whose gate is off for this dtype may be absent (null); the card shows a dash for it.
    parity = {
        key: finite(getattr(typed.parity, key), f"parity.{key}", nullable=True)
        for key in ("max_abs_diff", "mean_abs_diff", "top1_agreement", "kl_divergence")
    }
    ppl = typed.perplexity
    if ppl.tokens is None:
        raise CardError(f"{source}: 'perplexity.tokens' is null")
    perplexity = {
        "text": ppl.text,
        "text_sha256": ppl.text_sha256,
        "tokens": ppl.tokens,
        "reference": finite(ppl.reference, "perplexity.reference"),
        "candidate": finite(ppl.candidate, "perplexity.candidate"),
        "relative_diff": finite(ppl.relative_diff, "perplexity.relative_diff"),
    }
    cases = [
        {
            "prompt": visible_text(case.prompt),
            "text": visible_text(case.text),
            "match": case.match,
            # Parted from the reference only at a near tie the dtype's rounding can flip.
            "tolerated": case.tolerated,
        }
        for case in typed.generation.cases
    ]
    sampling = typed.generation.sampling
    if sampling is not None:
        recorded = sampling.to_dict()
        sampling = {
            "text": visible_text(sampling.text),
            # The sampling parameters, in a fixed order; not the outcome fields (tokens, stopped).
            "settings": [(k, recorded[k]) for k in SAMPLING_PARAMETERS if _is_scalar(recorded.get(k))],
            "prompt": visible_text(sampling.prompt) if sampling.prompt is not None else None,
        }
    if typed.model.dtype is None:
        raise CardError(f"{source}: 'model.dtype' is null")
    compat = typed.compat
    compat_passed = [v.transformers for v in compat.versions if v.passed] if compat else []
    compat_failed = [v.transformers for v in compat.versions if not v.passed] if compat else []
    return {
        "passed": True,
        "gates": gates,
        "parity": parity,
        "perplexity": perplexity,
        "generation": {
            "max_new_tokens": typed.generation.max_new_tokens,
            "cases": cases,
            "sampling": sampling,
        },
        "compat_versions": sorted(set(compat_passed), key=Version),
        "compat_failed": sorted(set(compat_failed), key=Version),
        "compat_range": compat.range if compat else None,
        # "4.46–5.24": the span of the versions that passed, for the card's compact line when they are many.
        "compat_span": _compat_span(compat_passed),
        "dtype": typed.model.dtype,
        "device": typed.model.device,
        "serving": [g for g in gates if g["name"].startswith("serving.")],
    }


def _compat_span(versions: list[str]) -> str | None:
    from release.compat.matrix import range_statement

    statement = range_statement(sorted(set(versions), key=Version))
    return statement.removeprefix("transformers ").split(":")[0] if statement else None


def visible_text(text: str) -> str:
    """Model output as card text: control and format characters become visible escapes (``\\x0e``).

    A tiny or undertrained model emits stray control bytes; raw, they would vanish or garble the Markdown.
    """
    out = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf"):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)
