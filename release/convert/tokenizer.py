"""The tokenizer files convert ships: the training tokenizer's vocabulary, described for this model.

The vocabulary files (``tokenizer.json``, ``vocab.json``, ``merges.txt``, ...) are copied byte for byte: the
released model must tokenize exactly as it was trained. ``tokenizer_config.json`` (and ``special_tokens_map.json``
when the tokenizer has one; transformers 4.x lets it override the config) is rewritten to describe this model:

- ``model_max_length`` is the model's context length, so ``truncation=True`` truncates where the model stops;
  without it transformers uses 1e30 and long inputs reach the model's context error instead.
- ``model_input_names`` is ``["input_ids", "attention_mask"]``: a ``PreTrainedTokenizerFast`` otherwise returns
  ``token_type_ids`` on transformers 4.x, and ``model.generate(**inputs)`` fails on them ("The following
  ``model_kwargs`` are not used by the model").
- bos, eos and pad are the tokens the model's config and generation config use (GPT-2's convention:
  ``<|endoftext|>`` for all three when the tokenizer declares only some of them).
- ``tokenizer_class`` names a class every supported transformers version can load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from release._io import first_line
from release.errors import TokenizerError
from release.settings import DEFAULT_TOKENIZER

if TYPE_CHECKING:
    from modeling.mapping import Architecture

log = logging.getLogger(__name__)

GPT2_EOS = ("<|endoftext|>", 50256)
# Files that make up a tokenizer folder; everything else in a folder given as --tokenizer is ignored.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
# The files convert rewrites; every other tokenizer file is the training tokenizer's, byte for byte.
DESCRIBED_FILES = ("tokenizer_config.json", "special_tokens_map.json")
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]  # what the model's forward takes; no token_type_ids
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


@dataclass(frozen=True)
class TokenizerInfo:
    """The tokenizer that ships with the model, as release.json records it."""

    source: str  # "hub" | "local"
    name: str  # Hub repo id, or the local folder's name
    revision: str | None  # Hub commit, when it came from the Hub
    size: int  # len(tokenizer), added tokens included
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    # The local folder, so `release verify` can use the same training tokenizer without being told again:
    # relative to the working directory when it lies inside it (what a project's checkout has in common across
    # machines, and no home-directory path in a published file), else absolute. None for a Hub tokenizer.
    path: str | None = None


def stage_tokenizer(tokenizer: str | Path | None, staging: Path, arch: Architecture) -> TokenizerInfo:
    """Write the tokenizer files into ``staging``: vocabulary byte for byte, the config describing this model.

    Raises:
        TokenizerError: The tokenizer cannot be found or loaded, does not fit the embedding, or its special
            tokens are outside it.
    """
    source, name, folder, revision = _locate_tokenizer(tokenizer)
    files = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not files:
        raise TokenizerError(
            f"no tokenizer files in {folder} (expected e.g. tokenizer.json, tokenizer_config.json)"
        )
    for f in files:
        data = (folder / f).read_bytes()
        if f == TOKENIZER_CONFIG:
            data = fix_tokenizer_class_for_4x(data, name=name)
        (staging / f).write_bytes(data)
    tok = _load(staging, name)
    size = len(tok)
    if size > arch.vocab_size:
        raise TokenizerError(
            f"tokenizer {name} has {size} tokens but the model's embedding has {arch.vocab_size} rows "
            "(token_embedding.weight); use the tokenizer the model was trained with"
        )
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    gpt2_eos = tok.convert_tokens_to_ids(GPT2_EOS[0]) if GPT2_EOS[0] in tok.get_vocab() else None
    if eos is None and gpt2_eos is not None:
        log.info(
            "tokenizer %s declares no eos token: using %s (%d), as GPT-2 does", name, GPT2_EOS[0], gpt2_eos
        )
        eos = gpt2_eos
    if bos is None and eos is not None and eos == gpt2_eos:
        bos = eos  # GPT-2 convention: <|endoftext|> is both bos and eos
    if pad is None:
        pad = eos
    ids = {"bos": bos, "eos": eos, "pad": pad}
    too_big = [f"{k}={v}" for k, v in ids.items() if v is not None and not 0 <= v < arch.vocab_size]
    if too_big:
        raise TokenizerError(
            f"tokenizer {name}: special token ids {', '.join(too_big)} are outside the embedding"
        )
    special = {f"{k}_token": tok.convert_ids_to_tokens(v) for k, v in ids.items() if v is not None}
    _describe_model(staging, arch, special, tokenizer_class=type(tok).__name__, name=name)
    _check_described(_load(staging, name), arch, size, ids, name=name)
    path = _recorded_path(Path(folder)) if source == "local" else None
    return TokenizerInfo(source, name, revision, size, bos, eos, pad, path)


def _recorded_path(folder: Path) -> str:
    resolved, cwd = folder.resolve(), Path.cwd().resolve()
    return resolved.relative_to(cwd).as_posix() if resolved.is_relative_to(cwd) else resolved.as_posix()


def _load(folder: Path, name: str):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for unusable folders
        raise TokenizerError(f"cannot load the tokenizer {name}: {first_line(exc)}") from exc


def _describe_model(
    staging: Path, arch: Architecture, special: dict[str, str], *, tokenizer_class: str, name: str
) -> None:
    """Rewrite the config files of ``staging`` so they describe this model; logs what changes."""
    config = _read_json(staging / TOKENIZER_CONFIG, name=name)
    wanted: dict[str, Any] = {
        "model_max_length": arch.block_size,
        "model_input_names": list(MODEL_INPUT_NAMES),
        **special,
    }
    if not config.get("tokenizer_class"):
        wanted["tokenizer_class"] = _CLASSES_4X_CANNOT_LOAD.get(tokenizer_class, tokenizer_class)
    changed = sorted(k for k, v in wanted.items() if _token_text(config.get(k)) != v and config.get(k) != v)
    if changed:
        log.info("tokenizer %s: %s set for this model in %s", name, ", ".join(changed), TOKENIZER_CONFIG)
    for key in changed:
        config[key] = wanted[key]
    _write_json(staging / TOKENIZER_CONFIG, config)
    if (staging / SPECIAL_TOKENS_MAP).is_file():  # 4.x lets this file override the config's special tokens
        tokens_map = _read_json(staging / SPECIAL_TOKENS_MAP, name=name)
        for key, value in special.items():
            if _token_text(tokens_map.get(key)) != value:
                tokens_map[key] = value
        _write_json(staging / SPECIAL_TOKENS_MAP, tokens_map)


def _check_described(tok, arch: Architecture, size: int, ids: dict[str, int | None], *, name: str) -> None:
    """The rewritten files load back as described, with the same vocabulary (no token was added)."""
    got = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    problems = []
    if len(tok) != size:
        problems.append(f"{len(tok)} tokens instead of {size}")
    if got != ids:
        problems.append(f"special token ids {got} instead of {ids}")
    if tok.model_max_length != arch.block_size:
        problems.append(f"model_max_length {tok.model_max_length} instead of {arch.block_size}")
    if list(tok.model_input_names) != MODEL_INPUT_NAMES:
        problems.append(f"model_input_names {tok.model_input_names}")
    if problems:
        raise TokenizerError(
            f"tokenizer {name}: the shipped files do not load as written: {'; '.join(problems)}"
        )


def _token_text(value: Any) -> Any:
    """A special token as text, whether written as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path: Path, *, name: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"tokenizer {name}: {path.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"tokenizer {name}: {path.name} does not hold a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# transformers 5.x saves this backend name, which no 4.x release can resolve ("Tokenizer class TokenizersBackend
# does not exist"); every supported version loads the same tokenizer.json as PreTrainedTokenizerFast.
_CLASSES_4X_CANNOT_LOAD = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def fix_tokenizer_class_for_4x(config_bytes: bytes, *, name: str) -> bytes:
    """Rename a tokenizer class that transformers 4.x cannot load; logs the change. Other files pass untouched."""
    try:
        config = json.loads(config_bytes)
    except ValueError:
        return config_bytes  # AutoTokenizer reports a broken file right after
    old = config.get("tokenizer_class") if isinstance(config, dict) else None
    if old not in _CLASSES_4X_CANNOT_LOAD:
        return config_bytes
    config["tokenizer_class"] = _CLASSES_4X_CANNOT_LOAD[old]
    config.pop("backend", None)
    log.info(
        "tokenizer %s: tokenizer_class %s -> %s so transformers 4.x can load it",
        name,
        old,
        config["tokenizer_class"],
    )
    return (json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _locate_tokenizer(tokenizer: str | Path | None) -> tuple[str, str, Path, str | None]:
    """(source, name, local folder, revision) of a local folder or a Hub repo id (downloaded to the cache)."""
    if tokenizer is None:
        tokenizer = DEFAULT_TOKENIZER
    path = Path(tokenizer).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TokenizerError(
                f"tokenizer {tokenizer} is a file; pass the folder that holds tokenizer files"
            )
        return "local", path.resolve().name, path, None
    text = str(tokenizer)
    looks_like_path = isinstance(tokenizer, Path) or text.startswith((".", "/", "~")) or text.count("/") > 1
    if looks_like_path or "\\" in text:
        raise TokenizerError(f"tokenizer folder not found: {tokenizer}")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(text, allow_patterns=list(TOKENIZER_FILES)))
    except Exception as exc:  # offline, unknown repo, invalid id, gated repo...
        hint = (
            " (the default, GPT-2's)" if tokenizer == DEFAULT_TOKENIZER else " (no local folder by that name)"
        )
        raise TokenizerError(
            f"cannot download the tokenizer {text!r}{hint} from the Hub: {first_line(exc)}; "
            "pass --tokenizer with a local tokenizer folder"
        ) from exc
    return "hub", text, folder, folder.name


# --------------------------------------------------------------------------- the training tokenizer, later


@dataclass(frozen=True)
class TrainingTokenizer:
    """Which tokenizer ``release verify`` uses as the training one, and why (``origin``, said to the user)."""

    name: str  # a local folder or a Hub repo id
    revision: str | None  # the Hub commit release.json recorded
    origin: str  # "--tokenizer" | "release.json" | "settings" | "default (GPT-2's)"

    def describe(self) -> str:
        at = f"@{self.revision[:12]}" if self.revision else ""
        return f"{self.name}{at} (from {self.origin})"


def resolve_training_tokenizer(
    model_folder: Path | None, *, explicit: str | Path | None, configured: str | None
) -> TrainingTokenizer:
    """The training tokenizer: ``explicit`` (--tokenizer), else what convert recorded in ``release.json``
    (its local folder, or its Hub id at the recorded commit), else ``configured`` ([tool.release] tokenizer),
    else GPT-2's.

    Raises:
        TokenizerError: release.json records a local folder that is not on this machine and nothing else is
            configured (falling back to GPT-2's would verify against the wrong tokenizer).
    """
    if explicit is not None:
        return TrainingTokenizer(str(explicit), None, "--tokenizer")
    recorded = _recorded_tokenizer(model_folder) if model_folder is not None else None
    if recorded is not None:
        if recorded.get("source") == "hub" and isinstance(recorded.get("name"), str):
            return TrainingTokenizer(recorded["name"], recorded.get("revision"), "release.json")
        path = recorded.get("path")
        if isinstance(path, str) and Path(path).is_dir():
            return TrainingTokenizer(path, None, "release.json")
        if configured is None:
            where = path or f"a folder named {recorded.get('name')!r}"
            raise TokenizerError(
                f"release.json says the model was converted with the tokenizer at {where}, which is not on "
                "this machine; pass --tokenizer with that tokenizer's folder"
            )
    if configured is not None:
        return TrainingTokenizer(str(configured), None, "settings")
    return TrainingTokenizer(DEFAULT_TOKENIZER, None, "default (GPT-2's)")


def _recorded_tokenizer(model_folder: Path) -> dict[str, Any] | None:
    path = Path(model_folder) / "release.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no provenance (not written by convert): the settings decide
    tok = data.get("tokenizer") if isinstance(data, dict) else None
    return tok if isinstance(tok, dict) else None
