"""Verify that a converted model behaves like the trained one, loaded the way users load it.

``verify_model`` compares a model folder (or a Hub revision) with the training module built from the original
checkpoint: logits parity with per-layer localisation, perplexity on an evaluation text, greedy generation
token for token (single prompts, a padded batch), seeded sampling, ``pipeline("text-generation")``,
remote-code hygiene, and the card's code run verbatim in a fresh process (``release.verify.snippet``). The two models are never in memory together, and each does only what the comparison
needs: the candidate runs first (its parity logits spilled to disk, its perplexity, every generation), then
the reference compares its logits, scores the same tokens and checks the candidate's greedy continuations by
teacher forcing (one forward per prompt); per-layer hidden states are computed only when parity failed. The
result is a ``VerificationReport`` (``verification.json`` + a Markdown summary).

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
    read_report,
)
from release.verify.snippet import card_snippet_gate

__all__ = [
    "DEFAULT_PROMPTS",
    "Gates",
    "GateResult",
    "VerificationReport",
    "check_generation_against_report",
    "default_report_path",
    "generate_text",
    "read_report",
    "verify_model",
]

log = logging.getLogger(__name__)

DEFAULT_PERPLEXITY_TOKENS = 2048  # scored by each model; the report records the number
SAMPLING = {"seed": 0, "temperature": 0.8, "top_k": 40}
# Files a published revision may hold beyond the verified ones (fnmatch patterns): never loaded by users'
# code.
ALLOWED_EXTRA_FILES = ("README.md", ".gitattributes")


def default_report_path(model: str | Path) -> Path:
    """``<folder>/../verification.json`` for a folder (in ``dist/<version>/``); ``./verification.json`` for a
    repo id."""
    path = Path(model)
    if path.is_dir():
        return path.resolve().parent / "verification.json"
    return Path("verification.json")


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

    Returns:
        The report; ``report.passed`` tells whether every gate passed, ``report.failures`` which did not.

    Raises:
        UsageError: Bad prompts, a prompt that does not fit the context with ``max_new_tokens``, a missing
            text, ``perplexity_tokens`` below 1.
        CheckpointError, ConversionError: The checkpoint cannot serve as the reference (found before either
            model is loaded).
        TokenizerError: The training tokenizer cannot be loaded.
        VerificationError: A Hub revision cannot be downloaded.
    """
    from release.checkpoint import open_checkpoint, reference_config
    from release.demo import demo_text_path
    from release.verify.checks import (
        heap_without_retention,
        logits_budget,
        make_parity_inputs,
        perplexity_ids,
        perplexity_window,
    )
    from release.verify.hygiene import check_remote_code_hygiene
    from release.verify.loading import candidate_source, folder_file_hashes, library_versions

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
        source = stack.enter_context(candidate_source(model, revision))
        t = time.perf_counter()
        hygiene = check_remote_code_hygiene(source.folder)
        files = folder_file_hashes(source.folder)
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
            "sha256": checkpoint_sha256 or ckpt.sha256,
            "architecture": dataclasses.asdict(ref_config),
        }
        ckpt.close()
        del ckpt
        training = resolve_training_tokenizer(
            source.folder, explicit=tokenizer, configured=settings_tokenizer
        )
        log.info("training tokenizer: %s", training.describe())
        ref_tokenizer = _load_training_tokenizer(training.name, training.revision)
        timings["preflight"] = time.perf_counter() - t
        block_size, vocab_size = ref_config.block_size, ref_config.vocab_size
        budget = logits_budget(weights_bytes)
        window = perplexity_window(block_size, vocab_size, budget)
        ref_prompt_ids = [_encode(ref_tokenizer, p) for p in prompts]
        _check_fits(prompts, ref_prompt_ids, max_new_tokens, block_size)
        eval_ids = perplexity_ids(_encode(ref_tokenizer, text), window=window, tokens=perplexity_tokens)
        spill = stack.enter_context(_spill())
        run = _Verification(
            source=source,
            checkpoint=Path(checkpoint),
            spill=spill,
            requested_gates=gates,
            prompts=prompts,
            ref_prompt_ids=ref_prompt_ids,
            eos_token_id=ref_tokenizer.eos_token_id,
            text=text,
            eval_ids=eval_ids,
            perplexity_tokens=perplexity_tokens,
            inputs=make_parity_inputs(vocab_size, block_size, prompts, ref_prompt_ids),
            n_hidden=ref_config.n_layer + 1,
            width=ref_config.n_embd,
            vocab_size=vocab_size,
            max_new_tokens=max_new_tokens,
            budget=budget,
            window=window,
            timings=timings,
        )
        run.run()
        snippet_gate = None
        if card_snippet and run.load_error is None:
            t = time.perf_counter()
            snippet_gate = card_snippet_gate(
                source.folder,
                generation={"max_new_tokens": max_new_tokens, "cases": run.generation["cases"]},
                commit=source.commit,
            )
            timings["card_snippet"] = time.perf_counter() - t

    used_gates = run.used_gates if isinstance(run.used_gates, Gates) else Gates()
    model_info = {**source.describe(), "dtype": run.dtype, "class": run.model_class, "files": files}
    report = VerificationReport(
        model=ModelSection.from_dict(model_info, "model"),
        checkpoint=CheckpointSection.from_dict(checkpoint_info, "checkpoint"),
        gates=[
            _hygiene_gate(hygiene.problems),
            *run.gate_results(),
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
            "shared_causal_masks": run.shared_masks,
            "greedy_check": GREEDY_CHECK,
        },
        parity=ParitySection.from_dict(
            {**run.parity, "inputs": [i.describe() for i in run.inputs]}, "parity"
        ),
        perplexity=PerplexitySection.from_dict(
            {
                "text": text_path.name,
                "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "requested_tokens": perplexity_tokens,
                **run.perplexity,
                "window": window,
                "method": f"non-overlapping windows of {window} tokens; a window's first token is not scored",
            },
            "perplexity",
        ),
        generation=GenerationSection.from_dict(
            {"max_new_tokens": max_new_tokens, "eos_token_id": run.eos_token_id, **run.generation},
            "generation",
        ),
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


class _Verification:
    """The two halves of ``verify_model``, one model resident at a time, and the gates they lead to.

    1. The candidate, loaded fresh as users load it: its parity logits (spilled), its perplexity, greedy
       decoding of every prompt, the padded batch, seeded sampling and the pipeline.
    2. It is freed; the reference is loaded: parity against the spilled logits, its perplexity on the same
       number of tokens, and the candidate's greedy continuations checked by teacher forcing.
    3. Only when parity failed: the reference's hidden states are spilled, the reference is freed and the
       candidate loaded again to find the first layer whose hidden state diverges.
    """

    def __init__(
        self,
        *,
        source,
        checkpoint: Path,
        spill,
        requested_gates,
        prompts: list[str],
        ref_prompt_ids: list[list[int]],
        eos_token_id: int | None,
        text: str,
        eval_ids: list[int],
        perplexity_tokens: int,
        inputs,
        n_hidden: int,
        width: int,
        vocab_size: int,
        max_new_tokens: int,
        budget: int,
        window: int,
        timings: dict[str, float],
    ):
        self.source = source
        self.checkpoint = checkpoint
        self.spill = spill
        self.requested_gates = requested_gates
        self.prompts = prompts
        self.ref_prompt_ids = ref_prompt_ids
        self.eos_token_id = eos_token_id
        self.text = text
        self.eval_ids = eval_ids
        self.perplexity_tokens = perplexity_tokens
        self.inputs = inputs
        self.n_hidden = n_hidden
        self.width = width
        self.vocab_size = vocab_size
        self.max_new_tokens = max_new_tokens
        self.budget = budget
        self.window = window
        self.timings = timings
        self.used_gates: Gates | None = requested_gates if isinstance(requested_gates, Gates) else None
        self.shared_masks = 0
        self.dtype: str | None = None
        self.model_class: str | None = None
        # What each half found: an error (one line) where a step raised, else its figures.
        self.load_error: str | None = None
        self.parity_error: str | None = None  # the candidate's or the reference's forward raised
        self.figures = None  # ParityFigures, once the reference compared
        self.candidate_nll: tuple[float, int] | None = None
        self.perplexity_error: str | None = None
        self.reference_nll: tuple[float, int] | None = None
        self.runs: list = []  # per prompt: the candidate's GreedyRun, or None where generate() raised
        self.generate_errors: list[str | None] = []
        self.candidate_input_ids: list[list[int]] = []
        self.checks: list = []  # per prompt: the reference's TeacherForced verdict, or None
        self.padded_problems: list[str] = []
        self.sampling_problem: str | None = None
        self.pipeline_problem: str | None = None
        self.parity: dict[str, Any] = {
            "max_abs_diff": None,
            "mean_abs_diff": None,
            "top1_agreement": None,
            "kl_divergence": None,
            "positions": None,
            "first_divergent_layer": None,
            "divergence_location": None,
            "per_layer_max_abs_diff": None,
            "per_layer_relative_diff": None,
        }
        self.perplexity: dict[str, Any] = {
            "tokens": None,
            "reference": None,
            "candidate": None,
            "candidate_tokens": None,
            "relative_diff": None,
        }
        self.generation: dict[str, Any] = {
            "cases": [],
            "padded_batch_match": False,
            "sampling": None,
            "pipeline_ok": False,
        }

    # ---- orchestration

    def run(self) -> None:
        if not self._candidate():
            return
        from release.verify.checks import return_freed_memory

        return_freed_memory()
        self._reference()
        return_freed_memory()
        if self._parity_failed():
            self._timed("locate", self._locate)

    def _timed(self, name, func, *args, **kwargs) -> None:
        t = time.perf_counter()
        func(*args, **kwargs)
        self.timings[name] = time.perf_counter() - t

    def _load_candidate(self):
        from release.verify.loading import load_candidate

        t = time.perf_counter()
        try:
            return load_candidate(self.source)
        finally:
            self.timings["candidate_load"] = self.timings.get("candidate_load", 0.0) + time.perf_counter() - t

    def _candidate(self) -> bool:
        from release.verify.loading import fresh_remote_code_modules

        with fresh_remote_code_modules():
            with _Finding("from_pretrained(trust_remote_code=True)") as found:
                model, tokenizer = self._load_candidate()
            if found.error is not None:
                self.load_error = found.error
                return False
            self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            self.model_class = f"{type(model).__module__}.{type(model).__name__}"
            if self.used_gates is None:
                self.used_gates = Gates.for_dtype(self.dtype).with_overrides(dict(self.requested_gates or {}))
            try:
                self._timed("candidate_parity", self._candidate_parity, model)
                self._timed("candidate_perplexity", self._candidate_perplexity, model, tokenizer)
                self._timed("candidate_generation", self._candidate_generation, model, tokenizer)
            finally:
                del model, tokenizer
                gc.collect()
        return True

    def _reference(self) -> None:
        from release.checkpoint import load_reference_model
        from release.verify.checks import share_causal_masks

        t = time.perf_counter()
        model, ckpt = load_reference_model(self.checkpoint)
        try:
            self.shared_masks = share_causal_masks(model, ckpt)
            self.timings["reference_load"] = time.perf_counter() - t
            self._timed("reference_parity", self._reference_parity, model)
            self._timed("reference_perplexity", self._reference_perplexity, model)
            self._timed("reference_greedy", self._reference_greedy, model)
            if self._parity_failed():
                from release.verify.checks import spill_reference_hidden_states

                self._timed(
                    "reference_hidden_states",
                    spill_reference_hidden_states,
                    model,
                    self.inputs,
                    self.spill,
                    budget=self.budget,
                )
        finally:
            del model
            ckpt.close()
            del ckpt

    def _parity_failed(self) -> bool:
        return self.figures is not None and not _parity_within(self.figures, self.used_gates)

    # ---- parity

    def _candidate_parity(self, model) -> None:
        from release.verify.checks import candidate_logits

        with _Finding("forward on the parity inputs") as found:
            candidate_logits(
                model,
                self.inputs,
                self.spill,
                budget=self.budget,
                vocab_size=self.vocab_size,
                width=self.width,
            )
        self.parity_error = found.error

    def _reference_parity(self, model) -> None:
        from release.verify.checks import compare_logits

        if self.parity_error is not None:
            return
        with _Finding("the reference's forward on the parity inputs") as found:
            fig = compare_logits(model, self.inputs, self.spill, budget=self.budget)
        if found.error is not None:
            self.parity_error = found.error
            return
        self.figures = fig
        self.parity.update(
            max_abs_diff=fig.max_abs_diff,
            mean_abs_diff=fig.mean_abs_diff,
            top1_agreement=fig.top1_agreement,
            kl_divergence=fig.kl_divergence,
            positions=fig.positions,
        )

    def _locate(self) -> None:
        from release.verify.checks import locate_divergence
        from release.verify.loading import fresh_remote_code_modules

        fig = self.figures
        with fresh_remote_code_modules():
            try:
                model, _tokenizer = self._load_candidate()
                try:
                    locate_divergence(
                        model,
                        self.inputs,
                        self.spill,
                        fig,
                        n_hidden=self.n_hidden,
                        width=self.width,
                        hidden_rel_tol=self.used_gates.hidden_rel_tol,
                        budget=self.budget,
                    )
                finally:
                    del model, _tokenizer
                    gc.collect()
            except Exception:  # it loaded and ran once already; locating is a refinement of a failure
                log.debug("locating the divergence failed", exc_info=True)
        self.parity.update(
            first_divergent_layer=fig.first_divergent_layer,
            divergence_location=fig.location(),
            per_layer_max_abs_diff=fig.per_layer_max_abs_diff,
            per_layer_relative_diff=fig.per_layer_rel_diff,
            hidden_states="index 0: embeddings; index i: output of layer i-1",
        )

    # ---- perplexity

    def _candidate_perplexity(self, model, tokenizer) -> None:
        from release.verify.checks import perplexity_ids, perplexity_nll

        with _Finding("scoring the text") as found:
            ids = perplexity_ids(
                _encode(tokenizer, self.text), window=self.window, tokens=self.perplexity_tokens
            )
            self.candidate_nll = perplexity_nll(
                lambda x: model(input_ids=x, use_cache=False).logits,
                ids,
                window=self.window,
                vocab_size=self.vocab_size,
                budget=self.budget,
            )
        self.perplexity_error = found.error

    def _reference_perplexity(self, model) -> None:
        from release.verify.checks import perplexity, perplexity_nll

        self.reference_nll = perplexity_nll(
            lambda x: model(x)[0],
            self.eval_ids,
            window=self.window,
            vocab_size=self.vocab_size,
            budget=self.budget,
        )
        ref_ppl = perplexity(*self.reference_nll)
        self.perplexity.update(tokens=self.reference_nll[1], reference=ref_ppl)
        if self.candidate_nll is not None:
            ppl = perplexity(*self.candidate_nll)
            rel = abs(ppl - ref_ppl) / ref_ppl if ref_ppl > 0 else float("nan")
            self.perplexity.update(candidate=ppl, candidate_tokens=self.candidate_nll[1], relative_diff=rel)

    # ---- generation

    def _candidate_generation(self, model, tokenizer) -> None:
        from release.verify.checks import normalize_eos

        eos = normalize_eos(model.generation_config.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(sorted(eos)), None)
        self._greedy(model, tokenizer, pad)
        self._padded_batch(model, tokenizer, pad, eos)
        self._sampling(model, tokenizer, pad, eos)
        self._pipeline(model, tokenizer)

    def _greedy(self, model, tokenizer, pad) -> None:
        from release.verify.checks import candidate_greedy

        for prompt in self.prompts:
            case: dict[str, Any] = {"prompt": prompt, "input_ids": []}
            run = None
            with _Finding(f"{prompt!r}: generate()") as found:
                ids = _encode(tokenizer, prompt)
                case["input_ids"] = ids
                run = candidate_greedy(model, ids, max_new_tokens=self.max_new_tokens, pad_token_id=pad)
            self.runs.append(run)
            self.generate_errors.append(found.error)
            self.candidate_input_ids.append(case["input_ids"])
            case.update(
                candidate_ids=run.ids if run else [],
                text=tokenizer.decode(run.ids, skip_special_tokens=True) if run else "",
                match=False,
                diverged_at=None,
                tolerated=False,
            )
            self.generation["cases"].append(case)

    def _reference_greedy(self, model) -> None:
        from release.verify.checks import teacher_forced_greedy

        margin = self.used_gates.greedy_tie_margin
        for case, run, ref_ids in zip(self.generation["cases"], self.runs, self.ref_prompt_ids, strict=True):
            if run is None:
                self.checks.append(None)
                continue
            check = teacher_forced_greedy(
                model,
                ref_ids,
                run.ids,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.eos_token_id,
                tie_margin=margin,
                budget=self.budget,
            )
            self.checks.append(check)
            div = check.divergence
            case.update(
                reference_ids=check.reference_ids,
                match=div.match,
                diverged_at=div.index,
                tolerated=div.tolerated,
            )
            if div.margin is not None:
                case["logit_margin"] = div.margin
            if case["input_ids"] != list(ref_ids):
                case["reference_input_ids"] = list(ref_ids)

    def _padded_batch(self, model, tokenizer, pad, eos) -> None:
        import torch

        from release.verify.checks import compare_greedy, trim_at_eos

        margin = self.used_gates.greedy_tie_margin
        info: dict[str, Any] = {"prompts": len(self.prompts)}
        saved = (tokenizer.padding_side, tokenizer.pad_token)
        problems = []
        try:
            if any(r is None for r in self.runs):
                raise RuntimeError("single-prompt generation failed, nothing to compare with")
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            enc = tokenizer(list(self.prompts), return_tensors="pt", padding=True)
            info["padded"] = bool((enc["attention_mask"] == 0).any())
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad,
                )
            width = enc["input_ids"].shape[1]
            for prompt, run, row in zip(self.prompts, self.runs, out[:, width:].tolist(), strict=True):
                div = compare_greedy(run, trim_at_eos(row, eos), tie_margin=margin)
                if not (div.match or div.tolerated):
                    problems.append(f"{prompt!r}: {div.describe(len(run.ids))}")
        except Exception as exc:
            log.debug("padded batch failed", exc_info=True)
            problems.append(f"generate() on the padded batch {_exc(exc)}")
        finally:
            tokenizer.padding_side, tokenizer.pad_token = saved
        self.padded_problems = problems
        self.generation["padded_batch_match"] = not problems
        self.generation["padded_batch"] = {**info, "problems": problems}

    def _sampling(self, model, tokenizer, pad, eos) -> None:
        import torch

        prompt = self.prompts[0]
        info: dict[str, Any] = {**SAMPLING, "prompt": prompt, "tokens": 0, "stopped": None, "text": ""}
        problem = None
        with _Finding("generate(do_sample=True)") as found:
            ids = torch.tensor([_encode(tokenizer, prompt)])
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(SAMPLING["seed"])
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=SAMPLING["temperature"],
                    top_k=SAMPLING["top_k"],
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=pad,
                )
            cont = out[0, ids.shape[1] :].tolist()
            info.update(tokens=len(cont), text=tokenizer.decode(cont, skip_special_tokens=True))
            first_eos = next((i for i, tok in enumerate(cont) if tok in eos), None)
            if first_eos is not None:
                info["stopped"] = "eos"
                if first_eos != len(cont) - 1:
                    problem = f"{len(cont) - 1 - first_eos} tokens after eos at position {first_eos}"
            elif len(cont) == self.max_new_tokens:
                info["stopped"] = "max_new_tokens"
            else:
                problem = f"stopped after {len(cont)} of {self.max_new_tokens} tokens without eos"
        self.generation["sampling"] = info
        self.sampling_problem = found.error or problem

    def _pipeline(self, model, tokenizer) -> None:
        from transformers import pipeline

        prompt = self.prompts[0]
        info: dict[str, Any] = {"prompt": prompt}
        problem = None
        with _Finding('pipeline("text-generation")') as found:
            pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
            out = pipe(prompt, max_new_tokens=self.max_new_tokens, do_sample=False, return_full_text=False)
            got = out[0]["generated_text"]
            info["text"] = got
            if self.runs[0] is not None:
                expected = tokenizer.decode(self.runs[0].ids, skip_special_tokens=True)
                if got != expected:
                    problem = f"pipeline text {got[:60]!r} differs from generate()'s {expected[:60]!r}"
        self.pipeline_problem = problem = found.error or problem
        self.generation["pipeline_ok"] = problem is None
        self.generation["pipeline"] = info

    # ---- the gates, in the order of GATES

    def _where(self) -> str:
        location = self.parity["divergence_location"]
        if location is None:
            return ""
        if location.startswith("layer "):
            return f" (first divergent layer: {location.removeprefix('layer ')})"
        return f" (first divergence: {location})"

    def gate_results(self) -> list[GateResult]:
        if self.load_error is not None:
            return [GateResult("load", False, None, None, self.load_error)]
        dtype = self.dtype
        gates = [
            GateResult("load", True, dtype, None, f"loaded {self.model_class.rsplit('.', 1)[-1]} as {dtype}")
        ]
        gates += self._parity_gates()
        gates += self._perplexity_gates()
        gates.append(self._greedy_gate())
        ok = not self.padded_problems
        gates.append(
            GateResult(
                "generation.padded_batch",
                ok,
                ok,
                True,
                "a left-padded batch of all prompts equals the prompts one by one"
                if ok
                else "padded batch differs from the prompts one by one: " + "; ".join(self.padded_problems),
            )
        )
        info = self.generation["sampling"]
        ok = self.sampling_problem is None
        gates.append(
            GateResult(
                "generation.sampling",
                ok,
                info["stopped"],
                "eos or max_new_tokens",
                f"seeded sampling stopped at {info['stopped']} after {info['tokens']} tokens"
                if ok
                else f"seeded sampling: {self.sampling_problem}",
            )
        )
        ok = self.pipeline_problem is None
        detail = (
            'pipeline("text-generation") gives generate()\'s greedy text' if ok else self.pipeline_problem
        )
        gates.append(GateResult("generation.pipeline", ok, ok, True, detail))
        return gates

    def _parity_gates(self) -> list[GateResult]:
        if self.parity_error is not None:
            return [GateResult("parity.forward", False, None, None, self.parity_error)]
        fig, g = self.figures, self.used_gates
        figures = [  # gate, label, value, threshold, higher is better, value format
            ("max_abs_diff", "max abs diff", fig.max_abs_diff, g.max_abs_diff, False, "{:.1e}"),
            ("mean_abs_diff", "mean abs diff", fig.mean_abs_diff, g.mean_abs_diff, False, "{:.1e}"),
            ("top1_agreement", "top-1 agreement", fig.top1_agreement, g.min_top1_agreement, True, "{:.2%}"),
            ("kl_divergence", "KL divergence", fig.kl_divergence, g.max_kl_divergence, False, "{:.1e}"),
        ]
        gates = []
        for key, label, value, threshold, at_least, fmt in figures:
            if threshold is None:
                continue
            ok = value >= threshold if at_least else value <= threshold
            op = (">=" if ok else "<") if at_least else ("<=" if ok else ">")
            shown_threshold = fmt.format(threshold) if at_least else _sci(threshold)
            detail = f"{label} {fmt.format(value)} {op} {shown_threshold}" + ("" if ok else self._where())
            gates.append(GateResult(f"parity.{key}", ok, value, threshold, detail))
        return gates

    def _perplexity_gates(self) -> list[GateResult]:
        threshold = self.used_gates.max_perplexity_rel_diff
        if self.perplexity_error is not None:
            return [GateResult("perplexity", False, None, threshold, self.perplexity_error)]
        if threshold is None:
            return []
        p = self.perplexity
        rel, count, ref_count = p["relative_diff"], p["candidate_tokens"], p["tokens"]
        ok = rel <= threshold
        detail = (
            f"relative diff {rel:.1e} {'<=' if ok else '>'} {_sci(threshold)} "
            f"(reference {p['reference']:.4g}, candidate {p['candidate']:.4g}"
            + ("" if count == ref_count else f"; {count} vs {ref_count} tokens")
            + ")"
        )
        return [GateResult("perplexity", ok, rel, threshold, detail + ("" if ok else self._where()))]

    def _greedy_gate(self) -> GateResult:
        problems, ok_count = [], 0
        cases = self.generation["cases"]
        for case, error, check, ref_ids in zip(
            cases, self.generate_errors, self.checks, self.ref_prompt_ids, strict=True
        ):
            prompt = case["prompt"]
            if error is not None:
                problems.append(error)
            elif case["input_ids"] != list(ref_ids):
                problems.append(
                    f"{prompt!r}: the shipped tokenizer gives {case['input_ids']}, the training tokenizer "
                    f"{list(ref_ids)}"
                )
            elif check.divergence.match or check.divergence.tolerated:
                ok_count += 1
            else:
                problems.append(f"{prompt!r}: {check.divergence.describe(len(case['candidate_ids']))}")
        n = len(cases)
        detail = (
            f"{ok_count}/{n} greedy continuations equal the reference's"
            if not problems
            else f"{n - ok_count} of {n} greedy continuations differ from the reference: "
            + "; ".join(problems)
        )
        return GateResult(
            "generation.greedy", not problems, ok_count / n, 1.0, detail + (self._where() if problems else "")
        )


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
    from release.errors import ReportError
    from release.verify.loading import candidate_source, folder_file_hashes, fresh_remote_code_modules

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
        files = folder_file_hashes(source.folder)
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
    import torch

    from release.errors import VerificationError
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
            ids = torch.tensor([_encode(tokenizer, prompt)])
            context = int(getattr(lm.config, "max_position_embeddings", 0) or 0)
            if context and ids.shape[1] + max_new_tokens > context:
                raise UsageError(
                    f"the prompt is {ids.shape[1]} tokens; with max_new_tokens={max_new_tokens} it exceeds "
                    f"the model's context of {context}; use --max-new-tokens "
                    f"{max(1, context - ids.shape[1])} or less"
                )
            sampling: dict[str, Any] = {"do_sample": False}
            if temperature > 0:
                sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k}
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seed)
                out = lm.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad,
                    **sampling,
                )
            return prompt + tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
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


def _parity_within(fig, g: Gates) -> bool:
    pairs = [
        (fig.max_abs_diff, g.max_abs_diff, 1),
        (fig.mean_abs_diff, g.mean_abs_diff, 1),
        (fig.kl_divergence, g.max_kl_divergence, 1),
        (fig.top1_agreement, g.min_top1_agreement, -1),
    ]
    return all(t is None or (v <= t if sign > 0 else v >= t) for v, t, sign in pairs)


def _hygiene_gate(problems: list[str]) -> GateResult:
    if not problems:
        return GateResult(
            "hygiene", True, 0, 0, "auto_map resolves to shipped files; imports are self-contained"
        )
    return GateResult("hygiene", False, len(problems), 0, "; ".join(problems))


@contextlib.contextmanager
def _spill():
    from release.verify.checks import Spill

    with Spill() as spill:
        yield spill


def _sci(value: float) -> str:
    """A threshold as written: 1e-04, 1.5e-03."""
    short = f"{value:.0e}"
    return short if float(short) == value else f"{value:.1e}"


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
