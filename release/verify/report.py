"""The verification report and its gates: thresholds per dtype, failure lines, verification.json, Markdown.

Pure Python (no torch), so the card, publish and compat steps read reports without paying for torch.
``verification.json`` (schema_version 1, sorted keys, indent 2) is checked field by field when read back
(``ReportError`` names the key); keys a reader does not know are kept and written back unchanged. Its figures
are deterministic on one machine; only ``timings`` vary, which is why the file is not uploaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from release._io import write_text_atomic
from release.errors import ReportError, UsageError

SCHEMA_VERSION = 1
TEMPLATE = "verification.md.j2"
REPORT_FILE = "verification.json"

_DTYPE_ALIASES = {
    alias: name
    for name, short in (("float32", ("fp32",)), ("bfloat16", ("bf16",)), ("float16", ("fp16", "half")))
    for alias in (name, f"torch.{name}", *short)
}

# ``Gates.for_dtype``'s defaults, as in ``Gates``' docstring table (float32's are also the field defaults).
_DTYPES = ("float32", "bfloat16", "float16")
_DEFAULTS: dict[str, tuple[float | None, float | None, float | None]] = {
    "max_abs_diff": (1e-4, None, None),
    "mean_abs_diff": (None, 6e-2, 1e-2),
    "min_top1_agreement": (1.0, 0.95, 0.99),
    "max_kl_divergence": (None, 1.5e-3, 5e-5),
    "max_perplexity_rel_diff": (1e-3, 1e-3, 1e-3),
    "greedy_tie_margin": (0.0, 0.25, 0.05),
    "hidden_rel_tol": (1e-4, 5e-2, 1e-2),
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
        column = _DTYPES.index(name)
        return cls(dtype=name, **{gate: row[column] for gate, row in _DEFAULTS.items()})

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


# --------------------------------------------------------------------------- the gate registry


@dataclass(frozen=True)
class GateSpec:
    """A gate ``verify_model`` can report: its name, what the card calls it, and where its threshold is set."""

    name: str  # e.g. "parity.max_abs_diff"; the part before the dot names the check in failure lines
    title: str
    threshold: str | None = None  # the ``Gates`` field holding the threshold; None for a pass/fail gate


# Every gate, in the order a report lists them.
GATES: tuple[GateSpec, ...] = (
    GateSpec("hygiene", "Remote code is self-contained"),
    GateSpec("load", "Loads with `trust_remote_code=True`"),
    GateSpec("parity.forward", "Forward pass runs"),
    GateSpec("parity.max_abs_diff", "Logits: max. abs. difference", "max_abs_diff"),
    GateSpec("parity.mean_abs_diff", "Logits: mean abs. difference", "mean_abs_diff"),
    GateSpec("parity.top1_agreement", "Logits: top-1 agreement", "min_top1_agreement"),
    GateSpec("parity.kl_divergence", "Logits: KL divergence", "max_kl_divergence"),
    GateSpec("perplexity", "Perplexity: relative difference", "max_perplexity_rel_diff"),
    GateSpec("generation.greedy", "Greedy generation matches", "greedy_tie_margin"),
    GateSpec("generation.padded_batch", "Left-padded batch matches", "greedy_tie_margin"),
    GateSpec("generation.sampling", "Seeded sampling stops cleanly"),
    GateSpec("generation.pipeline", "`text-generation` pipeline matches"),
    GateSpec("serving.static_cache", 'Static cache (`cache_implementation="static"`) matches'),
    GateSpec("serving.continuous_batching", "Continuous batching (`generate_batch`) matches"),
    GateSpec("card_snippet", "This card's code runs as written, without a prompt"),
)
GATE_REGISTRY: dict[str, GateSpec] = {g.name: g for g in GATES}


# --------------------------------------------------------------------------- judging figures against Gates

# The logits gates: (figure, gate name, label, ``Gates`` field, higher is better, value format).
_LOGIT_GATES = (
    ("max_abs_diff", "parity.max_abs_diff", "max abs diff", "max_abs_diff", False, "{:.1e}"),
    ("mean_abs_diff", "parity.mean_abs_diff", "mean abs diff", "mean_abs_diff", False, "{:.1e}"),
    ("top1_agreement", "parity.top1_agreement", "top-1 agreement", "min_top1_agreement", True, "{:.2%}"),
    ("kl_divergence", "parity.kl_divergence", "KL divergence", "max_kl_divergence", False, "{:.1e}"),
)


@dataclass(frozen=True)
class LogitFigures:
    """Logits of a candidate against the reference's: what the parity gates judge (None: not measured)."""

    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    top1_agreement: float | None = None
    kl_divergence: float | None = None


def parity_gates(figures: LogitFigures, gates: Gates, *, where: str = "") -> list[GateResult]:
    """One ``GateResult`` per logits gate that ``gates`` turns on and ``figures`` measured, in ``GATES``'
    order (verify's and compat's); ``where`` (e.g. `` (first divergent layer: 2)``) ends a failed gate's
    detail. A NaN fails every gate."""
    results = []
    for key, name, label, threshold_field, at_least, fmt in _LOGIT_GATES:
        value, threshold = getattr(figures, key), getattr(gates, threshold_field)
        if threshold is None or value is None:
            continue
        ok = value >= threshold if at_least else value <= threshold
        op = (">=" if ok else "<") if at_least else ("<=" if ok else ">")
        shown_threshold = fmt.format(threshold) if at_least else sci(threshold)
        detail = f"{label} {fmt.format(value)} {op} {shown_threshold}" + ("" if ok else where)
        results.append(GateResult(name, ok, value, threshold, detail))
    return results


def parity_within(figures: LogitFigures, gates: Gates) -> bool:
    """Whether every logits gate passes (then no layer is looked for)."""
    return all(g.passed for g in parity_gates(figures, gates))


def perplexity_gate(
    reference: float, candidate: float, gates: Gates, *, tokens: int, candidate_tokens: int, where: str = ""
) -> GateResult | None:
    """The perplexity gate on the two models' perplexities of one text; None when ``gates`` turn it off."""
    threshold = gates.max_perplexity_rel_diff
    if threshold is None:
        return None
    rel = perplexity_relative_diff(reference, candidate)
    ok = rel <= threshold
    detail = (
        f"relative diff {rel:.1e} {'<=' if ok else '>'} {sci(threshold)} "
        f"(reference {reference:.4g}, candidate {candidate:.4g}"
        + ("" if candidate_tokens == tokens else f"; {candidate_tokens} vs {tokens} tokens")
        + ")"
    )
    return GateResult("perplexity", ok, rel, threshold, detail + ("" if ok else where))


def perplexity_relative_diff(reference: float, candidate: float) -> float:
    """|candidate - reference| / reference; NaN where the reference's perplexity is not positive."""
    return abs(candidate - reference) / reference if reference > 0 else float("nan")


def sci(value: float) -> str:
    """A threshold as written: 1e-04, 1.5e-03."""
    short = f"{value:.0e}"
    return short if float(short) == value else f"{value:.1e}"


# --------------------------------------------------------------------------- reading typed sections

_NUMBER = (int, float)
_ANY = object()  # a field whose value is kept as JSON gives it (a gate's value and threshold)


@dataclass(frozen=True)
class _Spec:
    """How a field is read and written: JSON ``types``, a nested ``section`` class or a list of ``items``
    sections; the JSON ``key`` when not the field's name (``class``); ``omit_none``: None is left out."""

    types: Any = _ANY
    key: str | None = None
    nullable: bool = False
    section: Any = None
    items: Any = None
    omit_none: bool = False


def _spec(types=_ANY, *, default=MISSING, default_factory=MISSING, **spec):
    return field(default=default, default_factory=default_factory, metadata={"spec": _Spec(types, **spec)})


def _schema_fields(cls) -> list[tuple[dataclasses.Field, _Spec]]:
    return [(f, f.metadata["spec"]) for f in dataclasses.fields(cls) if "spec" in f.metadata]


def _check(value: Any, types, path: str) -> Any:
    if types is _ANY:
        return value
    # A broken candidate's figures are written as the strings "nan", "inf", "-inf" (JSON has no such numbers).
    if float in types and isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, bool) and bool not in types:
        raise ReportError(f"'{path}' must be {_type_names(types)}, found a boolean")
    if not isinstance(value, types):
        raise ReportError(f"'{path}' must be {_type_names(types)}, found {type(value).__name__}")
    return value


def _type_names(types) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", dict: "an object"}
    names[list] = "an array"
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


@dataclass
class _Section:
    """``from_dict``/``to_dict`` for a dataclass whose fields are declared with ``_spec``.

    Keys the class does not declare are kept in ``extra`` and written back, so a reader of one version of the
    schema never drops what a newer writer added.
    """

    extra: dict[str, Any] = field(default_factory=dict, repr=False, kw_only=True)

    @classmethod
    def from_dict(cls, data: Any, where: str = ""):
        if not isinstance(data, Mapping):
            raise ReportError(f"'{where or 'report'}' must be an object")
        values: dict[str, Any] = {}
        for f, spec in _schema_fields(cls):
            key = spec.key or f.name
            path = f"{where}.{key}" if where else key
            if key not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ReportError(f"missing key '{path}'")
                continue
            value = data[key]
            if value is None:
                if not spec.nullable:
                    raise ReportError(f"'{path}' is null")
            elif spec.section is not None:
                value = spec.section.from_dict(value, path)
            elif spec.items is not None:
                if not isinstance(value, list):
                    raise ReportError(f"'{path}' must be an array")
                value = [spec.items.from_dict(item, f"{path}[{i}]") for i, item in enumerate(value)]
            else:
                value = _check(value, spec.types, path)
            values[f.name] = value
        known = {spec.key or f.name for f, spec in _schema_fields(cls)}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f, spec in _schema_fields(self):
            value = getattr(self, f.name)
            if spec.omit_none and value is None:
                continue
            if isinstance(value, _Section):
                value = value.to_dict()
            elif isinstance(value, list) and value and isinstance(value[0], _Section):
                value = [v.to_dict() for v in value]
            out[spec.key or f.name] = value
        return out


def _optional(types=_ANY, **kw):
    """A field a report may leave out (older reports, failed ones); None when it does, and not written then."""
    return _spec(types, nullable=True, default=None, omit_none=True, **kw)


# --------------------------------------------------------------------------- the sections


@dataclass
class GateResult(_Section):
    """One gate's outcome. ``detail`` is the failure line's text after the gate family (``"parity: "``)."""

    name: str = _spec((str,))  # a name of GATES; the part before the dot names the check in failure lines
    passed: bool = _spec((bool,))
    value: float | bool | str | None = _spec(nullable=True, default=None)
    threshold: float | bool | str | None = _spec(nullable=True, default=None)
    detail: str = _spec((str,), default="")

    @property
    def line(self) -> str:
        return f"{self.name.split('.')[0]}: {self.detail}"

    @property
    def title(self) -> str:
        """What the card calls this gate; a gate the registry does not know shows its own name."""
        return GATE_REGISTRY[self.name].title if self.name in GATE_REGISTRY else self.name


@dataclass
class ModelSection(_Section):
    """What was verified: a folder or a Hub revision, the dtype and class it loaded as, every file's sha256."""

    source: str = _spec((str,))  # "folder" | "hub"
    dtype: str | None = _spec((str,), nullable=True)  # None when the candidate did not load
    # Where both models computed the evidence: "cpu", "cuda:0", or "cuda (device_map=auto)" where accelerate
    # spread their layers over the GPUs (and the CPU).
    device: str | None = _optional((str,))
    model_class: str | None = _spec((str,), key="class", nullable=True, default=None)
    files: dict[str, str] = _spec((dict,), default_factory=dict)  # relative path -> sha256
    path: str | None = _optional((str,))  # a folder
    repo_id: str | None = _optional((str,))  # a Hub revision
    revision: str | None = _optional((str,))  # written for a Hub revision even when null (default branch)
    commit: str | None = _optional((str,))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.source == "hub":  # the revision is null for a Hub repo's default branch
            out.setdefault("revision", self.revision)
        return out


@dataclass
class CheckpointSection(_Section):
    """The reference: the training checkpoint's path, sha256 and architecture."""

    sha256: str = _spec((str,))
    path: str | None = _optional((str,))
    architecture: dict[str, Any] | None = _optional((dict,))


@dataclass
class ParitySection(_Section):
    """Logits of the candidate against the float32 training module; ``None`` figures were not measured."""

    max_abs_diff: float | None = _spec(_NUMBER, nullable=True, default=None)
    mean_abs_diff: float | None = _spec(_NUMBER, nullable=True, default=None)
    top1_agreement: float | None = _spec(_NUMBER, nullable=True, default=None)
    kl_divergence: float | None = _spec(_NUMBER, nullable=True, default=None)
    positions: int | None = _spec((int,), nullable=True, default=None)
    first_divergent_layer: int | None = _spec((int,), nullable=True, default=None)
    divergence_location: str | None = _spec((str,), nullable=True, default=None)
    per_layer_max_abs_diff: list[float] | None = _spec((list,), nullable=True, default=None)
    per_layer_relative_diff: list[float] | None = _spec((list,), nullable=True, default=None)
    hidden_states: str | None = _optional((str,))  # what per_layer_*'s indices are, when measured
    inputs: list[dict[str, Any]] = _spec((list,), default_factory=list)


@dataclass
class PerplexitySection(_Section):
    """Perplexity of each model on the same evaluation text (its first ``tokens`` tokens)."""

    text: str = _spec((str,))
    text_sha256: str = _spec((str,))
    tokens: int | None = _spec((int,), nullable=True)  # scored by the reference
    reference: float | None = _spec(_NUMBER, nullable=True)
    candidate: float | None = _spec(_NUMBER, nullable=True)
    relative_diff: float | None = _spec(_NUMBER, nullable=True)
    candidate_tokens: int | None = _spec((int,), nullable=True, default=None)
    requested_tokens: int | None = _optional((int,))
    window: int | None = _optional((int,))
    method: str | None = _optional((str,))


@dataclass
class GenerationCase(_Section):
    """One prompt's greedy continuation: the candidate's tokens and the reference's verdict on them."""

    prompt: str = _spec((str,))
    text: str = _spec((str,))  # the candidate's continuation, decoded
    match: bool = _spec((bool,))
    tolerated: bool = _spec((bool,), default=False)  # parted from the reference at a near tie only
    input_ids: list[int] | None = _optional((list,))  # the prompt, tokenized by the shipped tokenizer
    candidate_ids: list[int] | None = _optional((list,))  # generate()'s tokens (what publish checks again)
    # The reference's greedy tokens as far as teacher forcing determines them: equal to candidate_ids when they
    # match, else up to and including the first differing one.
    reference_ids: list[int] | None = _optional((list,))
    diverged_at: int | None = _spec((int,), nullable=True, default=None)
    reference_input_ids: list[int] | None = _optional((list,))  # when the training tokenizer differs
    logit_margin: float | None = _optional(_NUMBER)  # the reference's logit gap at diverged_at


@dataclass
class SamplingSection(_Section):
    """The seeded sampling run (its settings and how it stopped)."""

    text: str = _spec((str,))
    prompt: str | None = _optional((str,))
    seed: int | None = _optional((int,))
    temperature: float | None = _optional(_NUMBER)
    top_k: int | None = _optional((int,))
    tokens: int | None = _optional((int,))
    stopped: str | None = _spec((str,), nullable=True, default=None)


@dataclass
class GenerationSection(_Section):
    max_new_tokens: int = _spec((int,))
    cases: list[GenerationCase] = _spec(items=GenerationCase, default_factory=list)
    eos_token_id: int | None = _spec((int,), nullable=True, default=None)
    padded_batch_match: bool = _spec((bool,), default=False)
    padded_batch: dict[str, Any] | None = _optional((dict,))
    sampling: SamplingSection | None = _spec(section=SamplingSection, nullable=True, default=None)
    pipeline_ok: bool = _spec((bool,), default=False)
    pipeline: dict[str, Any] | None = _optional((dict,))


@dataclass
class CompatVersion(_Section):
    """One transformers version of the compatibility matrix. ``stage`` is the first stage that failed."""

    transformers: str = _spec((str,))
    passed: bool = _spec((bool,))
    stage: str | None = _spec((str,), nullable=True, default=None)
    max_abs_diff: float | None = _spec(_NUMBER, nullable=True, default=None)
    top1_agreement: float | None = _spec(_NUMBER, nullable=True, default=None)
    generation_match: bool = _spec((bool,), default=False)
    detail: str = _spec((str,), default="")
    environment: dict[str, str] = _spec((dict,), default_factory=dict)  # libraries the child ran with
    cost: dict[str, float] = _spec((dict,), default_factory=dict)  # seconds and disk; varies run to run


@dataclass
class CompatSection(_Section):
    """``release compat``'s outcome on a folder: one row per transformers version, oldest first."""

    range: str = _spec((str,))  # the supported range the versions were drawn from
    versions: list[CompatVersion] = _spec(items=CompatVersion)
    reference: str = _spec((str,), default="the training module")  # where the reference tokens came from
    statement: str | None = _spec((str,), nullable=True, default=None)  # the card's "tested on ..." line
    failures: list[str] = _spec((list,), default_factory=list)  # one line per version and failed gate

    @property
    def passed(self) -> bool:
        return bool(self.versions) and all(v.passed for v in self.versions) and not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "passed": self.passed}


@dataclass
class VerificationReport(_Section):
    """Everything ``verify_model`` measured. ``passed`` only when there are gates and every one passed.

    A report read back (``from_dict``) also keeps what the file says in ``recorded_passed`` and
    ``recorded_failures``; a reader trusts the report only when both agree that it passed (``verified``).
    """

    model: ModelSection = _spec(section=ModelSection)
    checkpoint: CheckpointSection = _spec(section=CheckpointSection)
    gates: list[GateResult] = _spec(items=GateResult)
    parity: ParitySection = _spec(section=ParitySection)
    perplexity: PerplexitySection = _spec(section=PerplexitySection)
    generation: GenerationSection = _spec(section=GenerationSection)
    settings: dict[str, Any] = _spec((dict,), default_factory=dict)
    hygiene: dict[str, Any] = _spec((dict,), default_factory=dict)
    versions: dict[str, str] = _spec((dict,), default_factory=dict)
    timings: dict[str, float] = _spec((dict,), default_factory=dict)
    compat: CompatSection | None = _optional(section=CompatSection)  # added by ``release compat``
    recorded_passed: bool | None = field(default=None, repr=False, compare=False)
    recorded_failures: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(g.passed for g in self.gates)

    @property
    def verified(self) -> bool:
        """The one meaning of "passed" every step uses: passed by its gates and, for a report read back, by what
        the file records. (A failed compatibility row does not unverify the model: the card names the version.)"""
        return self.passed and self.recorded_passed is not False and not self.recorded_failures

    def with_compat(self, compat: Mapping[str, Any]) -> VerificationReport:
        """This report with ``release compat``'s table (``CompatReport.to_dict()``) as its ``compat`` section."""
        return dataclasses.replace(self, compat=CompatSection.from_dict(compat, "compat"))

    @property
    def failures(self) -> list[str]:
        """One line per failed gate, naming the check, the figure, the threshold and where it went wrong."""
        return [g.line for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(schema_version=SCHEMA_VERSION, passed=self.passed, failures=self.failures)
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> VerificationReport:
        """Read back what ``to_dict`` wrote, checking every field it declares.

        Raises:
            ReportError: Another schema_version, a missing key or a value of the wrong type (the message
                names the key, e.g. ``'generation.cases[0].prompt' must be a string``).
        """
        if not isinstance(data, Mapping):
            raise ReportError("a verification report must be a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ReportError(
                f"unsupported schema_version {data.get('schema_version')!r} (this release tool reads "
                f"{SCHEMA_VERSION})"
            )
        body = {k: v for k, v in data.items() if k not in ("schema_version", "passed", "failures")}
        report = super().from_dict(body, where)
        passed = data.get("passed")
        if passed is not None and not isinstance(passed, bool):
            raise ReportError("'passed' must be a boolean")
        failures = data.get("failures")
        if failures is not None and not (
            isinstance(failures, list) and all(isinstance(f, str) for f in failures)
        ):
            raise ReportError("'failures' must be an array of strings")
        report.recorded_passed, report.recorded_failures = passed, failures
        return report

    def write(self, path: Path) -> Path:
        """Write ``verification.json`` to ``path`` and the Markdown beside it (``<stem>.md``), atomically."""
        path = Path(path)
        text = json.dumps(_json_safe(self.to_dict()), indent=2, sort_keys=True, allow_nan=False) + "\n"
        write_text_atomic(path, text)
        write_text_atomic(path.with_suffix(".md"), self.markdown())
        return path

    def markdown(self) -> str:
        """The summary rendered from ``templates/verification.md.j2``."""
        from release.render import make_environment

        # The card's environment with this summary's own cell and number formats.
        env = make_environment()[0].overlay(cache_size=0)
        env.filters.update(md_cell=_md_cell, fmt=_fmt)
        return env.get_template(TEMPLATE).render(report=self.to_dict())


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a broken candidate's figures) as "nan", "inf", "-inf": JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_report(path: Path) -> VerificationReport:
    """Load and check a ``verification.json`` (what the card, publish and compat steps consume).

    Raises:
        ReportError: The file cannot be read, is not JSON, or is not a report of this schema (the message
            names the file and the key).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read verification report {path}: {exc}") from exc
    try:
        return VerificationReport.from_dict(data)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from None


def _md_cell(value: Any) -> str:
    """Text that is safe inside a Markdown table cell: one line, pipes escaped, backticks neutralised."""
    return str(value).replace("\r", "").replace("\n", "⏎").replace("|", "\\|").replace("`", "ˋ")


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


def report_path(model_dir: Path) -> Path:
    """Where a model folder's report lives: beside the folder, never inside it (its timings vary, so it is not
    uploaded): ``dist/<version>/model`` -> ``dist/<version>/verification.json``."""
    return Path(model_dir).parent / REPORT_FILE
