"""Verify that a converted model behaves like the trained one, loaded the way users load it.

``verify_model`` compares a model folder (or a Hub revision) with the training module built from the original
checkpoint: logits parity with per-layer localisation, perplexity on an evaluation text, greedy generation
token for token (single prompts, a padded batch), seeded sampling, ``pipeline("text-generation")``, and
remote-code hygiene. The reference runs first and is freed before the candidate is loaded; the two models are
never in memory together. The result is a ``VerificationReport`` (``verification.json`` + a Markdown summary).

``check_generation_against_report`` repeats the generation check on a published revision without the
checkpoint (the expected tokens are in the report): the gate that runs after an upload and before a tag is
created. ``generate_text`` is the quick look a person takes at a folder or a Hub revision.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from release.errors import ReleaseError, TokenizerError, UsageError
from release.settings import DEFAULT_PROMPTS, DEFAULT_TOKENIZER
from release.verify.report import GateResult, Gates, VerificationReport, read_report

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

DEFAULT_TRAINING_TOKENIZER = (
    DEFAULT_TOKENIZER  # GPT-2 BPE, what the training script used; as `release convert`
)
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
    report_path: Path | None = None,
    tokenizer: str | Path | None = None,
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
        report_path: Where to write ``verification.json`` (and the ``.md`` beside it); nothing is written if
            None.
        tokenizer: The tokenizer the model was trained with (folder or Hub id; default ``"gpt2"``), used on
            the reference side, so a model folder shipping another tokenizer fails the perplexity gate.
        checkpoint_sha256: The SHA-256 the report names, when the caller has it: ``release run`` passes the
            original checkpoint's, of which ``checkpoint`` is the weights-only file. None: hash ``checkpoint``.

    Returns:
        The report; ``report.passed`` tells whether every gate passed, ``report.failures`` which did not.

    Raises:
        UsageError: Bad prompts, a prompt that does not fit the context with ``max_new_tokens``, a missing
            text.
        CheckpointError, ConversionError: The checkpoint cannot serve as the reference.
        TokenizerError: The training tokenizer cannot be loaded.
        VerificationError: A Hub revision cannot be downloaded.
    """
    from release.checkpoint import load_reference_model
    from release.demo import demo_text_path
    from release.verify.checks import (
        heap_without_retention,
        logits_budget,
        make_parity_inputs,
        perplexity_window,
        reference_outputs,
        return_freed_memory,
        share_causal_masks,
    )
    from release.verify.hygiene import check_remote_code_hygiene
    from release.verify.loading import candidate_source, folder_file_hashes, library_versions

    started = time.perf_counter()
    timings: dict[str, float] = {}
    prompts = _check_prompts(prompts)
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    text_path = Path(eval_text) if eval_text is not None else demo_text_path()
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the evaluation text {text_path}: {exc}") from exc
    tokenizer_name = str(tokenizer) if tokenizer is not None else DEFAULT_TRAINING_TOKENIZER
    if gates is not None and not isinstance(gates, Gates):
        # Unknown names and bad values fail now, not after the reference has run.
        Gates().with_overrides(dict(gates))

    with contextlib.ExitStack() as stack:
        stack.enter_context(heap_without_retention())
        source = stack.enter_context(candidate_source(model, revision))
        t = time.perf_counter()
        hygiene = check_remote_code_hygiene(source.folder)
        files = folder_file_hashes(source.folder)
        timings["hygiene"] = time.perf_counter() - t

        # ---- reference: compute everything, then free it before the candidate is loaded
        t = time.perf_counter()
        ref_tokenizer = _load_training_tokenizer(tokenizer_name)
        ref_model, ckpt = load_reference_model(Path(checkpoint))
        shared_masks = share_causal_masks(ref_model, ckpt)
        timings["reference_load"] = time.perf_counter() - t
        t = time.perf_counter()
        block_size, vocab_size = ref_model.config.block_size, ref_model.config.vocab_size
        weights_bytes = sum(p.numel() * p.element_size() for p in ref_model.parameters())
        budget = logits_budget(weights_bytes)
        window = perplexity_window(block_size, vocab_size, budget)
        ref_prompt_ids = [_encode(ref_tokenizer, p) for p in prompts]
        _check_fits(prompts, ref_prompt_ids, max_new_tokens, block_size)
        eval_ids = _encode(ref_tokenizer, text)
        eos_token_id = ref_tokenizer.eos_token_id
        spill = stack.enter_context(_spill())
        inputs = make_parity_inputs(vocab_size, block_size, prompts, ref_prompt_ids)
        reference = reference_outputs(
            ref_model,
            inputs=inputs,
            eval_ids=eval_ids,
            prompt_ids=ref_prompt_ids,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            spill=spill,
            budget=budget,
            window=window,
        )
        checkpoint_info = {
            "path": str(Path(checkpoint).resolve()),
            "sha256": checkpoint_sha256 or ckpt.sha256,
            "architecture": dict(vars(ref_model.config)),
        }
        del ref_model
        ckpt.close()
        del ckpt
        return_freed_memory()
        timings["reference_outputs"] = time.perf_counter() - t

        # ---- candidate
        candidate = _CandidateRun(
            source=source,
            reference=reference,
            spill=spill,
            gates=gates,
            prompts=prompts,
            ref_prompt_ids=ref_prompt_ids,
            text=text,
            max_new_tokens=max_new_tokens,
            budget=budget,
            window=window,
            timings=timings,
        )
        candidate.run()

    gate_results = [_hygiene_gate(hygiene.problems), *candidate.gates]
    used_gates = candidate.used_gates if isinstance(candidate.used_gates, Gates) else Gates()
    report = VerificationReport(
        model={**source.describe(), "dtype": candidate.dtype, "class": candidate.model_class, "files": files},
        checkpoint=checkpoint_info,
        gates=gate_results,
        settings={
            "gates": used_gates.to_dict(),
            "prompts": prompts,
            "max_new_tokens": max_new_tokens,
            "training_tokenizer": tokenizer_name,
            "eval_text": str(text_path),
            "sampling": dict(SAMPLING),
            "logits_budget_bytes": budget,
            "shared_causal_masks": shared_masks,
        },
        parity={**candidate.parity, "inputs": [inp.describe() for inp in inputs]},
        perplexity={
            "text": text_path.name,
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "tokens": reference.nll_tokens,
            "reference": reference.perplexity,
            **candidate.perplexity,
            "window": window,
            "method": f"non-overlapping windows of {window} tokens; a window's first token is not scored",
        },
        generation={"max_new_tokens": max_new_tokens, "eos_token_id": eos_token_id, **candidate.generation},
        hygiene=hygiene.to_dict(),
        versions=library_versions(),
        timings=timings,
    )
    report.timings["total"] = time.perf_counter() - started
    if report_path is not None:
        report.write(Path(report_path))
    return report


class _CandidateRun:
    """The candidate half of ``verify_model``: load it fresh, then run every check, each failure a gate."""

    def __init__(
        self,
        *,
        source,
        reference,
        spill,
        gates,
        prompts,
        ref_prompt_ids,
        text,
        max_new_tokens,
        budget,
        window,
        timings,
    ):
        self.source = source
        self.reference = reference
        self.spill = spill
        self.requested_gates = gates
        self.prompts = prompts
        self.ref_prompt_ids = ref_prompt_ids
        self.text = text
        self.max_new_tokens = max_new_tokens
        self.budget = budget
        self.window = window
        self.timings = timings
        self.gates: list[GateResult] = []
        self.used_gates: Gates | None = gates if isinstance(gates, Gates) else None
        self.dtype: str | None = None
        self.model_class: str | None = None
        self.location: str | None = None  # where parity first diverged, for the failure lines
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
        self.perplexity: dict[str, Any] = {"candidate": None, "candidate_tokens": None, "relative_diff": None}
        self.generation: dict[str, Any] = {
            "cases": [],
            "padded_batch_match": False,
            "sampling": None,
            "pipeline_ok": False,
        }

    def run(self) -> None:
        from release.verify.loading import fresh_remote_code_modules, load_candidate

        with fresh_remote_code_modules():
            t = time.perf_counter()
            try:
                model, tokenizer = load_candidate(self.source)
            except Exception as exc:  # whatever the shipped code raises is a finding about the candidate
                log.debug("loading the candidate failed", exc_info=True)
                self.gates.append(
                    GateResult(
                        "load", False, None, None, f"from_pretrained(trust_remote_code=True) {_exc(exc)}"
                    )
                )
                return
            finally:
                self.timings["candidate_load"] = time.perf_counter() - t
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            self.dtype = dtype
            self.model_class = f"{type(model).__module__}.{type(model).__name__}"
            self.gates.append(
                GateResult("load", True, dtype, None, f"loaded {type(model).__name__} as {dtype}")
            )
            requested = self.requested_gates
            if isinstance(requested, Gates):
                self.used_gates = requested
            else:
                self.used_gates = Gates.for_dtype(dtype).with_overrides(dict(requested or {}))
            try:
                self._timed("parity", self._parity, model)
                self._timed("perplexity", self._perplexity, model, tokenizer)
                self._timed("generation", self._generation, model, tokenizer)
            finally:
                del model, tokenizer
                gc.collect()

    def _timed(self, name, func, *args) -> None:
        t = time.perf_counter()
        func(*args)
        self.timings[name] = time.perf_counter() - t

    def _where(self) -> str:
        if self.location is None:
            return ""
        if self.location.startswith("layer "):
            return f" (first divergent layer: {self.location.removeprefix('layer ')})"
        return f" (first divergence: {self.location})"

    # ---- parity

    def _parity(self, model) -> None:
        from release.verify.checks import compare_logits, locate_divergence

        g = self.used_gates
        try:
            fig = compare_logits(model, self.reference, self.spill, budget=self.budget)
            # Where the hidden states part ways is worth a second pass only when the logits disagree.
            failed = not _parity_within(fig, g)
            if failed:
                locate_divergence(
                    model,
                    self.reference,
                    self.spill,
                    fig,
                    hidden_rel_tol=g.hidden_rel_tol,
                    budget=self.budget,
                )
        except Exception as exc:
            log.debug("parity forward failed", exc_info=True)
            self.gates.append(
                GateResult("parity.forward", False, None, None, f"forward on the parity inputs {_exc(exc)}")
            )
            return
        location = fig.location(self.reference.n_hidden) if failed else None
        self.parity.update(
            max_abs_diff=fig.max_abs_diff,
            mean_abs_diff=fig.mean_abs_diff,
            top1_agreement=fig.top1_agreement,
            kl_divergence=fig.kl_divergence,
            positions=fig.positions,
            first_divergent_layer=fig.first_divergent_layer,
            divergence_location=location,
            per_layer_max_abs_diff=fig.per_layer_max_abs_diff,
            per_layer_relative_diff=fig.per_layer_rel_diff,
            hidden_states="index 0: embeddings; index i: output of layer i-1",
        )
        self.location = location
        figures = [  # gate, label, value, threshold, higher is better, value format
            ("max_abs_diff", "max abs diff", fig.max_abs_diff, g.max_abs_diff, False, "{:.1e}"),
            ("mean_abs_diff", "mean abs diff", fig.mean_abs_diff, g.mean_abs_diff, False, "{:.1e}"),
            ("top1_agreement", "top-1 agreement", fig.top1_agreement, g.min_top1_agreement, True, "{:.2%}"),
            ("kl_divergence", "KL divergence", fig.kl_divergence, g.max_kl_divergence, False, "{:.1e}"),
        ]
        for key, label, value, threshold, at_least, fmt in figures:
            if threshold is None:
                continue
            ok = value >= threshold if at_least else value <= threshold
            op = (">=" if ok else "<") if at_least else ("<=" if ok else ">")
            shown_threshold = fmt.format(threshold) if at_least else _sci(threshold)
            detail = f"{label} {fmt.format(value)} {op} {shown_threshold}" + ("" if ok else self._where())
            self.gates.append(GateResult(f"parity.{key}", ok, value, threshold, detail))

    # ---- perplexity

    def _perplexity(self, model, tokenizer) -> None:
        from release.verify.checks import perplexity, perplexity_nll

        threshold = self.used_gates.max_perplexity_rel_diff
        ref_ppl = self.reference.perplexity
        try:
            ids = _encode(tokenizer, self.text)
            nll, count = perplexity_nll(
                lambda x: model(input_ids=x, use_cache=False).logits,
                ids,
                window=self.window,
                vocab_size=self.reference.vocab_size,
                budget=self.budget,
            )
        except Exception as exc:
            log.debug("perplexity failed", exc_info=True)
            self.gates.append(
                GateResult("perplexity", False, None, threshold, f"scoring the text {_exc(exc)}")
            )
            return
        ppl = perplexity(nll, count)
        rel = abs(ppl - ref_ppl) / ref_ppl if ref_ppl > 0 else float("nan")
        self.perplexity.update(candidate=ppl, candidate_tokens=count, relative_diff=rel)
        if threshold is None:
            return
        ok = rel <= threshold
        detail = (
            f"relative diff {rel:.1e} {'<=' if ok else '>'} {_sci(threshold)} "
            f"(reference {ref_ppl:.4g}, candidate {ppl:.4g}"
            + (
                ""
                if count == self.reference.nll_tokens
                else f"; {count} vs {self.reference.nll_tokens} tokens"
            )
            + ")"
        )
        self.gates.append(
            GateResult("perplexity", ok, rel, threshold, detail + ("" if ok else self._where()))
        )

    # ---- generation

    def _generation(self, model, tokenizer) -> None:
        from release.verify.checks import normalize_eos

        eos = normalize_eos(model.generation_config.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(sorted(eos)), None)
        runs = self._greedy(model, tokenizer, pad)
        self._padded_batch(model, tokenizer, runs, pad, eos)
        self._sampling(model, tokenizer, pad, eos)
        self._pipeline(model, tokenizer, runs)

    def _greedy(self, model, tokenizer, pad):
        from release.verify.checks import candidate_greedy, compare_greedy

        margin = self.used_gates.greedy_tie_margin
        runs, problems, ok_count = [], [], 0
        for prompt, ref_ids, ref_run in zip(
            self.prompts, self.ref_prompt_ids, self.reference.greedy, strict=True
        ):
            case: dict[str, Any] = {"prompt": prompt, "reference_ids": ref_run.ids}
            try:
                ids = _encode(tokenizer, prompt)
                case["input_ids"] = ids
                run = candidate_greedy(model, ids, max_new_tokens=self.max_new_tokens, pad_token_id=pad)
            except Exception as exc:
                log.debug("generate failed", exc_info=True)
                case.update(candidate_ids=[], text="", match=False, diverged_at=None, tolerated=False)
                case.setdefault("input_ids", [])
                problems.append(f"{prompt!r}: generate() {_exc(exc)}")
                runs.append(None)
                self.generation["cases"].append(case)
                continue
            runs.append(run)
            div = compare_greedy(ref_run, run.ids, tie_margin=margin)
            case.update(
                candidate_ids=run.ids,
                text=tokenizer.decode(run.ids, skip_special_tokens=True),
                match=div.match,
                diverged_at=div.index,
                tolerated=div.tolerated,
            )
            if ids != list(ref_ids):
                case["reference_input_ids"] = list(ref_ids)
                problems.append(
                    f"{prompt!r}: the shipped tokenizer gives {ids}, the training tokenizer {list(ref_ids)}"
                )
            elif div.match or div.tolerated:
                ok_count += 1
            else:
                problems.append(f"{prompt!r}: {div.describe(len(ref_run.ids))}")
            self.generation["cases"].append(case)
        n = len(self.prompts)
        detail = (
            f"{ok_count}/{n} greedy continuations equal the reference's"
            if not problems
            else f"{n - ok_count} of {n} greedy continuations differ from the reference: "
            + "; ".join(problems)
        )
        self.gates.append(
            GateResult(
                "generation.greedy",
                not problems,
                ok_count / n,
                1.0,
                detail + (self._where() if problems else ""),
            )
        )
        return runs

    def _padded_batch(self, model, tokenizer, runs, pad, eos) -> None:
        import torch

        from release.verify.checks import compare_greedy, trim_at_eos

        margin = self.used_gates.greedy_tie_margin
        info: dict[str, Any] = {"prompts": len(self.prompts)}
        saved = (tokenizer.padding_side, tokenizer.pad_token)
        problems = []
        try:
            if any(r is None for r in runs):
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
            for prompt, run, row in zip(self.prompts, runs, out[:, width:].tolist(), strict=True):
                div = compare_greedy(run, trim_at_eos(row, eos), tie_margin=margin)
                if not (div.match or div.tolerated):
                    problems.append(f"{prompt!r}: {div.describe(len(run.ids))}")
        except Exception as exc:
            log.debug("padded batch failed", exc_info=True)
            problems.append(f"generate() on the padded batch {_exc(exc)}")
        finally:
            tokenizer.padding_side, tokenizer.pad_token = saved
        ok = not problems
        self.generation["padded_batch_match"] = ok
        self.generation["padded_batch"] = {**info, "problems": problems}
        detail = (
            "a left-padded batch of all prompts equals the prompts one by one"
            if ok
            else "padded batch differs from the prompts one by one: " + "; ".join(problems)
        )
        self.gates.append(GateResult("generation.padded_batch", ok, ok, True, detail))

    def _sampling(self, model, tokenizer, pad, eos) -> None:
        import torch

        prompt = self.prompts[0]
        info: dict[str, Any] = {**SAMPLING, "prompt": prompt, "tokens": 0, "stopped": None, "text": ""}
        problem = None
        try:
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
        except Exception as exc:
            log.debug("sampling failed", exc_info=True)
            problem = f"generate(do_sample=True) {_exc(exc)}"
        self.generation["sampling"] = info
        ok = problem is None
        detail = (
            f"seeded sampling stopped at {info['stopped']} after {info['tokens']} tokens"
            if ok
            else f"seeded sampling: {problem}"
        )
        self.gates.append(
            GateResult("generation.sampling", ok, info["stopped"], "eos or max_new_tokens", detail)
        )

    def _pipeline(self, model, tokenizer, runs) -> None:
        from transformers import pipeline

        prompt = self.prompts[0]
        info: dict[str, Any] = {"prompt": prompt}
        problem = None
        try:
            pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
            out = pipe(prompt, max_new_tokens=self.max_new_tokens, do_sample=False, return_full_text=False)
            got = out[0]["generated_text"]
            info["text"] = got
            if runs[0] is not None:
                expected = tokenizer.decode(runs[0].ids, skip_special_tokens=True)
                if got != expected:
                    problem = f"pipeline text {got[:60]!r} differs from generate()'s {expected[:60]!r}"
        except Exception as exc:
            log.debug("pipeline failed", exc_info=True)
            problem = f'pipeline("text-generation") {_exc(exc)}'
        ok = problem is None
        self.generation["pipeline_ok"] = ok
        self.generation["pipeline"] = info
        detail = 'pipeline("text-generation") gives generate()\'s greedy text' if ok else problem
        self.gates.append(GateResult("generation.pipeline", ok, ok, True, detail))


# --------------------------------------------------------------------------- post-upload check


def check_generation_against_report(
    model: str | Path,
    *,
    revision: str | None,
    report: dict,
    allowed_extra_files: Sequence[str] = ALLOWED_EXTRA_FILES,
) -> list[str]:
    """Greedy-generate every case of a passing report again from ``model`` and compare token for token.

    ``model`` is a folder or a Hub repo id (``revision``: the commit or tag to check). A Hub revision is
    downloaded into a fresh temporary cache, and the remote code is imported from a fresh modules cache, so
    what is checked is what a user gets. The files must be those the report verified (same SHA-256; extra
    files only from ``allowed_extra_files``), each prompt must tokenize to the recorded ``input_ids``, and
    ``generate()`` must give the recorded ``candidate_ids`` (equal to the reference's for a passing report).

    Returns:
        One line per problem; empty when everything matches.
    """
    from release.verify.loading import candidate_source, folder_file_hashes, fresh_remote_code_modules

    try:
        cases, max_new_tokens, expected_files = _report_cases(report)
    except (KeyError, TypeError, ValueError) as exc:
        return [f"report: not a usable verification report ({exc})"]
    if report.get("passed") is not True:
        return ["report: the verification did not pass; there is nothing verified to compare with"]
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


def _report_cases(report: dict) -> tuple[list[dict], int, dict[str, str]]:
    generation = report["generation"]
    max_new_tokens = int(generation["max_new_tokens"])
    cases = list(generation["cases"])
    if not cases:
        raise ValueError("generation.cases is empty")
    for i, case in enumerate(cases):
        if not isinstance(case.get("prompt"), str) or not isinstance(case.get("candidate_ids"), list):
            raise ValueError(f"generation.cases[{i}] has no prompt or candidate_ids")
        if not isinstance(case.get("input_ids"), list):
            raise ValueError(f"generation.cases[{i}] has no input_ids")
    files = report["model"]["files"]
    if not isinstance(files, dict) or not files:
        raise ValueError("model.files is missing or empty")
    return cases, max_new_tokens, dict(files)


def _regenerate(source, cases: list[dict], max_new_tokens: int) -> list[str]:
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
            prompt = case["prompt"]
            try:
                ids = _encode(tokenizer, prompt)
                if ids != case["input_ids"]:
                    verified = case["input_ids"]
                    failures.append(
                        f"generation: {prompt!r} tokenizes to {ids}, the verified tokenizer gave {verified}"
                    )
                    continue
                got = candidate_greedy(model, ids, max_new_tokens=max_new_tokens, pad_token_id=pad).ids
            except Exception as exc:
                log.debug("generate failed", exc_info=True)
                failures.append(f"generation: {prompt!r}: generate() {_exc(exc)}")
                continue
            expected = [int(t) for t in case["candidate_ids"]]
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


def _load_training_tokenizer(name: str):
    from transformers import AutoTokenizer

    from release.auth import read_token

    try:
        return AutoTokenizer.from_pretrained(name, token=read_token())
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


def _exc(exc: BaseException) -> str:
    from release._io import first_line

    message = first_line(exc, limit=300) if str(exc).strip() else ""
    return f"raised {type(exc).__name__}" + (f": {message}" if message else "")
