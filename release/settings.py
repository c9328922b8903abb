"""Effective settings of a release: command-line option > ``RELEASE_*`` environment variable > ``[tool.release]``
in pyproject.toml > built-in default. Every value remembers where it came from, so ``release run`` can print the
effective settings (never a token: tokens are not settings, they come from ``HF_TOKEN`` or OIDC only).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from release.errors import SettingsError, UsageError

PROJECT = "custom-transformer-release"  # this pipeline's distribution name (pyproject [project].name)
DEFAULT_PROMPTS = ("The Fox", "Once upon a time", "The Lion said")
# The steps of `release run`, in order (what --stop-after accepts).
STEPS = ("fetch", "convert", "verify", "compat", "card", "publish")
DEFAULT_TOKENIZER = "gpt2"  # GPT-2's BPE, what the training script uses unless told otherwise
# The weight dtypes a release can have, and their names in a safetensors header.
DTYPES = ("float32", "bfloat16", "float16")
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


@dataclass(frozen=True)
class Settings:
    """What ``release run`` needs. ``None`` for ``checkpoint`` means: release the built-in demo model."""

    repo_id: str | None = None
    checkpoint: str | None = None  # URI: path, file://, http(s)://, hf://, s3://, gs://
    checkpoint_sha256: str | None = None
    tokenizer: str | None = None  # folder or Hub id; None = GPT-2's (the demo brings its own)
    dtype: str = "float32"
    max_shard_size: str = "5GB"
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    eval_text: str | None = None  # None = the public-domain text shipped with the project
    max_new_tokens: int = 32
    private: bool = False
    dist_dir: str = "dist"
    run_compat: bool = False  # run the transformers compatibility matrix as part of `release run`
    device: str = "cpu"  # where verify runs the models: auto, cpu, cuda, cuda:N
    card: Mapping[str, Any] = field(default_factory=dict)  # [tool.release.card]
    compat_versions: tuple[str, ...] = ()  # [tool.release.compat] transformers
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)  # field -> where it came from

    def values(self) -> dict[str, Any]:
        """Every effective setting by name (``sources`` left out), as ``release settings --json`` shows them."""
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in fields(self)
            if f.name != "sources"
        }

    def value_text(self, name: str) -> str:
        """One setting as text for scripts (``release settings --get``): JSON for lists and tables, "" if unset.

        Raises:
            UsageError: ``name`` is not a setting.
        """
        values = self.values()
        if name not in values:
            raise UsageError(f"unknown setting {name!r}; known: {', '.join(sorted(values))}")
        value = values[name]
        return json.dumps(value) if isinstance(value, list | dict) else ("" if value is None else str(value))

    def describe(self) -> list[str]:
        """One line per effective setting with its source, for logs and the job summary."""
        shown = {
            k: ", ".join(v) if isinstance(v, list) else v for k, v in self.values().items() if k != "card"
        }
        return [
            f"{k} = {v if v not in (None, '') else '-'}  ({self.sources.get(k)})" for k, v in shown.items()
        ]


_SCALARS = {f.name for f in fields(Settings)} - {"card", "compat_versions", "sources"}


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a [tool.release] table, walking up from ``start`` (default: cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"{candidate} is not valid TOML: {exc}") from exc
            if "release" in data.get("tool", {}):
                return candidate
    return None


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; an unreadable or malformed file is a ``SettingsError`` naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from exc


def project_pyproject() -> Path | None:
    """This pipeline's own pyproject.toml (its declared dependency ranges), not the user's ``[tool.release]``.

    Found beside the source tree (checkout, editable install), else in the cwd; ``None`` for a wheel install,
    where the installed metadata says the same.
    """
    for candidate in (
        Path(__file__).resolve().parent.parent / "pyproject.toml",
        Path.cwd() / "pyproject.toml",
    ):
        if candidate.is_file() and read_toml(candidate).get("project", {}).get("name") == PROJECT:
            return candidate
    return None


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a raw value (TOML or environment string) into the field's type, or fail naming the setting."""
    where = f"{name} (from {origin})"
    if name in ("prompts",):
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [p for p in text.split("\n") if p.strip()]
        if not (isinstance(value, list | tuple) and value and all(isinstance(p, str) and p for p in value)):
            raise SettingsError(f"{where} must be a non-empty list of non-empty strings")
        return tuple(value)
    if name in ("max_new_tokens",):
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{where} must be a whole number, got {value!r}") from None
        if number < 1:
            raise SettingsError(f"{where} must be at least 1, got {number}")
        return number
    if name in ("private", "run_compat"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{where} must be true or false, got {value!r}")
    if not isinstance(value, str):
        raise SettingsError(f"{where} must be a string, got {type(value).__name__}")
    value = value.strip()
    if name == "dtype" and value not in DTYPES:
        raise SettingsError(f"{where} must be one of {', '.join(DTYPES)}, got {value!r}")
    if name == "device" and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.lower()):
        raise SettingsError(f"{where} must be auto, cpu, cuda or cuda:N, got {value!r}")
    if name == "checkpoint_sha256" and value and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise SettingsError(f"{where} must be 64 hexadecimal characters")
    if name == "device":
        return value.lower()
    return value or None if name not in ("dtype", "max_shard_size", "dist_dir") else value


def load_settings(
    *,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    pyproject: Path | None = None,
) -> Settings:
    """Resolve the effective settings.

    Args:
        overrides: command-line values; ``None`` values mean "not given".
        env: the environment (default ``os.environ``); ``RELEASE_<NAME>`` for each setting.
        pyproject: the pyproject.toml to read (default: the nearest one with ``[tool.release]``).

    Raises:
        SettingsError: an unknown key in ``[tool.release]`` or a value of the wrong type.
    """
    env = os.environ if env is None else env
    path = pyproject if pyproject is not None else find_pyproject()
    table: dict[str, Any] = {}
    if path is not None:
        table = dict(tomllib.loads(Path(path).read_text(encoding="utf-8")).get("tool", {}).get("release", {}))
    card = table.pop("card", {})
    compat_table = table.pop("compat", {})
    unknown = sorted(set(table) - _SCALARS)
    if unknown:
        raise SettingsError(
            f"unknown key(s) in [tool.release] of {path}: {', '.join(unknown)}; known: {', '.join(sorted(_SCALARS))}"
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in sorted(_SCALARS):
        env_name = f"RELEASE_{name.upper()}"
        if overrides and overrides.get(name) is not None:
            values[name], sources[name] = _coerce(name, overrides[name], "option"), "option"
        elif env.get(env_name, "") != "":
            values[name], sources[name] = _coerce(name, env[env_name], env_name), env_name
        elif name in table:
            values[name], sources[name] = _coerce(name, table[name], "pyproject"), "pyproject"
        else:
            sources[name] = "default"
    if not isinstance(card, dict):
        raise SettingsError("[tool.release.card] must be a table")
    versions = compat_table.get("transformers", []) if isinstance(compat_table, dict) else []
    sources["compat_versions"] = "pyproject" if versions else "default"
    return Settings(
        **values,
        card=card,
        compat_versions=tuple(str(v) for v in versions),
        sources=sources,
    )


def repo_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` is not a Hub model repo ``OWNER/NAME`` (huggingface_hub's own rule), or None."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id.count("/") != 1:
        return f"{repo_id!r} is not OWNER/NAME"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        return f"{repo_id!r} is not OWNER/NAME ({str(exc).splitlines()[0]})"
    return None


def cache_dir(kind: str) -> Path:
    """This tool's cache of one ``kind`` ("artifacts", "compat"): ``~/.cache/custom-transformer-release/<kind>``,
    or ``$RELEASE_CACHE_DIR``, which holds the artifacts at its top (the folder ``release.yml`` caches) and the
    other kinds in subfolders."""
    configured = os.environ.get("RELEASE_CACHE_DIR")
    if configured:
        base = Path(configured).expanduser()
        return base if kind == "artifacts" else base / kind
    return Path.home() / ".cache" / PROJECT / kind
