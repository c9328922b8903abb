"""The compatibility matrix: prove a converted folder works on every transformers version we support.

Remote-code models break silently when transformers changes, so ``run_compat_matrix`` runs ``child.py`` in
each version's own uv environment (offline, this repo refused) and judges its figures here
(``judge_child_result``) against the reference: the tokens a passing ``verification.json`` recorded, else the
training module's greedy ones, plus the training module's logits when the checkpoint is given. Stages, the
first failing one naming the result: ``load`` (clean weights, the declared dtype, the recorded token ids),
``logits`` (teacher forcing on the recorded tokens; with the checkpoint, the float32 gates against the
training module with its weights rounded to the folder's dtype: precision loss is verify's subject),
``generation`` (greedy, alone and in a left-padded batch), ``serving`` and ``snippet`` (the card's code).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from release._io import attrs_dict
from release.compat.child import RESULT_MARK, STAGE_MARK
from release.compat.environments import (
    Environment,
    default_cache_dir,
    environment_disk,
    python_tag,
    torch_version,
)
from release.compat.environments import ensure_environment as ensure_environment_at
from release.errors import CompatError, SettingsError, UsageError
from release.settings import DEFAULT_PROMPTS, PROJECT, project_pyproject, read_toml
from release.verify.loading import resolve_device
from release.verify.report import Gates, LogitFigures, parity_gates
from release.verify.snippet import child_environment
from release.verify.without_repo import child_command

if TYPE_CHECKING:
    import torch

STAGES = ("load", "logits", "generation", "serving", "snippet")
STAMP = ".compat-environment.json"  # written last: its presence marks a complete environment
DEFAULT_MAX_NEW_TOKENS = 8
PARITY_SHAPE = (2, 16)  # (batch, tokens) of the seeded random input the logits are compared on
PARITY_SEED = 0
CHILD_TIMEOUT = 900.0  # seconds for one version's load + checks

_EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_EXACT_OR_PRE = re.compile(r"^\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?$")
_OPERATOR_ORDER = {"===": 0, "==": 0, "~=": 1, ">=": 2, ">": 2, "!=": 3, "<=": 4, "<": 4}


# --------------------------------------------------------------------------- the supported range and the list


def _transformers_range(requirements: Sequence[str], source: str) -> str:
    """The transformers requirement's range, lower bounds first (``>=4.46,<6``) whatever packaging's order."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise SettingsError(f"{source}: invalid requirement {text!r}: {exc}") from exc
        if canonicalize_name(req.name) == "transformers" and (
            req.marker is None or "extra" not in str(req.marker)
        ):
            if not req.specifier:
                raise SettingsError(
                    f"{source}: the transformers requirement {text!r} declares no version range"
                )
            parts = sorted(req.specifier, key=lambda s: (_OPERATOR_ORDER.get(s.operator, 5), s.version))
            return ",".join(str(s) for s in parts)
    raise SettingsError(f"{source}: no transformers requirement among the project's dependencies")


def supported_range(pyproject: Path | None = None) -> str:
    """The transformers range the published model code supports, e.g. ``">=4.46,<6"``.

    Read from ``[project].dependencies`` of ``pyproject`` (default: this project's pyproject.toml when the source
    tree is at hand), else from the installed package's metadata, so it works from a wheel install too.

    Raises:
        SettingsError: No transformers requirement, or one without a version range.
    """
    path = pyproject or project_pyproject()
    if path is not None:
        return _transformers_range(read_toml(path).get("project", {}).get("dependencies", []), str(path))
    try:
        requires = metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError:
        raise SettingsError(f"cannot find {PROJECT}'s pyproject.toml or installed metadata") from None
    return _transformers_range(requires, f"{PROJECT} metadata")


def check_versions(
    versions: Sequence[str], *, range_spec: str, source: str, canary: bool = False
) -> list[str]:
    """Validate a version list against the supported range; returns it sorted, oldest first.

    Every entry must be an exact release (``4.57.6``, not ``4.57`` or ``4.57.x``) inside ``range_spec``. With
    ``canary`` (what users may install next) pre-releases (``5.25.0rc1``) and versions past the range pass too.

    Raises:
        UsageError: An entry is not an exact version, is outside the range, or is listed twice; or the list is empty.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if not versions:
        raise UsageError(f"{source}: no transformers versions to test")
    spec = SpecifierSet(range_spec)
    problems = []
    for v in versions:
        if not (_EXACT_VERSION if not canary else _EXACT_OR_PRE).match(v):
            problems.append(f"{v!r} is not an exact release version like 4.46.3")
        elif not canary and Version(v) not in spec:
            problems.append(f"{v} is outside the supported range {range_spec}")
    dupes = sorted({v for v in versions if list(versions).count(v) > 1})
    problems += [f"{v} is listed twice" for v in dupes]
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
    return sorted(versions, key=Version)


def parse_versions(text: str) -> list[str]:
    """``"4.46.3, 5.0.0"`` -> ``["4.46.3", "5.0.0"]`` (validated and sorted).

    Raises:
        UsageError: See ``check_versions``.
    """
    items = [v.strip() for v in text.split(",") if v.strip()]
    return check_versions(items, range_spec=supported_range(), source="--versions")


def default_versions(pyproject: Path | None = None) -> list[str]:
    """The matrix of ``[tool.release.compat] transformers`` in pyproject.toml, validated, oldest first.

    The list must lie inside ``supported_range`` and include a release of the range's oldest line (e.g. a 4.46.x
    for ``>=4.46``): a matrix that skips the lower bound does not prove it.

    Raises:
        SettingsError: No pyproject.toml with that table, or a list that does not fit the supported range.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    path = pyproject or project_pyproject()
    if path is None:
        raise SettingsError(
            f"cannot find {PROJECT}'s pyproject.toml for [tool.release.compat]; pass --versions "
            "(or set RELEASE_COMPAT_VERSIONS)"
        )
    table = read_toml(path).get("tool", {}).get("release", {}).get("compat", {})
    listed = table.get("transformers")
    source = f"{path} [tool.release.compat] transformers"
    if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
        raise SettingsError(f"{source} must be a list of version strings")
    range_spec = supported_range(path)
    try:
        versions = check_versions(listed, range_spec=range_spec, source=source)
    except UsageError as exc:
        raise SettingsError(str(exc)) from None
    lower = [s.version for s in SpecifierSet(range_spec) if s.operator in (">=", "~=", "==")]
    for bound in lower:
        series = Version(bound).release[:2]
        if not any(Version(v).release[:2] == series for v in versions):
            raise SettingsError(
                f"{source} does not test the oldest supported line {'.'.join(map(str, series))}.x of {range_spec}"
            )
    return versions


# --------------------------------------------------------------------------- reference outputs


@dataclass(frozen=True)
class ReferenceOutputs:
    """What each version is checked against, as token ids (no tokenizer needed): the tokens of a passing
    ``verification.json`` (``reference_from_report``) or of the training module's greedy decoding, and the
    training module's logits when its checkpoint is given.
    """

    input_ids: torch.Tensor | None  # (B, T) int64, seeded random tokens; None without a checkpoint
    logits: torch.Tensor | None  # (B, T, V) float32; None without a checkpoint
    prompt_texts: tuple[str, ...]
    prompt_ids: tuple[tuple[int, ...], ...]  # the main environment's tokenizer's ids of each prompt
    greedy_ids: tuple[tuple[int, ...], ...]  # the new tokens only, per prompt
    max_new_tokens: int
    dtype: str  # the folder's dtype: the child checks it loads in it
    # True: the child upcasts to float32 before every stage (the tokens came from the training module with
    # weights rounded to ``dtype``). False: it runs in the folder's dtype like verify did (tokens from a report).
    upcast: bool = True
    source: str = "the training module"  # where the tokens came from, for the report
    tie_margin: float = 0.0  # teacher-forced argmax may part from a recorded token at a tie this close

    def save(self, folder: Path) -> None:
        """``reference.safetensors`` (tensors, if any) + ``reference.json`` (the rest), what ``child.py`` reads."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.logits is not None and self.input_ids is not None:
            from safetensors.torch import save_file

            save_file(
                {"input_ids": self.input_ids.contiguous(), "logits": self.logits.contiguous()},
                str(folder / "reference.safetensors"),
            )
        meta = attrs_dict(
            self, "prompt_texts", "prompt_ids", "greedy_ids", "max_new_tokens", "dtype", "upcast"
        )
        (folder / "reference.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def reference_from_report(report: dict[str, Any], *, source: str = "verification.json") -> ReferenceOutputs:
    """The reference tokens a passing ``verification.json`` recorded: no training module, no checkpoint.

    Each case's ``candidate_ids`` are what verify generated and proved equal to the training module's.

    Raises:
        CompatError: The report did not pass, or lacks the cases, ``max_new_tokens`` or the model's dtype.
    """
    if not isinstance(report, dict) or report.get("passed") is not True:
        raise CompatError(f"{source} did not pass verification; its tokens are no reference")
    try:
        generation = report["generation"]
        cases = list(generation["cases"])
        max_new_tokens = int(generation["max_new_tokens"])
        dtype = str(report["model"]["dtype"]).removeprefix("torch.")
        texts, prompts, greedy = [], [], []
        for case in cases:
            texts.append(str(case["prompt"]))
            prompts.append(tuple(int(t) for t in case["input_ids"]))
            greedy.append(tuple(int(t) for t in case["candidate_ids"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CompatError(f"{source} is not a usable verification report: missing or bad {exc}") from None
    if not cases:
        raise CompatError(f"{source} records no generation cases")
    try:
        margin = Gates.for_dtype(dtype).greedy_tie_margin
    except UsageError:
        raise CompatError(f"{source}: unknown model dtype {dtype!r}") from None
    return ReferenceOutputs(
        input_ids=None,
        logits=None,
        prompt_texts=tuple(texts),
        prompt_ids=tuple(prompts),
        greedy_ids=tuple(greedy),
        max_new_tokens=max_new_tokens,
        dtype=dtype,
        upcast=False,
        source=source,
        tie_margin=margin,
    )


def compute_reference_outputs(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    prompt_texts: Sequence[str],
    dtype: str = "float32",
    eos_token_id: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    recorded: ReferenceOutputs | None = None,
) -> ReferenceOutputs:
    """Logits on seeded random ids and greedy continuations from the training module (``GPTLanguageModel``).

    With a half ``dtype`` a copy's weights are rounded to it first (computed in float32: the child upcasts).
    With ``recorded`` only the logits are computed: verify already proved its tokens against this module.
    """
    import copy

    import torch

    if dtype != "float32":
        half = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        if half is None:
            raise UsageError(f"unknown model dtype {dtype!r}; expected float32, bfloat16 or float16")
        model = copy.deepcopy(model)
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.to(half).float()
    model = model.eval()
    block = model.config.block_size
    gen = torch.Generator().manual_seed(PARITY_SEED)
    batch, length = PARITY_SHAPE
    input_ids = torch.randint(0, model.config.vocab_size, (batch, min(length, block)), generator=gen)
    with torch.no_grad():
        logits, _ = model(input_ids)
    if recorded is not None:
        return dataclasses.replace(recorded, input_ids=input_ids, logits=logits.float())
    longest = max(len(p) for p in prompt_ids)
    max_new_tokens = min(max_new_tokens, block - longest)
    if max_new_tokens < 1:
        raise CompatError(
            f"the prompts ({longest} tokens) leave no room to generate within {block} positions"
        )
    greedy = []
    with torch.no_grad():
        for ids in prompt_ids:
            prompt = torch.tensor([list(ids)], dtype=torch.long)
            out = model.generate_greedy(prompt, max_new_tokens, eos_token_id=eos_token_id)
            greedy.append(tuple(out[0, prompt.shape[1] :].tolist()))
    return ReferenceOutputs(
        input_ids=input_ids,
        logits=logits.float(),
        prompt_texts=tuple(prompt_texts),
        prompt_ids=tuple(tuple(int(i) for i in p) for p in prompt_ids),
        greedy_ids=tuple(greedy),
        max_new_tokens=max_new_tokens,
        dtype=dtype,
    )


def reference_outputs(
    model_dir: Path,
    checkpoint: Path,
    *,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    recorded: ReferenceOutputs | None = None,
) -> ReferenceOutputs:
    """Reference outputs for ``model_dir`` from the training ``checkpoint`` it was converted from: the logits
    only with ``recorded`` (the tokens of ``verification.json``), else greedy on the folder-encoded prompts.

    Raises:
        CheckpointError, ConversionError: See ``release.checkpoint.load_reference_model``.
        CompatError: The folder's config or tokenizer cannot be read.
    """
    from release.checkpoint import load_reference_model

    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CompatError(
            f"{model_dir} is not a converted model folder: cannot read config.json ({exc})"
        ) from exc
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    if recorded is not None:
        prompt_ids, prompts, eos = recorded.prompt_ids, recorded.prompt_texts, None
    else:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for unusable folders
            raise CompatError(f"cannot load the tokenizer of {model_dir}: {_last_line(exc)}") from exc
        prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
        gen_path = model_dir / "generation_config.json"
        gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
        eos = gen.get("eos_token_id", config.get("eos_token_id"))
        if isinstance(eos, list):
            if len(eos) != 1:
                raise CompatError(
                    f"{model_dir}: several eos_token_id values {eos}; the reference decoder takes one"
                )
            eos = eos[0]
    model, ckpt = load_reference_model(Path(checkpoint))
    try:
        return compute_reference_outputs(
            model, prompt_ids, prompt_texts=prompts, dtype=dtype, eos_token_id=eos, recorded=recorded
        )
    finally:
        ckpt.close()


# --------------------------------------------------------------------------- isolated environments


def environment_dir(version: str, cache_dir: Path) -> Path:
    """``<cache>/transformers-X-py311-torch-2.13.0+cpu``: the environment holds that transformers and that torch."""
    return Path(cache_dir) / f"transformers-{version}-{python_tag()}-torch-{torch_version()}"


def ensure_environment(version: str, *, cache_dir: Path | None = None) -> tuple[Environment, bool]:
    """(environment, reused): ``transformers==version``, the dependencies it resolves as a user gets them, and
    the running torch; cached.

    Raises:
        CompatError: uv failed, or it installed another transformers or torch.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return ensure_environment_at(
        environment_dir(version, cache),
        [f"transformers=={version}"],
        cache_dir=cache,
        stamp=STAMP,
        stamp_fields={"transformers": version},
    )


# --------------------------------------------------------------------------- the child


CHILD = Path(__file__).with_name("child.py")  # started by path: the environment does not have this project


def _last_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[-1] if text else type(exc).__name__


@dataclass
class ChildOutcome:
    """What one child process left: its JSON result (None if it died first), the last stage it began, stderr."""

    result: dict[str, Any] | None
    last_stage: str
    returncode: int | None
    stderr: str


def run_child(
    model_dir: Path, reference_dir: Path, env: Environment, work_dir: Path, *, device: str = "cpu"
) -> ChildOutcome:
    """Run ``child.py`` in ``env``'s interpreter, this repo refused, a fresh HF_HOME below ``work_dir``, offline;
    the model on ``device`` (a torch device name: ``cpu`` or ``cuda:N``)."""
    hf_home = Path(tempfile.mkdtemp(prefix="hf-", dir=work_dir))
    cmd = child_command(env.python, CHILD, Path(model_dir).resolve(), reference_dir.resolve(), device)
    try:
        proc = subprocess.run(
            cmd,
            cwd=work_dir,
            env=child_environment(hf_home, {"TRANSFORMERS_VERBOSITY": "error"}),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = f"timed out after {CHILD_TIMEOUT:.0f}s"
        code = None
    result, last_stage = None, "load"
    for line in stdout.splitlines():
        if line.startswith(STAGE_MARK):
            last_stage = line[len(STAGE_MARK) :].strip()
        elif line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
    return ChildOutcome(result=result, last_stage=last_stage, returncode=code, stderr=stderr)


# --------------------------------------------------------------------------- judging


@dataclass
class VersionResult:
    """One transformers version's outcome. ``stage`` is the first stage that failed (None when all passed)."""

    transformers: str
    passed: bool
    stage: str | None
    max_abs_diff: float | None
    top1_agreement: float | None
    generation_match: bool
    detail: str
    failures: list[str] = field(default_factory=list)  # one line per failed gate, version included
    environment: dict[str, str] = field(default_factory=dict)  # library versions the child ran with
    # What the version cost (varies from run to run like verify's timings; the card never reads it).
    install_seconds: float = 0.0  # 0 when the cached environment was reused
    check_seconds: float = 0.0
    disk_bytes: int = 0  # the environment's files
    unique_disk_bytes: int = 0  # of which no other environment shares (hardlinks)

    def to_dict(self) -> dict[str, Any]:
        return {
            **attrs_dict(
                self,
                "transformers",
                "passed",
                "stage",
                "max_abs_diff",
                "top1_agreement",
                "generation_match",
                "detail",
            ),
            "environment": dict(sorted(self.environment.items())),
            "cost": {
                "install_seconds": round(self.install_seconds, 1),
                "check_seconds": round(self.check_seconds, 1),
                "disk_mb": round(self.disk_bytes / 2**20, 1),
                "unique_disk_mb": round(self.unique_disk_bytes / 2**20, 1),
            },
        }

    def summary_line(self) -> str:
        cost = (
            f"[install {self.install_seconds:.1f}s, check {self.check_seconds:.1f}s, "
            f"{self.disk_bytes / 2**20:.0f} MB, {self.unique_disk_bytes / 2**20:.0f} MB unshared]"
        )
        state = "passed" if self.passed else f"FAILED at {self.stage}"
        return f"transformers {self.transformers}: {state} ({self.detail}) {cost}"


def _compare_generation(
    got: Sequence[int], want: Sequence[int], prompt: str, where: str, pad: int | None = None
) -> str | None:
    """None when ``got`` continues ``prompt`` exactly like ``want``; else the failure text (steps count from 1).

    In a batch a row that met eos goes on with padding: the tokens after the reference's length must be ``pad``.
    """
    got = list(got)
    if pad is not None and len(got) > len(want) and all(t == pad for t in got[len(want) :]):
        got = got[: len(want)]
    if got == list(want):
        return None
    shorter = min(len(got), len(want))
    step = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), shorter) + 1
    if step > shorter:
        return (
            f"greedy generation stopped after {len(got)} tokens, the reference after {len(want)}, "
            f"for prompt {prompt!r}{where}"
        )
    return f"greedy tokens differ from the reference at step {step} for prompt {prompt!r}{where}"


def _compare_teacher_forced(
    forced: dict[str, list], want: Sequence[int], prompt: str, tie_margin: float
) -> str | None:
    """None when every teacher-forced argmax is the recorded next token (or a tie within ``tie_margin``:
    greedy parts ways there, so the rest is not compared); else the first differing step (from 1)."""
    for step, (got, gap, token) in enumerate(zip(forced["argmax"], forced["gap"], want, strict=False), 1):
        if got == token:
            continue
        if tie_margin > 0 and gap <= tie_margin:
            return None
        return (
            f"teacher-forced argmax differs from the recorded token at step {step} for prompt {prompt!r} "
            f"(argmax {got}, recorded {token}, {gap:.3g} below the maximum)"
        )
    if len(forced["argmax"]) != len(want):
        return (
            f"teacher-forced forward gave {len(forced['argmax'])} positions for {len(want)} recorded tokens"
        )
    return None


def judge_child_result(
    version: str, outcome: ChildOutcome, reference: ReferenceOutputs, gates: Gates | None = None
) -> VersionResult:
    """Apply the gates to one child's figures. Every failure line starts with ``transformers X: <stage>:``."""
    gates = gates or Gates.for_dtype("float32")
    res = outcome.result
    lines: list[tuple[str, str]] = []  # (stage, text)
    if res is None:
        tail = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
        how = f"exit code {outcome.returncode}" if outcome.returncode is not None else "no exit"
        lines.append(
            (outcome.last_stage, f"the check process died ({how}): {tail[-1] if tail else 'no output'}")
        )
        res = {}
    elif res.get("error"):
        lines.append((res["error_stage"], res["error"]))
    if res.get("tokenizer_error"):
        lines.append(("load", res["tokenizer_error"]))
    elif "tokenizer_ids" in res:
        rows = zip(reference.prompt_texts, res["tokenizer_ids"], reference.prompt_ids, strict=True)
        lines += [
            ("load", f"tokenizer encodes {text!r} as {got}, the main environment as {list(want)}")
            for text, got, want in rows
            if list(got) != list(want)
        ]
    max_diff, top1 = res.get("max_abs_diff"), res.get("top1_agreement")
    figures = LogitFigures(max_abs_diff=max_diff, top1_agreement=top1)
    lines += [("logits", gate.detail) for gate in parity_gates(figures, gates) if not gate.passed]
    if "teacher_forced" in res:
        rows = zip(reference.prompt_texts, res["teacher_forced"], reference.greedy_ids, strict=True)
        problems = [
            _compare_teacher_forced(row, want, text, reference.tie_margin) for text, row, want in rows
        ]
        lines += [("logits", problem) for problem in problems if problem]
    generation_match = False
    if "generated" in res:
        runs = (("generated", "", None), ("generated_batch", " in a left-padded batch", res["pad_token_id"]))
        gen_lines = [
            _compare_generation(got, want, text, where, pad)
            for key, where, pad in runs
            for text, got, want in zip(reference.prompt_texts, res[key], reference.greedy_ids, strict=True)
        ]
        gen_lines = [g for g in gen_lines if g]
        lines += [("generation", g) for g in gen_lines]
        generation_match = not gen_lines
    if res.get("serving_error"):
        lines.append(("serving", res["serving_error"]))
    for figures in res.get("serving", []):  # a mode this version lacks is not judged
        if figures["available"]:
            from release.verify.serving import ServingFigures

            lines += [("serving", line) for line in ServingFigures(**figures).failures()]
    if res.get("snippet_error"):
        lines.append(("snippet", res["snippet_error"]))
    lines.sort(key=lambda item: STAGES.index(item[0]))  # stable: within a stage, the order found
    failures = [f"transformers {version}: {stage}: {text}" for stage, text in lines]
    if lines:
        detail = "; ".join(f"{stage}: {text}" for stage, text in lines)
    else:
        figures = f"max |diff| {max_diff:.2g}, top-1 {top1:.0%}, " if max_diff is not None else ""
        forced = ", teacher-forced too" if "teacher_forced" in res else ""
        served = [f["mode"].replace("_", " ") for f in res.get("serving", []) if f["available"]]
        detail = (
            f"{figures}greedy tokens match for {len(reference.prompt_ids)} prompts alone and in a left-padded "
            f"batch{forced}{''.join(f', {mode} too' for mode in served)} (reference: {reference.source})"
        )
    return VersionResult(
        transformers=version,
        passed=not lines,
        stage=lines[0][0] if lines else None,
        max_abs_diff=max_diff,
        top1_agreement=top1,
        generation_match=generation_match,
        detail=detail,
        failures=failures,
        environment=dict(res.get("versions", {})),
    )


# --------------------------------------------------------------------------- the matrix


def range_statement(versions: Sequence[str]) -> str | None:
    """``"transformers 4.46–5.24: 37 versions"``: the lines spanned by ``versions`` and how many they are."""
    from packaging.version import Version

    if not versions:
        return None
    low, high = min(map(Version, versions)), max(map(Version, versions))
    span = f"{low.major}.{low.minor}"
    if (high.major, high.minor) != (low.major, low.minor):
        span += f"–{high.major}.{high.minor}"
    count = len(versions)
    return f"transformers {span}: {count} version{'s' if count != 1 else ''}"


@dataclass
class CompatReport:
    """The matrix's outcome: one ``VersionResult`` per version, oldest first, and the supported range."""

    range: str
    results: list[VersionResult]
    reference: str = "the training module"  # where the reference tokens came from

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failures(self) -> list[str]:
        """One line per version and failed gate, e.g. ``transformers 4.46.3: generation: greedy tokens differ...``."""
        return [line for r in self.results for line in r.failures]

    @property
    def tested_versions(self) -> list[str]:
        """The versions that passed: what the card states as "tested with transformers X, Y, Z"."""
        return [r.transformers for r in self.results if r.passed]

    @property
    def statement(self) -> str | None:
        """The card's compact line, e.g. ``tested on transformers 4.46–5.24: 37 versions``."""
        text = range_statement(self.tested_versions)
        return f"tested on {text}" if text else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **attrs_dict(self, "range", "passed", "failures", "statement", "reference"),
            "versions": [r.to_dict() for r in self.results],
        }


# The card's usage code per version (release.compat.run.card_snippet_check): called with the version, its
# environment and the model folder; returns a failure line or None.
SnippetCheck = Callable[[str, Environment, Path], "str | None"]


def run_compat_matrix(
    model_dir: Path,
    *,
    checkpoint: Path | None = None,
    report: dict[str, Any] | None = None,
    reference: ReferenceOutputs | None = None,
    versions: Sequence[str] | None = None,
    canary: bool = False,
    cache_dir: Path | None = None,
    gates: Gates | None = None,
    snippet_check: SnippetCheck | None = None,
    on_result: Callable[[VersionResult], None] | None = None,
    device: str = "cpu",
) -> CompatReport:
    """Check a converted folder on each transformers version of the matrix, each in an isolated environment.

    Args:
        model_dir: The converted folder (``release convert``'s output, or a downloaded Hub revision).
        checkpoint: The training checkpoint it came from: the training module computes the logits once (and,
            without ``report``, the greedy tokens too).
        report: A passing ``verification.json``: its recorded tokens are the reference (no greedy decoding
            by the training module); with no checkpoint the logits stage is teacher-forced on them.
        reference: Precomputed reference outputs instead of ``checkpoint``/``report``.
        versions: Exact transformers versions; default ``default_versions()`` (pyproject.toml).
        canary: Accept pre-releases and versions past the supported range (what users may install next).
        cache_dir: Where environments are cached; default ``default_cache_dir()``.
        gates: Logit thresholds; default the float32 gates of ``release.verify.report.Gates``.
        snippet_check: Runs the card's usage code per version (``SnippetCheck``); stage ``snippet``.
        on_result: Called with each version's result as soon as it is known (progress output).
        device: Where each version's child runs the model: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``
            (``release.verify.loading.resolve_device``); it must fit one device (no spreading here).

    Returns:
        The report. A version that fails a gate does not raise: see ``CompatReport.passed`` and ``failures``.

    Raises:
        UsageError: None of ``checkpoint``, ``report``, ``reference``; a version outside the supported range;
            a device that is absent or too small for the model.
        SettingsError: The default list in pyproject.toml is missing or invalid.
        CompatError: The folder or report is unusable, or an environment cannot be installed.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CompatError(f"{model_dir} is not a converted model folder (no config.json)")
    placement = resolve_device(
        device, weights_bytes=sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    )
    if placement.spread:
        raise UsageError(
            f"device {device!r}: the model does not fit {placement.name}'s free memory, and each compatibility "
            "check runs it on one device; use --device cpu"
        )
    range_spec = supported_range()
    if versions is None:
        versions = default_versions()
    else:
        versions = check_versions(list(versions), range_spec=range_spec, source="versions", canary=canary)
    if reference is None:
        recorded = reference_from_report(report) if report is not None else None
        if checkpoint is not None:
            reference = reference_outputs(model_dir, Path(checkpoint), recorded=recorded)
        elif recorded is not None:
            reference = recorded
        else:
            raise UsageError(
                "the compatibility matrix needs verification.json's recorded tokens or the training checkpoint"
            )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    results = []
    with tempfile.TemporaryDirectory(prefix="release-compat-") as tmp:
        work = Path(tmp)
        reference.save(work / "reference")
        for version in versions:
            start = time.monotonic()
            env, cached = ensure_environment(version, cache_dir=cache)
            installed = time.monotonic()
            outcome = run_child(model_dir, work / "reference", env, work, device=placement.name)
            if snippet_check is not None and outcome.result is not None and not outcome.result.get("error"):
                problem = snippet_check(version, env, model_dir.resolve())
                if problem:
                    outcome.result["snippet_error"] = problem
            result = judge_child_result(version, outcome, reference, gates)
            done = time.monotonic()
            disk = environment_disk(env.root)
            result.install_seconds = 0.0 if cached else installed - start
            result.check_seconds = done - installed
            result.disk_bytes, result.unique_disk_bytes = disk.total_bytes, disk.unique_bytes
            results.append(result)
            if on_result is not None:
                on_result(result)
    return CompatReport(range=range_spec, results=results, reference=reference.source)
