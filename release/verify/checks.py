"""The numerical side of verification: what each model computes, and how the two are compared.

Compute is what a 1B-parameter release runs short of; memory is the constraint. The two models are never alive
together, and each does only what the comparison needs. The candidate runs first: its parity logits go to a
temporary file (``Spill``), read back a few MiB at a time later; it scores the evaluation text; it decodes
greedily with its cache. Then the reference runs the same parity inputs and compares as it goes, scores the
same number of tokens, and checks each greedy continuation by teacher forcing (``teacher_forced_greedy``: one
forward over prompt + continuation instead of one full forward per generated token). Per-layer hidden states
are computed only when parity failed (``spill_reference_hidden_states``, then ``locate_divergence`` on the
candidate loaded again). No forward call produces more logits than the budget (``logits_budget``: 1/16 of the
weights' bytes, at least 8 MiB), whatever the vocabulary and context:

- the reference's ``lm_head`` is applied by position chunks to the normalised hidden states its own forward
  computed (a pre-hook hands the forward's own ``lm_head`` call just the last position);
- the candidate is called as users call it, one plain forward per input; where its logits would exceed the
  budget, its own output layer (``get_output_embeddings()``) is cut to the last position inside that forward
  and applied by position chunks afterwards, the same way.

Every reduction over the vocabulary runs on chunks of ``CHUNK_BYTES``, and freed memory is really given back
(``heap_without_retention``, ``trim_heap``): glibc would otherwise keep freed activations resident.

Perplexity uses non-overlapping windows of the context length (stride = window): inside a window each token is
predicted from the tokens before it in that window; the first token of a window is not scored. Both sides score
the first ``perplexity_tokens`` tokens of the text (``perplexity_ids``; 2,048 by default), their logits made by
position chunks like parity's. This is exactly as good as a sliding window for comparing two implementations of
one model, and much cheaper. The first window, where it fills the context, is also parity's full-context row
(``make_parity_inputs``): one forward on each side serves both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

PARITY_SEED = 1234  # torch.Generator seed of the random parity inputs
PARITY_BATCH = 2  # rows of each short random parity input (the full-context one has 1)
SHORT_PARITY_LENGTH = 8  # tokens of the short random parity input of PARITY_BATCH rows
MIN_LOGITS_BUDGET = 8 * 2**20  # float32 logits of one forward call, at least (see logits_budget)
CHUNK_BYTES = 2**20  # one float64 [positions, vocab] block in reductions over the vocabulary
TOPK = 8  # candidate logits kept per greedy step, to judge near ties of the padded batch


# --------------------------------------------------------------------------- spill file


class Spill:
    """Float32 tensors written to a temporary folder and read back in row ranges (bounded memory)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="release-verify-spill-")
        self._shapes: dict[str, list[int]] = {}

    def close(self) -> None:
        self._dir.cleanup()

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _path(self, key: str) -> Path:
        return Path(self._dir.name) / f"{key}.f32"

    def append(self, key: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` along dim 0 (all appends of a key share the trailing shape)."""
        data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        shape = self._shapes.setdefault(key, [0, *tensor.shape[1:]])
        if list(tensor.shape[1:]) != shape[1:]:
            raise ValueError(f"spill {key}: shape {tuple(tensor.shape)} does not continue {shape}")
        with open(self._path(key), "ab") as f:
            data.tofile(f)
        shape[0] += tensor.shape[0]

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` along dim 0."""
        shape = self._shapes[key]
        row = math.prod(shape[1:])
        count = (stop - start) * row
        data = np.fromfile(self._path(key), dtype=np.float32, count=count, offset=start * row * 4)
        return torch.from_numpy(data).view(stop - start, *shape[1:])


def logits_budget(weights_bytes: int) -> int:
    """Bytes of logits (and activations) one forward call may produce: 1/16 of the weights, >= 8 MiB."""
    return max(MIN_LOGITS_BUDGET, weights_bytes // 16)


def _glibc_function(name: str):
    try:
        import ctypes

        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):  # not glibc (or no C library to open): nothing to do
        return None


_MALLOC_TRIM = _glibc_function("malloc_trim")
_MALLOPT = _glibc_function("mallopt")
_M_MMAP_THRESHOLD = -3
HEAP_MMAP_THRESHOLD = 2**20  # allocations from 1 MiB up get their own mapping, returned to the system on free


@contextlib.contextmanager
def heap_without_retention() -> Iterator[None]:
    """Within: glibc maps every allocation of 1 MiB or more on its own, and unmaps it when it is freed.

    glibc's default threshold for that starts at 128 KiB and rises (up to 32 MiB) each time a mapped chunk is
    freed, so after the first forward pass the MiB-sized activations of the next ones come from the heap, where
    freed space is kept and fragments: on the 85M-parameter benchmark that is ~50 MB of peak RSS, as much as the
    logits budget. A fixed threshold costs a page fault per fresh page (~10% of verify's time). On exit the
    threshold is set back to glibc's initial 128 KiB (which turns its self-raising off for the rest of the
    process: large allocations stay mapped, which is harmless). Elsewhere than glibc this does nothing.
    """
    if _MALLOPT is None:
        yield
        return
    _MALLOPT(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
    try:
        yield
    finally:
        _MALLOPT(_M_MMAP_THRESHOLD, 128 * 1024)


def trim_heap() -> None:
    """Give freed heap pages back to the system (glibc's ``malloc_trim``; a no-op elsewhere).

    What ``heap_without_retention`` leaves in the heap (allocations under 1 MiB) is freed with ``free()`` and kept
    by glibc, interleaved with live objects; trimming after each forward pass returns the whole free pages. It
    costs a few milliseconds.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def return_freed_memory() -> None:
    """After the reference is deleted: collect it and trim the heap, so the candidate starts from a clean slate."""
    import gc

    gc.collect()
    trim_heap()


def rows_per_forward(batch: int, length: int, *, width: int, n_layer: int, budget: int) -> int:
    """How many rows of a (batch, length) input one forward call may take, its activations within ``budget``.

    Per position a forward keeps every layer's hidden state (``output_hidden_states``) and, inside a layer,
    the attention scores of a row (the training module materialises them) and the feed-forward's three 4x-wide
    intermediates.
    """
    per_position = 4 * ((n_layer + 1) * width + 12 * width + 3 * length)
    return max(1, min(batch, budget // max(1, length * per_position)))


def position_chunks(length: int, positions_per_chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(length)`` in steps of ``positions_per_chunk`` (>= 1)."""
    step = max(1, positions_per_chunk)
    return [(s, min(s + step, length)) for s in range(0, length, step)]


def share_causal_masks(model, ckpt, *, device: torch.device | str = "cpu") -> int:
    """Make the reference's per-head ``tril`` buffers one shared tensor, where they are the standard mask.

    The training module keeps a (block_size, block_size) float mask per head, read from the checkpoint: at a
    1024-token context that is 4 MiB per head, 268 MB for 8 layers of 8 heads, most of a small model's weights
    again, and every full-context forward pages all of it in. Each buffer is compared with ``tril(ones)`` and
    its file pages are dropped again (``ckpt.release``) before the next is read; only buffers equal to it are
    replaced, so the module computes exactly what it computed before. The shared mask is made on ``device``,
    where moving the module then leaves it one tensor. Returns how many were shared.
    """
    size = model.config.block_size
    standard = torch.tril(torch.ones(size, size))
    shared = standard.to(device)
    count = 0
    for block in model.blocks:
        for head in block.self_attention.heads:
            mask = head.tril
            same = (
                mask.shape == standard.shape and mask.dtype == standard.dtype and torch.equal(mask, standard)
            )
            ckpt.release(mask)
            if same:
                head.tril = shared
                count += 1
    return count


# --------------------------------------------------------------------------- inputs


@dataclass
class ParityInput:
    """Rows both models run: their logits compared (``compared``), scored for perplexity (``scored``), or both."""

    key: str
    ids: torch.Tensor  # (B, T) int64
    kind: str  # "random" | "prompt" | "text" (a perplexity window of the evaluation text)
    prompt: str | None = None
    compared: bool = True
    scored: bool = False

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "batch": int(self.ids.shape[0]),
            "length": int(self.ids.shape[1]),
        }
        if self.kind == "random":
            d["seed"] = PARITY_SEED
        elif self.kind == "prompt":
            d["prompt"] = self.prompt
        return d


def make_parity_inputs(
    vocab_size: int,
    block_size: int,
    prompts: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    text_row: Sequence[int] | None = None,
) -> list[ParityInput]:
    """Seeded random ids, one full-context row and each tokenized prompt.

    Two short inputs in batches of ``PARITY_BATCH`` (1 token: no attention at all; ``SHORT_PARITY_LENGTH``
    tokens: rows that must not see each other) and one full-context row: every position embedding, the
    longest attention, the whole causal mask. That row is ``text_row`` (the evaluation text's first perplexity
    window) when it fills the context: one forward on each side then serves parity and perplexity. Otherwise it
    is seeded random ids. A second full-context row or a half-context pair would test nothing these do not, at
    the price of another full context on each side.
    """
    generator = torch.Generator().manual_seed(PARITY_SEED)
    text = text_row is not None and len(text_row) == block_size
    shapes = [(PARITY_BATCH, 1), (PARITY_BATCH, min(SHORT_PARITY_LENGTH, block_size))]
    if not text:
        shapes.append((1, block_size))
    inputs, seen = [], set()
    for batch, length in shapes:
        if length in seen:  # a context of 1 or of SHORT_PARITY_LENGTH tokens
            continue
        seen.add(length)
        ids = torch.randint(0, vocab_size, (batch, length), generator=generator)
        inputs.append(ParityInput(f"random{length}", ids, "random"))
    if text:
        inputs.append(ParityInput("text0", torch.tensor([list(text_row)]), "text", scored=True))
    for i, (prompt, ids) in enumerate(zip(prompts, prompt_ids, strict=True)):
        inputs.append(ParityInput(f"prompt{i}", torch.tensor([list(ids)]), "prompt", prompt))
    return inputs


def eval_windows(ids: Sequence[int], block_size: int) -> list[list[int]]:
    """Non-overlapping windows of ``block_size`` tokens; a last window of 1 token predicts nothing."""
    windows = [list(ids[i : i + block_size]) for i in range(0, len(ids), block_size)]
    return [w for w in windows if len(w) >= 2]


def perplexity_ids(ids: Sequence[int], *, window: int, tokens: int) -> list[int]:
    """The first ids of ``ids`` whose ``eval_windows`` score exactly ``tokens`` tokens (all of them if fewer).

    Each window of ``window`` ids scores ``window - 1`` tokens (its first one has nothing before it).
    """
    full, rest = divmod(tokens, window - 1)
    return list(ids[: full * window + (rest + 1 if rest else 0)])


def text_inputs(windows: Sequence[Sequence[int]]) -> list[ParityInput]:
    """Perplexity windows as scored-only inputs, one batch per length (``rows_per_forward`` splits it): the full
    windows together, a shorter last one alone."""
    batches: dict[int, list[list[int]]] = {}
    for w in windows:
        batches.setdefault(len(w), []).append(list(w))
    return [
        ParityInput(f"text{n}", torch.tensor(b), "text", compared=False, scored=True)
        for n, b in batches.items()
    ]


@dataclass
class Scores:
    """Summed next-token negative log-likelihood (float64) and the number of tokens it covers."""

    total: float = 0.0
    tokens: int = 0

    def add(self, logits: torch.Tensor, ids: torch.Tensor, start: int) -> None:
        """Score ``logits`` (n, V) of positions ``start``.. of the row ``ids`` (T,): each predicts the next id, the
        row's last position nothing. Reduced in chunks of ``CHUNK_BYTES``."""
        stop = min(start + logits.shape[0], ids.shape[0] - 1)
        step = max(1, CHUNK_BYTES // (logits.shape[-1] * 8))
        for i in range(start, stop, step):
            j = min(i + step, stop)
            part = logits[i - start : j - start].double()
            self.total += F.cross_entropy(part, ids[i + 1 : j + 1].to(part.device), reduction="sum").item()
            self.tokens += j - i

    def figures(self) -> tuple[float, int]:
        return self.total, self.tokens


# --------------------------------------------------------------------------- the reference's logits


@contextlib.contextmanager
def _lm_head_on_last_position(head) -> Iterator[dict[str, Any]]:
    """While inside, the forward of a model whose output layer is ``head`` applies it to the last position only,
    and hands out what it was given for every position (``state["normed"]``, (b, T, C)): the normalised hidden
    states, for ``_chunked_logits``."""
    state: dict[str, Any] = {"cut": True}

    def last_position_only(module, args):
        if not state["cut"]:
            return None
        state["normed"] = args[0]
        return (args[0][:, -1:, :],)

    hook = head.register_forward_pre_hook(last_position_only)
    try:
        yield state
    finally:
        hook.remove()


def _chunked_logits(
    head, normed: torch.Tensor, state: dict[str, Any], *, budget: int, vocab_size: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(s, e, head(normed[:, s:e]))``: the output layer's own computation, at most ``budget`` bytes of
    logits at a time (with its hook passing the input through)."""
    for s, e in position_chunks(normed.shape[1], budget // (normed.shape[0] * vocab_size * 4)):
        state["cut"] = False
        try:
            logits = head(normed[:, s:e])  # (b, e-s, V)
        finally:
            state["cut"] = True
        yield s, e, logits


# --------------------------------------------------------------------------- candidate side


@torch.no_grad()
def candidate_logits(
    model,
    inputs: Sequence[ParityInput],
    spill: Spill,
    *,
    budget: int,
    vocab_size: int,
    width: int,
    scores: Scores,
) -> int:
    """Run the candidate on ``inputs`` as users call it: spill the logits of the compared ones, score the scored
    ones into ``scores``. Returns the compared positions.

    A plain forward (``use_cache=False``, as for any scoring). Where its logits would exceed the budget (a
    full-context row of a large vocabulary on a small model), the same forward runs with its output layer
    (``get_output_embeddings()``) cut to the last position, and that layer is then applied by position chunks
    to what the forward handed it: one forward's compute, the budget's memory. Whatever the forward does after
    its output layer is still checked on the inputs whose logits fit (the short ones and the prompts).
    """
    head = model.get_output_embeddings()
    device = input_device(model)
    positions = 0
    with _lm_head_on_last_position(head) as state:
        for inp in inputs:
            B, T = inp.ids.shape
            rows = rows_per_forward(B, T, width=width, n_layer=0, budget=budget)
            for r0 in range(0, B, rows):
                ids = inp.ids[r0 : r0 + rows]
                b = ids.shape[0]
                fits = b * T * vocab_size * 4 <= budget
                state["cut"] = not fits
                out = model(input_ids=ids.to(device), use_cache=False)
                if fits:
                    chunks = iter([(0, T, out.logits)])
                else:
                    chunks = _chunked_logits(
                        head, state.pop("normed"), state, budget=budget, vocab_size=vocab_size
                    )
                for s, e, logits in chunks:
                    if logits.shape[-1] != vocab_size or logits.shape[1] != e - s:
                        raise ValueError(
                            f"candidate gives logits of shape {tuple(logits.shape)} for {e - s} positions; "
                            f"the reference has {vocab_size} per position"
                        )
                    for row in range(b):
                        if inp.compared:
                            spill.append(f"{inp.key}.r{r0 + row}.logits", logits[row])  # (e-s, V)
                        if inp.scored:
                            scores.add(logits[row], ids[row], s)
                    positions += b * (e - s) if inp.compared else 0
                    del logits
                del out, chunks
                state.pop("normed", None)
                trim_heap()
    return positions


# --------------------------------------------------------------------------- reference side: parity


@dataclass(frozen=True)
class ParityFigures:
    """The reference's logits against the candidate's spilled ones (a ``report.LogitFigures``), and, where
    ``locate_divergence`` ran (``located``), each hidden state's difference."""

    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    top1_agreement: float = 1.0
    kl_divergence: float = 0.0
    positions: int = 0
    per_layer_max_abs_diff: list[float] | None = None
    per_layer_rel_diff: list[float] | None = None
    first_divergent_hidden: int | None = None  # index into the hidden states (0 = embeddings)
    located: bool = False

    def location(self) -> str | None:
        """Where the first divergence is, in words; None without per-layer figures."""
        if self.first_divergent_hidden is None:
            if self.per_layer_rel_diff is None:
                return None
            return "final norm or lm_head"
        if self.first_divergent_hidden == 0:
            return "embeddings"
        return f"layer {self.first_divergent_hidden - 1}"

    @property
    def first_divergent_layer(self) -> int | None:
        if self.first_divergent_hidden is None or self.first_divergent_hidden == 0:
            return None
        return self.first_divergent_hidden - 1


@torch.no_grad()
def compare_logits(
    model, inputs: Sequence[ParityInput], spill: Spill, *, budget: int, scores: Scores
) -> ParityFigures:
    """Run the reference on ``inputs``: compare the logits of the compared ones with the candidate's spilled
    ones, score the scored ones into ``scores``."""
    cfg = model.config
    V = cfg.vocab_size
    chunk = max(1, CHUNK_BYTES // (V * 8))
    device = input_device(model)
    max_abs, sum_abs, n_el, agree, kl_sum, positions = 0.0, 0.0, 0, 0, 0.0, 0
    with _lm_head_on_last_position(model.lm_head) as state:
        for inp in inputs:
            B, T = inp.ids.shape
            rows = rows_per_forward(B, T, width=cfg.n_embd, n_layer=0, budget=budget)
            for r0 in range(0, B, rows):
                ids = inp.ids[r0 : r0 + rows]
                model(ids.to(device))
                normed = state.pop("normed")
                for s, e, logits in _chunked_logits(
                    model.lm_head, normed, state, budget=budget, vocab_size=V
                ):
                    for row in range(ids.shape[0]):
                        if inp.scored:
                            scores.add(logits[row], ids[row], s)
                        if not inp.compared:
                            continue
                        for i in range(0, e - s, chunk):
                            # Differences and argmax in float32 (the logits' own precision; widening is exact
                            # and keeps the order), sums and the log-probabilities of the KL in float64.
                            ref = logits[row, i : i + chunk].float()
                            key = f"{inp.key}.r{r0 + row}.logits"
                            cand = spill.rows(key, s + i, s + i + ref.shape[0]).to(ref.device, torch.float32)
                            diff = (cand - ref).abs_()
                            max_abs = _max(max_abs, float(diff.max()))
                            sum_abs += float(diff.sum(dtype=torch.float64))
                            n_el += diff.numel()
                            agree += int((cand.argmax(-1) == ref.argmax(-1)).sum())
                            lp_ref = F.log_softmax(ref, -1, dtype=torch.float64)
                            lp_cand = F.log_softmax(cand, -1, dtype=torch.float64)
                            kl_sum += float(F.kl_div(lp_cand, lp_ref, reduction="sum", log_target=True))
                            positions += ref.shape[0]
                            del cand, ref, diff, lp_ref, lp_cand
                    del logits
                del normed
                trim_heap()
    return ParityFigures(
        max_abs_diff=max_abs,
        mean_abs_diff=sum_abs / max(1, n_el),
        top1_agreement=agree / max(1, positions),
        kl_divergence=_at_least_zero(kl_sum / max(1, positions)),  # rounding can dip below 0
        positions=positions,
    )


@torch.no_grad()
def spill_reference_hidden_states(model, inputs: Sequence[ParityInput], spill: Spill, *, budget: int) -> int:
    """Spill the reference's hidden states (embeddings, then each block's output) of every parity input.

    Only when parity failed: ``locate_divergence`` then compares the candidate's with them. Hooks stream each
    hidden state to the spill as soon as it exists (no list of all of them); no logits are made beyond the
    last position. Returns the number of hidden states per input.
    """
    cfg = model.config
    device = input_device(model)
    state: dict[str, Any] = {}

    def spill_hidden(layer: int, h: torch.Tensor) -> None:
        for row in range(h.shape[0]):
            spill.append(f"{state['key']}.r{state['r0'] + row}.h{layer}", h[row])  # (T, C)

    def embeddings(module, args):
        spill_hidden(0, args[0])

    def block_output(layer: int):
        return lambda module, args, output: spill_hidden(layer, output)

    hooks = [model.blocks[0].register_forward_pre_hook(embeddings)]
    hooks += [block.register_forward_hook(block_output(i + 1)) for i, block in enumerate(model.blocks)]
    try:
        with _lm_head_on_last_position(model.lm_head) as last:
            for inp in inputs:
                B, T = inp.ids.shape
                rows = rows_per_forward(B, T, width=cfg.n_embd, n_layer=cfg.n_layer, budget=budget)
                for r0 in range(0, B, rows):
                    state.update(key=inp.key, r0=r0)
                    model(inp.ids[r0 : r0 + rows].to(device))
                    last.pop("normed", None)
                    trim_heap()
    finally:
        for hook in hooks:
            hook.remove()
    return cfg.n_layer + 1


@dataclass
class TeacherForced:
    """The reference's verdict on a greedy continuation, from one forward over prompt + continuation."""

    reference_ids: list[int]  # the reference's greedy tokens, up to and including the first divergence
    divergence: Divergence


@torch.no_grad()
def teacher_forced_greedy(
    model,
    prompt_ids: Sequence[int],
    continuation: Sequence[int],
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    tie_margin: float,
    budget: int,
) -> TeacherForced:
    """Would the reference, decoding greedily from ``prompt_ids``, produce exactly ``continuation``?

    Causal attention: position t's logits depend only on tokens <= t, so one forward over prompt +
    continuation gives every logit greedy decoding would have computed; greedy equality holds iff each argmax
    is the next token, and the reference stops where ``continuation`` stops (at ``eos_token_id`` or after
    ``max_new_tokens``), as ``generate_greedy`` does. The first differing position is reported, with the
    reference's logit margin between its token and the continuation's (a near tie is ``tolerated``).
    """
    cont = [int(t) for t in continuation]
    P = len(prompt_ids)
    seq = torch.tensor([[*prompt_ids, *cont]], device=input_device(model))
    picks, margins = [], []  # per step: the reference's argmax, and logit(argmax) - logit(cont[i])
    with _lm_head_on_last_position(model.lm_head) as state:
        model(seq)
        normed = state.pop("normed")[:, P - 1 :]  # the positions that predict continuation[0], [1], ...
        V = model.config.vocab_size
        for s, e, logits in _chunked_logits(model.lm_head, normed, state, budget=budget, vocab_size=V):
            steps = logits[0].float()
            best = steps.argmax(-1)
            picks += best.tolist()
            for i in range(s, min(e, len(cont))):
                margins.append(float(steps[i - s, best[i - s]] - steps[i - s, cont[i]]))
            del logits, steps
    for i, token in enumerate(cont):
        if i > 0 and eos_token_id is not None and cont[i - 1] == eos_token_id:  # the reference had stopped
            return TeacherForced(cont[:i], Divergence(False, i, None, token))
        if picks[i] != token:
            margin = margins[i]
            div = Divergence(False, i, picks[i], token, margin, tolerated=margin <= tie_margin)
            return TeacherForced([*cont[:i], picks[i]], div)
    stopped = cont and eos_token_id is not None and cont[-1] == eos_token_id
    if len(cont) < max_new_tokens and not stopped:  # the reference would have gone on
        return TeacherForced([*cont, picks[len(cont)]], Divergence(False, len(cont), picks[len(cont)], None))
    return TeacherForced(cont, Divergence(True))


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean negative log-likelihood); inf where that overflows, nan without tokens."""
    if not tokens:
        return float("nan")
    mean = nll_sum / tokens
    return math.exp(mean) if mean < 700 else float("inf")


@torch.no_grad()
def locate_divergence(
    model,
    inputs: Sequence[ParityInput],
    spill: Spill,
    figures: ParityFigures,
    *,
    n_hidden: int,
    width: int,
    hidden_rel_tol: float,
    budget: int,
) -> ParityFigures:
    """``figures`` with the per-layer hidden-state differences and the first hidden state that diverges.

    Run only when the logits disagree, on a candidate loaded again after ``spill_reference_hidden_states``:
    a pass with ``output_hidden_states=True`` (and one position of logits), so a passing verification never
    computes, spills or holds every layer's activations.
    """
    n = n_hidden
    device = input_device(model)
    layer_diff, layer_ref = [0.0] * n, [0.0] * n
    for inp in inputs:
        B, T = inp.ids.shape
        rows = rows_per_forward(B, T, width=width, n_layer=n - 1, budget=budget)
        for r0 in range(0, B, rows):
            ids = inp.ids[r0 : r0 + rows].to(device)
            out = model(input_ids=ids, use_cache=False, output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states
            if hidden is None or len(hidden) != n:
                # The candidate does not report one hidden state per layer: nothing to locate with.
                return dataclasses.replace(figures, located=True)
            for layer, h in enumerate(hidden):
                for row in range(ids.shape[0]):
                    ref_h = spill.rows(f"{inp.key}.r{r0 + row}.h{layer}", 0, T).to(h.device).double()
                    layer_diff[layer] = _max(layer_diff[layer], float((h[row].double() - ref_h).abs().max()))
                    layer_ref[layer] = max(layer_ref[layer], float(ref_h.abs().max()))
            del out, hidden
            trim_heap()
    rel_diff = [d / r if r > 0 else d for d, r in zip(layer_diff, layer_ref, strict=True)]
    return dataclasses.replace(
        figures,
        per_layer_max_abs_diff=layer_diff,
        per_layer_rel_diff=rel_diff,
        first_divergent_hidden=next((i for i, rel in enumerate(rel_diff) if not rel <= hidden_rel_tol), None),
        located=True,
    )


def input_device(model) -> torch.device:
    """Where a model's inputs go: its first parameter's device (accelerate's hooks move them on from there)."""
    return next(model.parameters()).device


def _max(a: float, b: float) -> float:
    """max() that keeps a NaN (Python's max(0.0, nan) is 0.0: a NaN logit would pass as a perfect match)."""
    return a if a != a else b if b != b else max(a, b)


def _at_least_zero(value: float) -> float:
    return 0.0 if value < 0 else value  # NaN stays NaN


# --------------------------------------------------------------------------- candidate side: generation


def normalize_eos(eos: Any) -> set[int]:
    if eos is None:
        return set()
    if isinstance(eos, (list, tuple, set)):
        return {int(e) for e in eos}
    if isinstance(eos, torch.Tensor):
        return {int(e) for e in eos.flatten().tolist()}
    return {int(eos)}


@dataclass
class GreedyRun:
    """One greedy continuation of the candidate and, per generated step, the TOPK logits that chose it."""

    ids: list[int]
    top_values: list[list[float]] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)


@torch.no_grad()
def candidate_greedy(
    model, input_ids: list[int], *, max_new_tokens: int, pad_token_id: int | None
) -> GreedyRun:
    """``generate()`` with its cache, greedy, one prompt; also the TOPK logits of each step."""
    x = torch.tensor([input_ids], device=input_device(model))
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    run = GreedyRun(out.sequences[0, x.shape[1] :].tolist())
    if out.logits:
        step_logits = torch.stack([s[0] for s in out.logits]).float()  # (steps, V)
        top = step_logits.topk(min(TOPK, step_logits.shape[-1]), dim=-1)
        run.top_values, run.top_ids = top.values.tolist(), top.indices.tolist()
    return run


@torch.no_grad()
def candidate_padded_batch(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, pad_token_id: int | None, eos: set[int]
) -> tuple[bool, list[list[int]]]:
    """Greedy ``generate()`` of every prompt in one left-padded batch: whether any row was padded, and each
    row's continuation up to its first eos (to compare with the prompts one by one)."""
    saved = (tokenizer.padding_side, tokenizer.pad_token)
    try:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side, tokenizer.pad_token = saved
    out = model.generate(
        **enc.to(input_device(model)),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_token_id,
    )
    width = enc["input_ids"].shape[1]
    rows = [trim_at_eos(row, eos) for row in out[:, width:].tolist()]
    return bool((enc["attention_mask"] == 0).any()), rows


@torch.no_grad()
def candidate_sampling(
    model,
    input_ids: list[int],
    *,
    seed: int,
    temperature: float,
    top_k: int,
    max_new_tokens: int,
    pad_token_id,
) -> list[int]:
    """Seeded ``generate()`` of one prompt, sampling when ``temperature`` > 0 (else greedy); the global RNG is left
    as it was. The new tokens."""
    ids = torch.tensor([input_ids], device=input_device(model))
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k} if temperature > 0 else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id,
            **{"do_sample": False, **sampling},
        )
    return out[0, ids.shape[1] :].tolist()


@dataclass
class Divergence:
    """How ``actual`` compares with ``expected`` (a greedy run with its step logits)."""

    match: bool
    index: int | None = None  # first differing position
    expected_token: int | None = None
    actual_token: int | None = None
    margin: float | None = None  # expected run's logit(expected token) - logit(actual token); None if unknown
    tolerated: bool = False

    def describe(self, total: int) -> str:
        if self.match:
            return "identical"
        exp = "end" if self.expected_token is None else str(self.expected_token)
        act = "end" if self.actual_token is None else str(self.actual_token)
        margin = "" if self.margin is None else f", logit margin {self.margin:.2e}"
        return f"token {self.index} of {total} differs (expected {exp}, got {act}{margin})"


def compare_greedy(expected: GreedyRun, actual: list[int], *, tie_margin: float) -> Divergence:
    """Token for token; a divergence is tolerated only at a near tie (``tie_margin``) of ``expected``."""
    a, b = expected.ids, actual
    n = min(len(a), len(b))
    index = next((i for i in range(n) if a[i] != b[i]), None)
    if index is None:
        if len(a) == len(b):
            return Divergence(match=True)
        index = n
        return Divergence(
            match=False,
            index=index,
            expected_token=a[index] if index < len(a) else None,
            actual_token=b[index] if index < len(b) else None,
        )
    margin = None
    if index < len(expected.top_ids) and b[index] in expected.top_ids[index]:
        values, ids = expected.top_values[index], expected.top_ids[index]
        margin = values[ids.index(a[index])] - values[ids.index(b[index])] if a[index] in ids else None
    tolerated = margin is not None and margin <= tie_margin
    return Divergence(
        match=False,
        index=index,
        expected_token=a[index],
        actual_token=b[index],
        margin=margin,
        tolerated=tolerated,
    )


def trim_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    """Up to and including the first eos (what one-by-one generation returns for a row that finished)."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids
