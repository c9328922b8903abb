"""The verification report and its gates: thresholds per dtype, failure lines, verification.json, Markdown.

Pure Python (no torch): the card and publish steps read reports through this module without paying for torch.

``verification.json`` (schema_version 1) is written with sorted keys and an indent of 2. Its figures are
deterministic on one machine (fixed seeds, CPU); only ``timings`` vary, which is why the file is not uploaded
and the card uses only the deterministic fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from release._io import write_text_atomic
from release.errors import UsageError

SCHEMA_VERSION = 1
TEMPLATE = "verification.md.j2"

_DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "torch.float32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "torch.bfloat16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "torch.float16": "float16",
}


@dataclass(frozen=True)
class Gates:
    """Thresholds of the verification gates. ``None`` turns a gate off. Build with ``Gates.for_dtype``.

    Logits are always compared with the float32 training module, so a half-precision export is judged by what
    its rounding can explain. Defaults (see ``for_dtype``):

    ============================  =========  =========  =========
    threshold                     float32    bfloat16   float16
    ============================  =========  =========  =========
    max_abs_diff (logits)         1e-4       off        off
    mean_abs_diff (logits)        off        6e-2       1e-2
    min_top1_agreement            1.0        0.95       0.99
    max_kl_divergence (nats)      off        1.5e-3     5e-5
    max_perplexity_rel_diff       1e-3       1e-3       1e-3
    greedy_tie_margin (logits)    0          0.25       0.05
    hidden_rel_tol (locating)     1e-4       5e-2       1e-2
    ============================  =========  =========  =========

    float32 must match to rounding noise (different kernels: per-head matmuls vs fused QKV and SDPA). bfloat16
    keeps 8 significant bits (relative step 2**-8) and float16 11: the largest logit error of a half-precision
    model grows with the logits' range, so it is not gated; the mean error, the distributions' KL divergence
    and top-1 agreement are. Measured on two models trained on the demo text (widths 64 and 128, vocab 384),
    the figures were, bfloat16 / float16: max abs diff <= 0.22 / 0.027, mean <= 0.019 / 0.0024, top-1 >= 98.2%
    / 100%, KL <= 4.0e-4 / 7.0e-6, perplexity relative diff <= 3.1e-4 / 3.6e-5, hidden states relative <=
    0.015 / 0.0021, and greedy decoding parted at near ties only, with margins <= 0.063 / 0.0044 (float32: max
    abs diff <= 1.3e-5, every continuation equal). Each default leaves a margin of about 3x or more.
    """

    dtype: str = "float32"
    # parity: largest |logit_reference - logit_candidate| over every position of every parity input.
    max_abs_diff: float | None = 1e-4
    # parity: mean |logit_reference - logit_candidate|.
    mean_abs_diff: float | None = None
    # parity: fraction of positions whose argmax agrees.
    min_top1_agreement: float | None = 1.0
    # parity: mean KL(reference || candidate) per position, in nats.
    max_kl_divergence: float | None = None
    # perplexity on the evaluation text: |ppl_candidate - ppl_reference| / ppl_reference.
    max_perplexity_rel_diff: float | None = 1e-3
    # Greedy decoding may part ways with the reference only where the reference's logits for the two competing
    # tokens are within this margin: a near tie the dtype's rounding can flip (the rest of that continuation
    # is then not compared). 0 demands token-for-token equality.
    greedy_tie_margin: float = 0.0
    # Not a gate: a hidden state "diverges" when max|diff| / max|reference| exceeds this; the first one that
    # does names the layer in the failure lines.
    hidden_rel_tol: float = 1e-4

    @classmethod
    def for_dtype(cls, dtype: str) -> Gates:
        """The documented defaults for an export dtype: ``float32``, ``bfloat16`` (``bf16``), ``float16``."""
        name = _DTYPE_ALIASES.get(str(dtype).lower())
        if name is None:
            raise UsageError(f"no default gates for dtype {dtype!r}; use one of float32, bfloat16, float16")
        if name == "bfloat16":
            return cls(
                dtype=name,
                max_abs_diff=None,
                mean_abs_diff=6e-2,
                min_top1_agreement=0.95,
                max_kl_divergence=1.5e-3,
                max_perplexity_rel_diff=1e-3,
                greedy_tie_margin=0.25,
                hidden_rel_tol=5e-2,
            )
        if name == "float16":
            return cls(
                dtype=name,
                max_abs_diff=None,
                mean_abs_diff=1e-2,
                min_top1_agreement=0.99,
                max_kl_divergence=5e-5,
                max_perplexity_rel_diff=1e-3,
                greedy_tie_margin=0.05,
                hidden_rel_tol=1e-2,
            )
        return cls()

    def with_overrides(self, overrides: dict[str, str | float | None]) -> Gates:
        """A copy with thresholds replaced, e.g. ``{"max_abs_diff": "2e-4", "max_kl_divergence": "off"}``.

        Raises:
            UsageError: An unknown name or a value that is not a non-negative number (or ``off``/``none``).
        """
        names = {f.name for f in dataclasses.fields(self)} - {"dtype"}
        changes: dict[str, float | None] = {}
        for key, raw in overrides.items():
            if key not in names:
                raise UsageError(f"unknown gate {key!r}; known: {', '.join(sorted(names))}")
            if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("off", "none")):
                if key in ("greedy_tie_margin", "hidden_rel_tol"):
                    raise UsageError(f"{key} cannot be turned off; give a number (0 is strictest)")
                changes[key] = None
                continue
            try:
                value = float(raw)
            except ValueError:
                raise UsageError(f"gate {key}={raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise UsageError(f"gate {key}={raw!r} must be a finite number >= 0")
            changes[key] = value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GateResult:
    """One gate's outcome. ``detail`` is the failure line's text after the gate family (``"parity: "``)."""

    name: str  # e.g. "parity.max_abs_diff"; the part before the dot names the check in failure lines
    passed: bool
    value: float | bool | str | None
    threshold: float | bool | str | None
    detail: str

    @property
    def line(self) -> str:
        return f"{self.name.split('.')[0]}: {self.detail}"


@dataclass
class VerificationReport:
    """Everything ``verify_model`` measured. ``passed`` only when there are gates and every one passed."""

    model: dict[str, Any]
    checkpoint: dict[str, Any]
    gates: list[GateResult]
    settings: dict[str, Any]
    parity: dict[str, Any]
    perplexity: dict[str, Any]
    generation: dict[str, Any]
    hygiene: dict[str, Any]
    versions: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(g.passed for g in self.gates)

    @property
    def failures(self) -> list[str]:
        """One line per failed gate, naming the check, the figure, the threshold and where it went wrong."""
        return [g.line for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "passed": self.passed,
            "failures": self.failures,
            "model": self.model,
            "checkpoint": self.checkpoint,
            "gates": [dataclasses.asdict(g) for g in self.gates],
            "settings": self.settings,
            "parity": self.parity,
            "perplexity": self.perplexity,
            "generation": self.generation,
            "hygiene": self.hygiene,
            "versions": self.versions,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerificationReport:
        """Read back what ``to_dict`` wrote (``passed`` and ``failures`` are recomputed from the gates)."""
        if data.get("schema_version") != SCHEMA_VERSION:
            raise UsageError(f"unsupported verification schema_version {data.get('schema_version')!r}")
        return cls(
            model=data["model"],
            checkpoint=data["checkpoint"],
            gates=[GateResult(**g) for g in data["gates"]],
            settings=data["settings"],
            parity=data["parity"],
            perplexity=data["perplexity"],
            generation=data["generation"],
            hygiene=data["hygiene"],
            versions=data["versions"],
            timings=data.get("timings", {}),
        )

    def to_json(self) -> str:
        return json.dumps(_json_safe(self.to_dict()), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def write(self, path: Path) -> Path:
        """Write ``verification.json`` to ``path`` and the Markdown beside it (``<stem>.md``), atomically."""
        path = Path(path)
        write_text_atomic(path, self.to_json())
        write_text_atomic(path.with_suffix(".md"), self.markdown())
        return path

    def markdown(self) -> str:
        """The summary rendered from ``templates/verification.md.j2``."""
        return render_markdown(self.to_dict())


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a broken candidate's figures) as the strings "nan", "inf", "-inf": JSON has no such
    numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_report(path: Path) -> dict[str, Any]:
    """Load a ``verification.json`` as plain data (what the card and publish steps consume)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read verification report {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise UsageError(f"{path} is not a verification report of schema_version {SCHEMA_VERSION}")
    return data


def _md_cell(value: Any) -> str:
    """Text that is safe inside a Markdown table cell: one line, pipes escaped, backticks neutralised."""
    text = str(value).replace("\r", "").replace("\n", "⏎").replace("|", "\\|").replace("`", "ˋ")
    return text


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e-2 and abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.2e}"
    return str(value)


def render_markdown(data: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # Markdown, not HTML; untrusted text goes through the md_cell filter
    )
    env.filters["md_cell"] = _md_cell
    env.filters["fmt"] = _fmt
    return env.get_template(TEMPLATE).render(report=data)


def _load_template(name: str) -> str:
    from importlib import resources

    return resources.files("release.templates").joinpath(name).read_text(encoding="utf-8")
