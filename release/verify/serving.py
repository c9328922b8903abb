"""Serving checks on a loaded model: the static cache and continuous batching give the tokens ``generate`` gives.

Pure functions of a loaded model and token-id prompts (no files, no report): verify runs them in its own process,
``release compat`` in each transformers environment's child. Where the installed transformers (or the model's
code) lacks the feature, the figures say so (``available=False`` with the reason) instead of failing: what does
not exist on a version is not a defect of the release.

``expected`` (each prompt's first greedy tokens, when the caller has them: verify's greedy runs) saves decoding
them again. Both compare greedy decoding with a fixed number of new tokens, prompt by prompt (a prompt that reaches eos
stops there in every mode), so a mismatch names the prompt and the first differing step.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class ServingFigures:
    """One serving mode compared with plain ``generate``: per prompt, whether the new tokens are identical."""

    mode: str  # "static_cache" | "continuous_batching"
    available: bool
    reason: str | None = None  # why not available, in words
    prompts: int = 0
    new_tokens: int = 0
    identical: list[bool] = field(default_factory=list)
    first_difference: list[int | None] = field(default_factory=list)  # step of the first differing token

    @property
    def passed(self) -> bool | None:
        """True/False where the mode ran; None where it is not available on this transformers."""
        return all(self.identical) if self.available else None

    def failures(self) -> list[str]:
        return [
            f"{self.mode}: prompt {i} differs from generate() from new token {step}"
            for i, (same, step) in enumerate(zip(self.identical, self.first_difference, strict=True))
            if not same
        ]


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for step, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return step
    return None if len(a) == len(b) else min(len(a), len(b))


def _greedy_config(model, new_tokens: int):
    from transformers import GenerationConfig

    eos = model.config.eos_token_id
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else eos
    return GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad)


@torch.no_grad()
def _generate_each(model, prompts: Sequence[Sequence[int]], config, **kwargs) -> list[list[int]]:
    out = []
    for prompt in prompts:
        ids = torch.tensor([list(prompt)], device=model.device)
        tokens = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, **kwargs)
        out.append(tokens[0, len(prompt) :].tolist())
    return out


def _compare(mode: str, expected: list[list[int]], got: list[list[int]], new_tokens: int) -> ServingFigures:
    diffs = [_first_difference(e, g) for e, g in zip(expected, got, strict=True)]
    return ServingFigures(
        mode=mode,
        available=True,
        prompts=len(expected),
        new_tokens=new_tokens,
        identical=[d is None for d in diffs],
        first_difference=diffs,
    )


def _left_padded(prompts: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(list(p))
        mask[row, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def check_static_cache(
    model, prompts: Sequence[Sequence[int]], *, new_tokens: int = 16, expected: list[list[int]] | None = None
) -> ServingFigures:
    """``generate(cache_implementation="static")`` on the prompts as one left-padded batch vs plain ``generate``
    per prompt. Not available where the model (on this transformers) does not support a static cache."""
    if not getattr(model, "_supports_static_cache", False) and not getattr(
        model, "_can_compile_fullgraph", False
    ):
        return ServingFigures(
            "static_cache", False, "the model does not support a static cache on this transformers"
        )
    config = _greedy_config(model, new_tokens)
    expected = expected or _generate_each(model, prompts, config)
    ids, mask = _left_padded(prompts, config.pad_token_id, model.device)
    static = copy.deepcopy(config)
    static.cache_implementation = "static"
    batch = model.generate(ids, attention_mask=mask, generation_config=static)
    got = []
    for row, e in enumerate(expected):
        row_tokens = batch[row, ids.shape[1] :].tolist()
        # a row that finished keeps emitting padding in the batch; alone it stops at eos
        got.append(row_tokens[: len(e)] if len(e) < new_tokens else row_tokens)
    return _compare("static_cache", expected, got, new_tokens)


@torch.no_grad()
def check_continuous_batching(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    new_tokens: int = 16,
    expected: list[list[int]] | None = None,
    block_size: int = 32,
) -> ServingFigures:
    """``generate_batch`` (paged attention, continuous batching) vs plain ``generate`` per prompt. The paged cache
    holds exactly the prompts and their new tokens, in blocks of ``block_size`` tokens, rather than what the
    machine's memory allows (at 1B that default would be as large as a tenth of the weights)."""
    if not hasattr(model, "generate_batch"):
        return ServingFigures("continuous_batching", False, "this transformers has no generate_batch")
    if not getattr(model, "_supports_attention_backend", False):
        return ServingFigures(
            "continuous_batching",
            False,
            "the model does not run its attention through transformers' interface",
        )
    if not _plans_its_cache_here():
        return ServingFigures(
            "continuous_batching",
            False,
            "this transformers cannot size its paged cache on this machine (it reads GPU memory, or psutil's)",
        )
    config = _greedy_config(model, new_tokens)
    expected = expected or _generate_each(model, prompts, config)
    max_tokens = max(len(p) for p in prompts) + new_tokens
    num_blocks = sum(-(-(len(p) + new_tokens) // block_size) for p in prompts)
    try:
        from transformers import ContinuousBatchingConfig
    except ImportError:  # versions before it size the paged cache from the generation config
        sizing = {"num_blocks": num_blocks, "block_size": block_size, "max_batch_tokens": max_tokens}
        for name, value in sizing.items():  # read with getattr: GenerationConfig.update() skips unknown keys
            setattr(config, name, value)
        engine = {}
    else:
        size = (
            "page_size"
            if "page_size" in inspect.signature(ContinuousBatchingConfig).parameters
            else "block_size"
        )
        engine = {
            "continuous_batching_config": ContinuousBatchingConfig(
                num_blocks=num_blocks, max_batch_tokens=max_tokens, **{size: block_size}
            )
        }
    with _quiet_planner():
        results = model.generate_batch(
            [list(p) for p in prompts], generation_config=config, progress_bar=False, **engine
        )
    by_prompt = {tuple(r.prompt_ids): list(r.generated_tokens) for r in results.values()}
    got = [by_prompt.get(tuple(p), []) for p in prompts]
    if any(not tokens for tokens, e in zip(got, expected, strict=True) if e):
        # The engine runs in its own thread, which logs and stops on an error of its own (4.53's scheduler
        # changes a dict while iterating it): no tokens to compare, so no verdict on the model.
        return ServingFigures(
            "continuous_batching",
            False,
            "this transformers' generate_batch stopped before every request finished",
        )
    return _compare("continuous_batching", expected, got, new_tokens)


@contextlib.contextmanager
def _quiet_planner():
    """transformers' paged-cache planner logs ERRORs on a CPU without psutil even where it copes: not ours to show."""
    planner = logging.getLogger("ContinuousBatchingLogger")
    level = planner.level
    planner.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        planner.setLevel(level)


def _plans_its_cache_here() -> bool:
    """Whether this transformers' continuous batching can size its paged cache on this machine. Some versions read
    the memory from the GPU alone, others from psutil on the CPU; without either they fail in their own thread."""
    for name in ("utils", "requests", "cache"):  # where versions keep it; 5.x moved it to utils
        try:
            module = importlib.import_module(f"transformers.generation.continuous_batching.{name}")
        except ImportError:
            continue
        breakdown = getattr(module, "get_device_and_memory_breakdown", None)
        if breakdown is not None:
            with _quiet_planner():
                _, total, reserved, allocated = breakdown()
            return bool(total) and total > max(reserved or 0, allocated or 0)
    return True
