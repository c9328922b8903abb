"""Verify that a converted model behaves like the trained one, loaded the way users load it.

``verify_model`` compares a model folder (or a Hub revision) with the training module built from the original
checkpoint: logits parity with per-layer localisation, perplexity on an evaluation text, greedy generation
token for token (single prompts, a padded batch), seeded sampling, ``pipeline("text-generation")``,
remote-code hygiene, and the card's code run verbatim in a fresh process (``release.verify.snippet``). The two
models are never in memory together, and each does only what the comparison needs: the candidate runs first (its
parity logits spilled to disk, its perplexity, every generation), then the reference compares its logits, scores
the same tokens and checks the candidate's greedy continuations by teacher forcing (one forward per prompt). The
text's first window is parity's full-context row as well, so each side runs it once for both; per-layer hidden
states are computed only when parity failed. The result is a ``VerificationReport`` (``verification.json`` + a
Markdown summary). Both halves run on one device (``device``: the CPU by default, a GPU, or layers spread by
accelerate), which the report names.

``check_generation_against_report`` repeats the generation check on a published revision without the
checkpoint (the expected tokens are in the report): the gate that runs after an upload and before a tag is
created. ``generate_text`` is the quick look a person takes at a folder or a Hub revision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import gc
import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from release.convert.tokenizer import resolve_training_tokenizer
from release.errors import ReleaseError, TokenizerError, UsageError
from release.settings import DEFAULT_PROMPTS
from release.verify.report import (
    CheckpointSection,
    GateResult,
    Gates,
    GenerationCase,
    GenerationSection,
    ModelSection,
    ParitySection,
    PerplexitySection,
    VerificationReport,
    parity_gates,
    parity_within,
    perplexity_gate,
    perplexity_relative_diff,
)
from release.verify.snippet import card_snippet_gate

__all__ = ["check_generation_against_report", "default_report_path", "generate_text", "verify_model"]

log = logging.getLogger(__name__)

DEFAULT_PERPLEXITY_TOKENS = 2048  # scored by each model; the report records the number
SAMPLING = {"seed": 0, "temperature": 0.8, "top_k": 40}
# Files a published revision may hold beyond the verified ones (fnmatch patterns): never loaded by users'
# code.
ALLOWED_EXTRA_FILES = ("README.md", ".gitattributes")


def default_report_path(model: str | Path) -> Path:
    """The report beside a folder (``dist/<version>/verification.json``); ``./verification.json`` for a repo id."""
    from release.verify.report import REPORT_FILE, report_path

    path = Path(model)
    return report_path(path.resolve()) if path.is_dir() else Path(REPORT_FILE)


def verify_model(
    model: Path | str,
    *,
    checkpoint: Path,
    revision: str | None = None,
    prompts: Sequence[str] | None = None,
    eval_text: Path | None = None,
    gates: Gates | Mapping[str, Any] | None = None,
    max_new_tokens: int = 32,
    perplexity_tokens: int = DEFAULT_PERPLEXITY_TOKENS,
    report_path: Path | None = None,
    tokenizer: str | Path | None = None,
    settings_tokenizer: str | None = None,
    card_snippet: bool = True,
    checkpoint_sha256: str | None = None,
    device: str = "cpu",
) -> VerificationReport:
    """Check a converted model against the training checkpoint it came from; never raises for a failed gate.

    Args:
        model: A converted model folder, or a Hub repo id (then ``revision`` selects the revision; it is
            downloaded into a temporary cache with ``$HF_TOKEN``).
        checkpoint: The training checkpoint the model was converted from (the reference).
        revision: Branch, tag or commit of a Hub repo id.
        prompts: Generation prompts (default ``DEFAULT_PROMPTS``); also parity inputs once tokenized.
        eval_text: Text for the perplexity gate (default: the public-domain text shipped in ``release/data``).
        gates: Thresholds (default: ``Gates.for_dtype`` of the loaded model's dtype). A mapping instead of a
            ``Gates`` overrides some of those defaults, e.g. ``{"max_abs_diff": "2e-4"}``
            (``Gates.with_overrides``).
        max_new_tokens: Tokens generated per prompt; prompt + max_new_tokens must fit in the context.
        perplexity_tokens: Tokens of ``eval_text`` scored by each model (its first ones; all of them when the
            text is shorter). The report records the number scored.
        report_path: Where to write ``verification.json`` (and the ``.md`` beside it); nothing is written if
            None.
        tokenizer: The tokenizer the model was trained with (folder or Hub id), used on the reference side, so
            a model folder shipping another tokenizer fails the perplexity gate. None: the one ``release.json``
            records, else ``settings_tokenizer``, else GPT-2's (``release.convert.resolve_training_tokenizer``);
            the report says which (``settings.training_tokenizer_from``).
        settings_tokenizer: The configured tokenizer ([tool.release] tokenizer), used after release.json's.
        card_snippet: Also run the card's code verbatim in a fresh process (``release.verify.snippet``): the
            ``card_snippet`` gate.
        checkpoint_sha256: The SHA-256 the report names, when the caller has it: ``release run`` passes the
            original checkpoint's, of which ``checkpoint`` is the weights-only file. None: hash ``checkpoint``.
        device: Where both models run: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``
            (``release.verify.loading.resolve_device``). The candidate keeps the dtype it loads as (its gates are
            that dtype's); the training module computes in float32. The report's ``model.device`` names it.

    Returns:
        The report; ``report.passed`` tells whether every gate passed, ``report.failures`` which did not.

    Raises:
        UsageError: Bad prompts, a prompt that does not fit the context with ``max_new_tokens``, a missing
            text, ``perplexity_tokens`` below 1, an unknown or absent device.
        CheckpointError, ConversionError: The checkpoint cannot serve as the reference (found before either
            model is loaded).
        TokenizerError: The training tokenizer cannot be loaded.
        VerificationError: A Hub revision cannot be downloaded.
    """
    from release._io import hash_folder
    from release.checkpoint import background_digest, open_checkpoint, reference_config
    from release.demo import demo_text_path
    from release.verify.checks import (
        Spill,
        eval_windows,
        heap_without_retention,
        logits_budget,
        make_parity_inputs,
        perplexity_ids,
        return_freed_memory,
    )
    from release.verify.hygiene import check_remote_code_hygiene
    from release.verify.loading import candidate_source, library_versions, resolve_device

    started = time.perf_counter()
    timings: dict[str, float] = {}
    prompts = _check_prompts(prompts)
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if perplexity_tokens < 1:
        raise UsageError(f"perplexity_tokens must be at least 1, got {perplexity_tokens}")
    text_path = Path(eval_text) if eval_text is not None else demo_text_path()
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the evaluation text {text_path}: {exc}") from exc
    if gates is not None and not isinstance(gates, Gates):
        # Unknown names and bad values fail now, not after a model has run.
        Gates().with_overrides(dict(gates))

    with contextlib.ExitStack() as stack:
        stack.enter_context(heap_without_retention())
        # The report names the checkpoint's SHA-256: hashed while the models run (13 GB at 1B).
        digest = stack.enter_context(background_digest(Path(checkpoint), checkpoint_sha256))
        source = stack.enter_context(candidate_source(model, revision))
        t = time.perf_counter()
        hygiene = check_remote_code_hygiene(source.folder)
        files = hash_folder(source.folder)
        timings["hygiene"] = time.perf_counter() - t

        # ---- before either model is loaded: the checkpoint is one of this model, the prompts fit
        t = time.perf_counter()
        ckpt = open_checkpoint(Path(checkpoint))
        ref_config = reference_config(ckpt)
        # The float32 training module's weights (the causal-mask buffers are not weights).
        weights_bytes = 4 * sum(
            math.prod(shape) for key, shape in ckpt.shapes.items() if not key.endswith(".tril")
        )
        checkpoint_info = {
            "path": str(Path(checkpoint).resolve()),
            "architecture": dataclasses.asdict(ref_config),
        }
        ckpt.close()
        del ckpt
        placement = resolve_device(device, weights_bytes=weights_bytes)
        training = resolve_training_tokenizer(
            source.folder, explicit=tokenizer, configured=settings_tokenizer
        )
        log.info("training tokenizer: %s", training.describe())
        ref_tokenizer = _load_training_tokenizer(training.name, training.revision)
        timings["preflight"] = time.perf_counter() - t
        block_size, vocab_size = ref_config.block_size, ref_config.vocab_size
        budget = logits_budget(weights_bytes)
        # Whole-context windows: their logits are made by position chunks within the budget, like parity's.
        window = block_size
        ref_prompt_ids = [_encode(ref_tokenizer, p) for p in prompts]
        _check_fits(prompts, ref_prompt_ids, max_new_tokens, block_size)
        eval_ids = perplexity_ids(_encode(ref_tokenizer, text), window=window, tokens=perplexity_tokens)
        first_window = next(iter(eval_windows(eval_ids, window)), None)
        plan = _Plan(
            source=source,
            checkpoint=Path(checkpoint),
            device=placement,
            spill=stack.enter_context(Spill()),
            prompts=tuple(prompts),
            ref_prompt_ids=tuple(ref_prompt_ids),
            eos_token_id=ref_tokenizer.eos_token_id,
            text=text,
            eval_ids=eval_ids,
            perplexity_tokens=perplexity_tokens,
            inputs=tuple(make_parity_inputs(vocab_size, block_size, prompts, ref_prompt_ids, first_window)),
            n_hidden=ref_config.n_layer + 1,
            width=ref_config.n_embd,
            vocab_size=vocab_size,
            max_new_tokens=max_new_tokens,
            budget=budget,
            window=window,
            timings=timings,
        )
        snippet = None
        if card_snippet:  # its child runs meanwhile; judged once the greedy runs are verified
            snippet = stack.enter_context(
                card_snippet_gate(
                    source.folder, prompt=prompts[0], max_new_tokens=max_new_tokens, commit=source.commit
                )
            )
        candidate = _candidate_half(plan)
        used_gates = _gates_for(gates, candidate.dtype)
        reference = None
        if candidate.load_error is None:
            return_freed_memory()
            reference = _reference_half(plan, candidate, used_gates)
            return_freed_memory()
            if reference.parity is not None and not parity_within(reference.parity, used_gates):
                reference = _locate(plan, reference, used_gates)
        snippet_gate = None
        if snippet is not None and candidate.load_error is None:
            t = time.perf_counter()
            snippet_gate = snippet(_case_dicts(plan, candidate, reference))
            timings["card_snippet"] = time.perf_counter() - t  # the wait beyond the two halves
        t = time.perf_counter()
        checkpoint_info["sha256"] = digest()
        timings["checkpoint_sha256"] = time.perf_counter() - t  # what the hash took beyond the models' time

    report = VerificationReport(
        model=ModelSection.from_dict(
            {
                **source.describe(),
                "dtype": candidate.dtype,
                "class": candidate.model_class,
                "device": placement.describe(),
                "files": files,
            },
            "model",
        ),
        checkpoint=CheckpointSection.from_dict(checkpoint_info, "checkpoint"),
        gates=[
            _hygiene_gate(hygiene.problems),
            *gate_results(plan, candidate, reference, used_gates),
            *([snippet_gate] if snippet_gate else []),
        ],
        settings={
            "gates": used_gates.to_dict(),
            "prompts": prompts,
            "max_new_tokens": max_new_tokens,
            "perplexity_tokens": perplexity_tokens,
            "training_tokenizer": training.name,
            "training_tokenizer_from": training.origin,
            "eval_text": str(text_path),
            "sampling": dict(SAMPLING),
            "logits_budget_bytes": budget,
            "shared_causal_masks": reference.shared_masks if reference else 0,
            "greedy_check": GREEDY_CHECK,
        },
        parity=_parity_section(plan, reference),
        perplexity=PerplexitySection.from_dict(
            {
                "text": text_path.name,
                "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "requested_tokens": perplexity_tokens,
                **_perplexity_figures(candidate, reference),
                "window": window,
                "method": f"non-overlapping windows of {window} tokens; a window's first token is not scored",
            },
            "perplexity",
        ),
        generation=_generation_section(plan, candidate, reference, used_gates),
        hygiene=hygiene.to_dict(),
        versions=library_versions(),
        timings=timings,
    )
    report.timings["total"] = time.perf_counter() - started
    if report_path is not None:
        report.write(Path(report_path))
    return report


GREEDY_CHECK = (
    "the candidate's greedy continuations (generate() with its cache) are checked against the reference by "
    "teacher forcing: one forward over prompt + continuation; equal iff every argmax is the next token"
)


# --------------------------------------------------------------------------- the two halves
#
# One model resident at a time. 1. The candidate, loaded fresh as users load it: its parity logits (spilled),
# its perplexity, greedy decoding of every prompt, the padded batch, seeded sampling and the pipeline
# (``CandidateFigures``). 2. It is freed; the reference is loaded: parity against the spilled logits, its
# perplexity on the same number of tokens, the candidate's greedy continuations checked by teacher forcing
# (``ReferenceFigures``). 3. Only when parity failed: the reference's hidden states are spilled, the reference
# is freed and the candidate loaded again to find the first layer whose hidden state diverges (``_locate``).
# ``gate_results`` then turns the figures into gates.


@dataclass(frozen=True)
class _Plan:
    """What both halves run on, fixed before either model is loaded."""

    source: Any  # loading.CandidateSource
    checkpoint: Path
    device: Any  # loading.Device
    spill: Any  # checks.Spill
    prompts: tuple[str, ...]
    ref_prompt_ids: tuple[list[int], ...]  # the prompts, tokenized by the training tokenizer
    eos_token_id: int | None
    text: str
    eval_ids: list[int]  # the text's tokens the reference scores
    perplexity_tokens: int
    inputs: tuple  # checks.ParityInput; a full first window of eval_ids among them is scored as well
    n_hidden: int
    width: int
    vocab_size: int
    max_new_tokens: int
    budget: int
    window: int
    timings: dict[str, float] = field(compare=False)  # filled in by both halves


@dataclass(frozen=True)
class CandidateCase:
    """One prompt's greedy continuation by the candidate."""

    prompt: str
    input_ids: list[int]  # the prompt, tokenized by the shipped tokenizer ([] where that raised)
    run: Any = None  # checks.GreedyRun; None where generate() raised
    error: str | None = None
    text: str = ""


@dataclass(frozen=True)
class CandidateFigures:
    """What the candidate computed. With ``load_error`` nothing else was measured."""

    load_error: str | None = None
    dtype: str | None = None
    model_class: str | None = None
    parity_error: str | None = None  # its forward on the parity inputs raised
    nll: tuple[float, int] | None = None  # summed NLL of the text, and its scored tokens
    perplexity_error: str | None = None
    cases: tuple[CandidateCase, ...] = ()
    padded_batch: dict[str, Any] = field(default_factory=dict)  # how many prompts, whether any was padded
    padded_rows: tuple[list[int], ...] = ()  # each prompt's continuation in the padded batch, to its eos
    padded_error: str | None = None
    sampling: dict[str, Any] | None = None
    sampling_problem: str | None = None
    pipeline: dict[str, Any] | None = None
    pipeline_problem: str | None = None
    serving: tuple = ()  # serving.ServingFigures of the modes this transformers has (static cache, batching)


@dataclass(frozen=True)
class ReferenceFigures:
    """What the training module computed against the candidate's figures."""

    nll: tuple[float, int]
    parity: Any = None  # checks.ParityFigures; None where either model's forward raised
    parity_error: str | None = None  # the reference's forward raised
    checks: tuple = ()  # per prompt: checks.TeacherForced, or None where the candidate's generate() raised
    shared_masks: int = 0


@contextlib.contextmanager
def _timing(plan: _Plan, name: str):
    t = time.perf_counter()
    try:
        yield
    finally:
        plan.timings[name] = plan.timings.get(name, 0.0) + time.perf_counter() - t


def _gates_for(requested: Gates | Mapping[str, Any] | None, dtype: str | None) -> Gates:
    if isinstance(requested, Gates):
        return requested
    if dtype is None:  # nothing loaded, nothing judged against thresholds
        return Gates()
    return Gates.for_dtype(dtype).with_overrides(dict(requested or {}))


def _load_candidate(plan: _Plan):
    from release.verify import loading

    with _timing(plan, "candidate_load"):
        return loading.load_candidate(plan.source, plan.device)


def _candidate_half(plan: _Plan) -> CandidateFigures:
    from release.verify import checks
    from release.verify.loading import fresh_remote_code_modules

    with fresh_remote_code_modules():
        with _Finding("from_pretrained(trust_remote_code=True)") as found:
            model, tokenizer = _load_candidate(plan)
        if found.error is not None:
            return CandidateFigures(load_error=found.error)
        try:
            forward = {"budget": plan.budget, "vocab_size": plan.vocab_size, "width": plan.width}
            scored = checks.Scores()
            with _timing(plan, "candidate_parity"), _Finding("forward on the parity inputs") as parity:
                checks.candidate_logits(model, plan.inputs, plan.spill, scores=scored, **forward)
            nll = None
            with _timing(plan, "candidate_perplexity"), _Finding("scoring the text") as scoring:
                # The candidate scores its own tokenizer's ids; where its first window is the reference's, the
                # parity pass has scored it.
                ids = checks.perplexity_ids(
                    _encode(tokenizer, plan.text), window=plan.window, tokens=plan.perplexity_tokens
                )
                rest, scores = _rest_of_text(plan, ids, scored if parity.error is None else None)
                checks.candidate_logits(model, rest, plan.spill, scores=scores, **forward)
                nll = scores.figures()
            with _timing(plan, "candidate_generation"):
                generation = _candidate_generation(plan, model, tokenizer)
            return CandidateFigures(
                dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                model_class=f"{type(model).__module__}.{type(model).__name__}",
                parity_error=parity.error,
                nll=None if scoring.error else nll,
                perplexity_error=scoring.error,
                **generation,
            )
        finally:
            del model, tokenizer
            gc.collect()


def _reference_half(plan: _Plan, candidate: CandidateFigures, gates: Gates) -> ReferenceFigures:
    from release.checkpoint import load_reference_model
    from release.verify import checks

    with _timing(plan, "reference_load"):
        model, ckpt = load_reference_model(plan.checkpoint)
        shared_masks = checks.share_causal_masks(model, ckpt, device=plan.device.name)
        model = plan.device.place(model)
    try:
        parity, parity_error = None, None
        scored = checks.Scores()
        if candidate.parity_error is None:
            with _timing(plan, "reference_parity"):
                with _Finding("the reference's forward on the parity inputs") as found:
                    parity = checks.compare_logits(
                        model, plan.inputs, plan.spill, budget=plan.budget, scores=scored
                    )
            parity_error = found.error
        with _timing(plan, "reference_perplexity"):
            rest, scores = _rest_of_text(plan, plan.eval_ids, scored if parity is not None else None)
            checks.compare_logits(model, rest, plan.spill, budget=plan.budget, scores=scores)
            nll = scores.figures()
        with _timing(plan, "reference_greedy"):
            verdicts = tuple(
                None
                if case.run is None
                else checks.teacher_forced_greedy(
                    model,
                    ref_ids,
                    case.run.ids,
                    max_new_tokens=plan.max_new_tokens,
                    eos_token_id=plan.eos_token_id,
                    tie_margin=gates.greedy_tie_margin,
                    budget=plan.budget,
                )
                for case, ref_ids in zip(candidate.cases, plan.ref_prompt_ids, strict=True)
            )
        if parity is not None and not parity_within(parity, gates):
            with _timing(plan, "reference_hidden_states"):
                checks.spill_reference_hidden_states(model, plan.inputs, plan.spill, budget=plan.budget)
        return ReferenceFigures(
            nll=nll, parity=parity, parity_error=parity_error, checks=verdicts, shared_masks=shared_masks
        )
    finally:
        del model
        ckpt.close()
        del ckpt


def _rest_of_text(plan: _Plan, ids: list[int], scored) -> tuple[list, Any]:
    """The perplexity windows of ``ids`` still to run, and the ``checks.Scores`` to add them to: ``scored`` (what
    the parity pass scored, None where it failed) without the first window where that was it."""
    from release.verify import checks

    windows = checks.eval_windows(ids, plan.window)
    first = next((inp.ids[0].tolist() for inp in plan.inputs if inp.scored), None)
    shared = scored is not None and windows[:1] == [first]
    return checks.text_inputs(windows[shared:]), scored if shared else checks.Scores()


def _locate(plan: _Plan, reference: ReferenceFigures, gates: Gates) -> ReferenceFigures:
    """The candidate loaded again, its hidden states against the reference's spilled ones."""
    from release.verify import checks
    from release.verify.loading import fresh_remote_code_modules

    located = dataclasses.replace(reference.parity, located=True)
    with _timing(plan, "locate"), fresh_remote_code_modules():
        try:
            model, _tokenizer = _load_candidate(plan)
            try:
                located = checks.locate_divergence(
                    model,
                    plan.inputs,
                    plan.spill,
                    reference.parity,
                    n_hidden=plan.n_hidden,
                    width=plan.width,
                    hidden_rel_tol=gates.hidden_rel_tol,
                    budget=plan.budget,
                )
            finally:
                del model, _tokenizer
                gc.collect()
        except Exception:  # it loaded and ran once already; locating is a refinement of a failure
            log.debug("locating the divergence failed", exc_info=True)
    return dataclasses.replace(reference, parity=located)


def _candidate_generation(plan: _Plan, model, tokenizer) -> dict[str, Any]:
    """The generation fields of ``CandidateFigures``: greedy, the padded batch, sampling, the pipeline."""
    from release.verify import checks

    eos = checks.normalize_eos(model.generation_config.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(sorted(eos)), None)
    cases = tuple(_greedy(plan, model, tokenizer, prompt, pad) for prompt in plan.prompts)
    return {
        "cases": cases,
        **_padded_batch(plan, model, tokenizer, pad, eos, cases),
        **_sampling(plan, model, tokenizer, pad, eos),
        **_pipeline(plan, model, tokenizer, cases[0]),
        "serving": _serving(
            model,
            [case for case in cases if case.input_ids and case.run is not None],
            new_tokens=min(SERVING_NEW_TOKENS, plan.max_new_tokens),
        ),
    }


SERVING_NEW_TOKENS = (
    16  # per prompt and mode: enough to cross several decode steps of a paged or static cache
)


def _serving(model, cases: list[CandidateCase], *, new_tokens: int) -> tuple:
    """The static cache and continuous batching against the greedy runs just made, where this transformers has
    them. A mode that raises is a failed figure, not an absent one: it exists on this version and broke.
    """
    from release.verify.serving import ServingFigures, check_continuous_batching, check_static_cache

    prompts = [case.input_ids for case in cases]
    expected = [case.run.ids[:new_tokens] for case in cases]  # greedy: a longer run starts the same
    figures = []
    for mode, check in (
        ("static_cache", check_static_cache),
        ("continuous_batching", check_continuous_batching),
    ):
        with _Finding(f"{mode}: generate()") as found:
            result = check(model, prompts, new_tokens=new_tokens, expected=expected)
        if found.error is not None:
            result = ServingFigures(mode, True, found.error, len(prompts), new_tokens, [False], [0])
        if result.available:
            figures.append(result)
    return tuple(figures)


def _greedy(plan: _Plan, model, tokenizer, prompt: str, pad) -> CandidateCase:
    from release.verify import checks

    ids, run = [], None
    with _Finding(f"{prompt!r}: generate()") as found:
        ids = _encode(tokenizer, prompt)
        run = checks.candidate_greedy(model, ids, max_new_tokens=plan.max_new_tokens, pad_token_id=pad)
    text = tokenizer.decode(run.ids, skip_special_tokens=True) if run else ""
    return CandidateCase(prompt, ids, run, found.error, text)


def _padded_batch(plan: _Plan, model, tokenizer, pad, eos, cases) -> dict[str, Any]:
    from release.verify import checks

    info: dict[str, Any] = {"prompts": len(plan.prompts)}
    with _Finding("generate() on the padded batch") as found:
        if any(c.run is None for c in cases):
            raise RuntimeError("single-prompt generation failed, nothing to compare with")
        info["padded"], rows = checks.candidate_padded_batch(
            model, tokenizer, plan.prompts, max_new_tokens=plan.max_new_tokens, pad_token_id=pad, eos=eos
        )
        return {"padded_batch": info, "padded_rows": tuple(rows)}
    return {"padded_batch": info, "padded_error": found.error}


def _sampling(plan: _Plan, model, tokenizer, pad, eos) -> dict[str, Any]:
    from release.verify import checks

    prompt = plan.prompts[0]
    info: dict[str, Any] = {**SAMPLING, "prompt": prompt, "tokens": 0, "stopped": None, "text": ""}
    problem = None
    with _Finding("generate(do_sample=True)") as found:
        cont = checks.candidate_sampling(
            model,
            _encode(tokenizer, prompt),
            **SAMPLING,
            max_new_tokens=plan.max_new_tokens,
            pad_token_id=pad,
        )
        info.update(tokens=len(cont), text=tokenizer.decode(cont, skip_special_tokens=True))
        first_eos = next((i for i, tok in enumerate(cont) if tok in eos), None)
        if first_eos is not None:
            info["stopped"] = "eos"
            if first_eos != len(cont) - 1:
                problem = f"{len(cont) - 1 - first_eos} tokens after eos at position {first_eos}"
        elif len(cont) == plan.max_new_tokens:
            info["stopped"] = "max_new_tokens"
        else:
            problem = f"stopped after {len(cont)} of {plan.max_new_tokens} tokens without eos"
    return {"sampling": info, "sampling_problem": found.error or problem}


def _pipeline(plan: _Plan, model, tokenizer, first: CandidateCase) -> dict[str, Any]:
    from transformers import pipeline

    info: dict[str, Any] = {"prompt": first.prompt}
    problem = None
    with _Finding('pipeline("text-generation")') as found:
        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
        out = pipe(first.prompt, max_new_tokens=plan.max_new_tokens, do_sample=False, return_full_text=False)
        got = out[0]["generated_text"]
        info["text"] = got
        if first.run is not None and got != first.text:
            problem = f"pipeline text {got[:60]!r} differs from generate()'s {first.text[:60]!r}"
    return {"pipeline": info, "pipeline_problem": found.error or problem}


# --------------------------------------------------------------------------- figures -> gates and sections


def gate_results(
    plan: _Plan, candidate: CandidateFigures, reference: ReferenceFigures | None, gates: Gates
) -> list[GateResult]:
    """Every gate of the two halves' figures against ``gates``, in the order of ``GATES`` (hygiene and the
    card snippet aside). The logits and perplexity thresholds are applied by ``report.parity_gates`` and
    ``report.perplexity_gate``."""
    if candidate.load_error is not None or reference is None:
        return [GateResult("load", False, None, None, candidate.load_error)]
    dtype = candidate.dtype
    where = _where(reference.parity)
    results = [
        GateResult("load", True, dtype, None, f"loaded {candidate.model_class.rsplit('.', 1)[-1]} as {dtype}")
    ]
    parity_error = candidate.parity_error or reference.parity_error
    if parity_error is not None:
        results.append(GateResult("parity.forward", False, None, None, parity_error))
    else:
        results += parity_gates(reference.parity, gates, where=where)
    if candidate.perplexity_error is not None:
        results.append(
            GateResult("perplexity", False, None, gates.max_perplexity_rel_diff, candidate.perplexity_error)
        )
    else:
        p = _perplexity_figures(candidate, reference)
        ppl = perplexity_gate(
            p["reference"],
            p["candidate"],
            gates,
            tokens=p["tokens"],
            candidate_tokens=p["candidate_tokens"],
            where=where,
        )
        results += [ppl] if ppl else []
    results.append(_greedy_gate(plan, candidate, reference, where))
    padded = _padded_problems(candidate, gates)
    results.append(
        GateResult(
            "generation.padded_batch",
            not padded,
            not padded,
            True,
            "a left-padded batch of all prompts equals the prompts one by one"
            if not padded
            else "padded batch differs from the prompts one by one: " + "; ".join(padded),
        )
    )
    info, problem = candidate.sampling, candidate.sampling_problem
    results.append(
        GateResult(
            "generation.sampling",
            problem is None,
            info["stopped"],
            "eos or max_new_tokens",
            f"seeded sampling stopped at {info['stopped']} after {info['tokens']} tokens"
            if problem is None
            else f"seeded sampling: {problem}",
        )
    )
    problem = candidate.pipeline_problem
    detail = 'pipeline("text-generation") gives generate()\'s greedy text' if problem is None else problem
    results.append(GateResult("generation.pipeline", problem is None, problem is None, True, detail))
    for figures in candidate.serving:
        failures = [figures.reason] if figures.reason else figures.failures()
        detail = (
            f"{figures.prompts} prompts x {figures.new_tokens} new tokens equal generate()'s"
            if not failures
            else "; ".join(failures)
        )
        results.append(GateResult(f"serving.{figures.mode}", not failures, not failures, True, detail))
    return results


def _where(parity) -> str:
    location = parity.location() if parity is not None and parity.located else None
    if location is None:
        return ""
    if location.startswith("layer "):
        return f" (first divergent layer: {location.removeprefix('layer ')})"
    return f" (first divergence: {location})"


def _greedy_gate(
    plan: _Plan, candidate: CandidateFigures, reference: ReferenceFigures, where: str
) -> GateResult:
    problems, ok_count = [], 0
    for case, check, ref_ids in zip(candidate.cases, reference.checks, plan.ref_prompt_ids, strict=True):
        if case.error is not None:
            problems.append(case.error)
        elif case.input_ids != list(ref_ids):
            problems.append(
                f"{case.prompt!r}: the shipped tokenizer gives {case.input_ids}, the training tokenizer "
                f"{list(ref_ids)}"
            )
        elif check.divergence.match or check.divergence.tolerated:
            ok_count += 1
        else:
            problems.append(f"{case.prompt!r}: {check.divergence.describe(len(case.run.ids))}")
    n = len(candidate.cases)
    detail = (
        f"{ok_count}/{n} greedy continuations equal the reference's"
        if not problems
        else f"{n - ok_count} of {n} greedy continuations differ from the reference: " + "; ".join(problems)
    )
    return GateResult(
        "generation.greedy", not problems, ok_count / n, 1.0, detail + (where if problems else "")
    )


def _padded_problems(candidate: CandidateFigures, gates: Gates) -> list[str]:
    """Where the padded batch's continuations part from the single prompts' (beyond a near tie)."""
    from release.verify import checks

    if candidate.padded_error is not None:
        return [candidate.padded_error]
    problems = []
    for case, row in zip(candidate.cases, candidate.padded_rows, strict=True):
        div = checks.compare_greedy(case.run, row, tie_margin=gates.greedy_tie_margin)
        if not (div.match or div.tolerated):
            problems.append(f"{case.prompt!r}: {div.describe(len(case.run.ids))}")
    return problems


def _perplexity_figures(candidate: CandidateFigures, reference: ReferenceFigures | None) -> dict[str, Any]:
    from release.verify.checks import perplexity

    figures: dict[str, Any] = dict.fromkeys(
        ("tokens", "reference", "candidate", "candidate_tokens", "relative_diff")
    )
    if reference is None:
        return figures
    ref_ppl = perplexity(*reference.nll)
    figures.update(tokens=reference.nll[1], reference=ref_ppl)
    if candidate.nll is not None:
        ppl = perplexity(*candidate.nll)
        figures.update(
            candidate=ppl,
            candidate_tokens=candidate.nll[1],
            relative_diff=perplexity_relative_diff(ref_ppl, ppl),
        )
    return figures


def _parity_section(plan: _Plan, reference: ReferenceFigures | None) -> ParitySection:
    inputs = [i.describe() for i in plan.inputs]
    fig = reference.parity if reference is not None else None
    if fig is None:
        return ParitySection(inputs=inputs)
    located = {}
    if fig.located:
        located = {
            "first_divergent_layer": fig.first_divergent_layer,
            "divergence_location": fig.location(),
            "per_layer_max_abs_diff": fig.per_layer_max_abs_diff,
            "per_layer_relative_diff": fig.per_layer_rel_diff,
            "hidden_states": "index 0: embeddings; index i: output of layer i-1",
        }
    return ParitySection(
        max_abs_diff=fig.max_abs_diff,
        mean_abs_diff=fig.mean_abs_diff,
        top1_agreement=fig.top1_agreement,
        kl_divergence=fig.kl_divergence,
        positions=fig.positions,
        inputs=inputs,
        **located,
    )


def _case_dicts(
    plan: _Plan, candidate: CandidateFigures, reference: ReferenceFigures | None
) -> list[dict[str, Any]]:
    """Each prompt's case as the report writes it: the candidate's tokens, and the reference's verdict."""
    if candidate.load_error is not None:
        return []
    checks = reference.checks if reference is not None else (None,) * len(candidate.cases)
    cases = []
    for case, check, ref_ids in zip(candidate.cases, checks, plan.ref_prompt_ids, strict=True):
        d: dict[str, Any] = {
            "prompt": case.prompt,
            "input_ids": case.input_ids,
            "candidate_ids": case.run.ids if case.run else [],
            "text": case.text,
            "match": False,
            "diverged_at": None,
            "tolerated": False,
        }
        if check is not None:
            div = check.divergence
            d.update(
                reference_ids=check.reference_ids,
                match=div.match,
                diverged_at=div.index,
                tolerated=div.tolerated,
            )
            if div.margin is not None:
                d["logit_margin"] = div.margin
            if case.input_ids != list(ref_ids):
                d["reference_input_ids"] = list(ref_ids)
        cases.append(d)
    return cases


def _generation_section(
    plan: _Plan, candidate: CandidateFigures, reference: ReferenceFigures | None, gates: Gates
) -> GenerationSection:
    generation: dict[str, Any] = {
        "max_new_tokens": plan.max_new_tokens,
        "eos_token_id": plan.eos_token_id,
        "cases": _case_dicts(plan, candidate, reference),
        "padded_batch_match": False,
        "sampling": candidate.sampling,
        "pipeline_ok": False,
    }
    if candidate.load_error is None:
        padded = _padded_problems(candidate, gates)
        generation.update(
            padded_batch_match=not padded,
            padded_batch={**candidate.padded_batch, "problems": padded},
            pipeline_ok=candidate.pipeline_problem is None,
            pipeline=candidate.pipeline,
        )
    return GenerationSection.from_dict(generation, "generation")


# --------------------------------------------------------------------------- post-upload check


def check_generation_against_report(
    model: str | Path,
    *,
    revision: str | None,
    report: VerificationReport | Mapping[str, Any],
    allowed_extra_files: Sequence[str] = ALLOWED_EXTRA_FILES,
) -> list[str]:
    """Greedy-generate every case of a passing report again from ``model`` and compare token for token.

    ``model`` is a folder or a Hub repo id (``revision``: the commit or tag to check), e.g. the snapshot of a
    staged commit. A Hub revision is downloaded into a fresh temporary cache, and the remote code is imported
    from a fresh modules cache, so what is checked is what a user gets. The files must be those the report
    verified (same SHA-256; extra files only from ``allowed_extra_files``), each prompt must tokenize to the
    recorded ``input_ids``, and ``generate()`` must give the recorded ``candidate_ids`` (which the reference
    confirmed for a passing report).

    ``report`` is a ``VerificationReport`` or the parsed ``verification.json``.

    Returns:
        One line per problem; empty when everything matches.
    """
    from release._io import hash_folder
    from release.errors import ReportError
    from release.verify.loading import candidate_source, fresh_remote_code_modules

    try:
        if not isinstance(report, VerificationReport):
            report = VerificationReport.from_dict(report)
        cases = _report_cases(report)
    except (ReportError, ValueError) as exc:
        return [f"report: not a usable verification report ({exc})"]
    if not report.verified:
        return ["report: the verification did not pass; there is nothing verified to compare with"]
    expected_files = report.model.files
    max_new_tokens = report.generation.max_new_tokens
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            source = stack.enter_context(candidate_source(model, revision))
        except ReleaseError as exc:
            return [f"model: {exc}"]
        files = hash_folder(source.folder)
        for rel, sha in sorted(expected_files.items()):
            if rel not in files:
                failures.append(f"files: {rel} was verified but is missing")
            elif files[rel] != sha:
                failures.append(f"files: {rel} differs from the verified file (sha256 {files[rel][:12]}…)")
        for rel in sorted(set(files) - set(expected_files)):
            if not any(fnmatch.fnmatchcase(rel, pattern) for pattern in allowed_extra_files):
                failures.append(f"files: {rel} was not part of the verified folder")
        with fresh_remote_code_modules():
            failures += _regenerate(source, cases, max_new_tokens)
    return failures


def _report_cases(report: VerificationReport) -> list[GenerationCase]:
    cases = report.generation.cases
    if not cases:
        raise ValueError("generation.cases is empty")
    for i, case in enumerate(cases):
        if case.candidate_ids is None:
            raise ValueError(f"generation.cases[{i}] has no candidate_ids")
        if case.input_ids is None:
            raise ValueError(f"generation.cases[{i}] has no input_ids")
    if not report.model.files:
        raise ValueError("model.files is missing or empty")
    return cases


def _regenerate(source, cases: list[GenerationCase], max_new_tokens: int) -> list[str]:
    from release.verify.checks import candidate_greedy
    from release.verify.loading import load_candidate

    try:
        model, tokenizer = load_candidate(source)
    except Exception as exc:
        log.debug("loading failed", exc_info=True)
        return [f"load: from_pretrained(trust_remote_code=True) {_exc(exc)}"]
    failures = []
    try:
        pad = tokenizer.pad_token_id
        if pad is None:
            from release.verify.checks import normalize_eos

            pad = next(iter(sorted(normalize_eos(model.generation_config.eos_token_id))), None)
        for case in cases:
            prompt = case.prompt
            try:
                ids = _encode(tokenizer, prompt)
                if ids != case.input_ids:
                    verified = case.input_ids
                    failures.append(
                        f"generation: {prompt!r} tokenizes to {ids}, the verified tokenizer gave {verified}"
                    )
                    continue
                got = candidate_greedy(model, ids, max_new_tokens=max_new_tokens, pad_token_id=pad).ids
            except Exception as exc:
                log.debug("generate failed", exc_info=True)
                failures.append(f"generation: {prompt!r}: generate() {_exc(exc)}")
                continue
            expected = [int(t) for t in case.candidate_ids]
            if got != expected:
                index = next(
                    (i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b),
                    min(len(expected), len(got)),
                )
                exp = expected[index] if index < len(expected) else "end"
                act = got[index] if index < len(got) else "end"
                failures.append(
                    f"generation: {prompt!r}: token {index} of {len(expected)} differs from the verified "
                    f"output (verified {exp}, got {act})"
                )
    finally:
        del model, tokenizer
        gc.collect()
    return failures


# --------------------------------------------------------------------------- quick look


def generate_text(
    model: str | Path,
    *,
    prompt: str,
    revision: str | None = None,
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Load ``model`` (folder or Hub repo id) the way users do and return ``prompt`` + its continuation.

    ``temperature`` 0 decodes greedily; above 0 it samples (with ``top_k`` if given), seeded by ``seed``.

    Raises:
        UsageError: An empty prompt, a bad setting, or prompt + max_new_tokens longer than the model's
            context.
        VerificationError: The model cannot be loaded or generation fails.
    """
    from release.errors import VerificationError
    from release.verify import checks
    from release.verify.loading import CandidateSource, fresh_remote_code_modules, is_repo_id, load_candidate

    if not prompt:
        raise UsageError("the prompt is empty")
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise UsageError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k must be at least 1, got {top_k}")
    path = Path(model)
    if path.is_dir():
        if revision is not None:
            raise UsageError("--revision applies to a Hub repo id, not to a local folder")
        source = CandidateSource(kind="folder", folder=path.resolve(), load_id=str(path.resolve()))
    elif is_repo_id(model):
        source = CandidateSource(
            kind="hub", folder=path, load_id=str(model), repo_id=str(model), revision=revision
        )
    else:
        raise UsageError(f"{model} is neither a model folder nor a Hub repo id (owner/name)")

    with fresh_remote_code_modules():
        try:
            lm, tokenizer = load_candidate(source)
        except Exception as exc:
            raise VerificationError(f"cannot load {model}: {_exc(exc)}") from exc
        try:
            ids = _encode(tokenizer, prompt)
            context = int(getattr(lm.config, "max_position_embeddings", 0) or 0)
            if context and len(ids) + max_new_tokens > context:
                raise UsageError(
                    f"the prompt is {len(ids)} tokens; with max_new_tokens={max_new_tokens} it exceeds "
                    f"the model's context of {context}; use --max-new-tokens "
                    f"{max(1, context - len(ids))} or less"
                )
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            new = checks.candidate_sampling(
                lm,
                ids,
                seed=seed,
                temperature=temperature,
                top_k=top_k,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
            return prompt + tokenizer.decode(new, skip_special_tokens=True)
        except ReleaseError:
            raise
        except Exception as exc:
            raise VerificationError(f"generation with {model} failed: {_exc(exc)}") from exc
        finally:
            del lm, tokenizer
            gc.collect()


# --------------------------------------------------------------------------- small pieces


def _check_prompts(prompts: Sequence[str] | None) -> list[str]:
    if prompts is None:
        return list(DEFAULT_PROMPTS)
    if isinstance(prompts, str):
        raise UsageError("prompts must be a list of strings, not one string")
    prompts = list(prompts)
    if not prompts:
        raise UsageError("give at least one prompt")
    empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if empty:
        raise UsageError(f"prompts must be non-empty text; prompt {empty[0] + 1} is empty")
    return prompts


def _check_fits(
    prompts: list[str], prompt_ids: list[list[int]], max_new_tokens: int, block_size: int
) -> None:
    for prompt, ids in zip(prompts, prompt_ids, strict=True):
        if not ids:
            raise UsageError(f"prompt {prompt!r} tokenizes to nothing")
        if len(ids) + max_new_tokens > block_size:
            room = block_size - len(ids)
            hint = f"lower --max-new-tokens to {room} or less" if room > 0 else "shorten the prompt"
            raise UsageError(
                f"prompt {prompt!r} is {len(ids)} tokens; with max_new_tokens={max_new_tokens} it does not "
                f"fit the model's context of {block_size} tokens: {hint}"
            )


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids the way users get them: ``tokenizer(text)`` (no truncation; long texts do not warn)."""
    return list(tokenizer(text, verbose=False)["input_ids"])


def _load_training_tokenizer(name: str, revision: str | None = None):
    from transformers import AutoTokenizer

    from release.auth import read_token

    try:
        return AutoTokenizer.from_pretrained(name, revision=revision, token=read_token())
    except Exception as exc:
        raise TokenizerError(f"cannot load the training tokenizer {name!r}: {_exc(exc)}") from exc


def _hygiene_gate(problems: list[str]) -> GateResult:
    if not problems:
        return GateResult(
            "hygiene", True, 0, 0, "auto_map resolves to shipped files; imports are self-contained"
        )
    return GateResult("hygiene", False, len(problems), 0, "; ".join(problems))


class _Finding:
    """A block whose exception is a finding about the candidate, not a crash of verify.

    ``error`` is then ``"<what> raised <Type>: <first line>"`` (None when the block ran through); only
    ``Exception`` is caught, so Ctrl-C still stops the run.
    """

    def __init__(self, what: str):
        self.what = what
        self.error: str | None = None

    def __enter__(self) -> _Finding:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if not isinstance(exc, Exception):
            return False
        log.debug("%s failed", self.what, exc_info=(kind, exc, tb))
        self.error = f"{self.what} {_exc(exc)}"
        return True


def _exc(exc: BaseException) -> str:
    from release._io import first_line

    message = first_line(exc, limit=300) if str(exc).strip() else ""
    return f"raised {type(exc).__name__}" + (f": {message}" if message else "")
