"""The explicit map from training-checkpoint keys to the transformers model's keys. Pure: no I/O.

Everything works from tensor *shapes* first (``infer_architecture``, ``check_source_shapes``) so the converter can
validate a checkpoint before it reads a single weight, including a distributed checkpoint that only offers
metadata. ``plan_conversion`` then lists, for every output tensor, the source tensors it is made of; the
converter materialises them one at a time. ``convert_state_dict`` applies the plan in memory (tests, small models).

Rules: every source key is either mapped or explicitly dropped (the per-head ``tril`` causal-mask buffers);
missing, unexpected or misshapen keys are errors that list the keys. There are no defaults and no fallbacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_HEAD_KEY = re.compile(r"^blocks\.0\.self_attention\.heads\.(\d+)\.")


class MappingError(ValueError):
    """The checkpoint's keys or shapes do not fit the model. ``problems`` lists one entry per offending key."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class Architecture:
    """Model dimensions, all read from the checkpoint's tensors."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    ffn_type: str  # "swiglu" | "relu"

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def hf_config_kwargs(self) -> dict:
        """Arguments for ``CustomTransformerConfig``."""
        return {
            "vocab_size": self.vocab_size,
            "n_positions": self.block_size,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "ffn_type": self.ffn_type,
        }


@dataclass(frozen=True)
class TargetTensor:
    """One tensor of the transformers model: ``sources`` concatenated along dim 0 (a single source = a copy)."""

    name: str
    sources: tuple[str, ...]
    shape: tuple[int, ...]


def infer_architecture(shapes: Mapping[str, Sequence[int]]) -> Architecture:
    """Read the architecture from tensor shapes (vocab from embedding rows, heads from head modules, ...)."""
    missing = [k for k in ("token_embedding.weight", "position_embedding.weight") if k not in shapes]
    if missing:
        raise MappingError(
            "not a checkpoint of this model: no " + ", ".join(missing), [f"missing: {k}" for k in missing]
        )
    vocab_size, n_embd = (int(d) for d in shapes["token_embedding.weight"])
    block_size, pos_embd = (int(d) for d in shapes["position_embedding.weight"])
    if pos_embd != n_embd:
        raise MappingError(
            f"position_embedding width {pos_embd} differs from token_embedding width {n_embd}",
            ["misshapen: position_embedding.weight"],
        )
    layers = sorted({int(m.group(1)) for k in shapes if (m := _BLOCK_KEY.match(k))})
    if not layers:
        raise MappingError("not a checkpoint of this model: no blocks.N.* keys", ["missing: blocks.0.*"])
    if layers != list(range(len(layers))):
        gaps = sorted(set(range(max(layers) + 1)) - set(layers))
        raise MappingError(
            f"blocks are not numbered 0..{max(layers)}: missing {gaps}",
            [f"missing: blocks.{i}.*" for i in gaps],
        )
    heads = sorted({int(m.group(1)) for k in shapes if (m := _HEAD_KEY.match(k))})
    if not heads or heads != list(range(len(heads))):
        raise MappingError(
            "attention heads of blocks.0 are missing or not numbered 0..H-1",
            ["missing: blocks.0.self_attention.heads.*"],
        )
    if "blocks.0.feed_forward.w1.weight" in shapes:
        ffn_type = "swiglu"
    elif "blocks.0.feed_forward.net.0.weight" in shapes:
        ffn_type = "relu"
    else:
        raise MappingError(
            "cannot tell the feed-forward variant: neither blocks.0.feed_forward.w1 (SwiGLU) nor "
            "blocks.0.feed_forward.net.0 (ReLU) is present",
            ["missing: blocks.0.feed_forward.*"],
        )
    if n_embd % len(heads):
        raise MappingError(f"n_embd {n_embd} is not divisible by the {len(heads)} heads found")
    return Architecture(
        vocab_size=vocab_size,
        block_size=block_size,
        n_layer=len(layers),
        n_head=len(heads),
        n_embd=n_embd,
        ffn_type=ffn_type,
    )


def expected_source_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Every key the training module's state dict has, with its shape (the ``tril`` buffers included)."""
    C, V, P, hs = arch.n_embd, arch.vocab_size, arch.block_size, arch.head_size
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": (V, C),
        "position_embedding.weight": (P, C),
    }
    for i in range(arch.n_layer):
        b = f"blocks.{i}"
        for h in range(arch.n_head):
            for proj in ("key_proj", "query_proj", "value_proj"):
                shapes[f"{b}.self_attention.heads.{h}.{proj}.weight"] = (hs, C)
            shapes[f"{b}.self_attention.heads.{h}.tril"] = (P, P)
        shapes[f"{b}.self_attention.projection.weight"] = (C, C)
        shapes[f"{b}.self_attention.projection.bias"] = (C,)
        if arch.ffn_type == "swiglu":
            for w in ("w1", "w2"):
                shapes[f"{b}.feed_forward.{w}.weight"] = (4 * C, C)
                shapes[f"{b}.feed_forward.{w}.bias"] = (4 * C,)
            shapes[f"{b}.feed_forward.w3.weight"] = (C, 4 * C)
            shapes[f"{b}.feed_forward.w3.bias"] = (C,)
        else:
            shapes[f"{b}.feed_forward.net.0.weight"] = (4 * C, C)
            shapes[f"{b}.feed_forward.net.0.bias"] = (4 * C,)
            shapes[f"{b}.feed_forward.net.2.weight"] = (C, 4 * C)
            shapes[f"{b}.feed_forward.net.2.bias"] = (C,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[f"{b}.{ln}.weight"] = (C,)
            shapes[f"{b}.{ln}.bias"] = (C,)
    shapes["layer_norm.weight"] = (C,)
    shapes["layer_norm.bias"] = (C,)
    shapes["lm_head.weight"] = (V, C)
    shapes["lm_head.bias"] = (V,)
    return shapes


def dropped_keys(arch: Architecture) -> list[str]:
    """Source keys deliberately not converted: the causal-mask buffers (SDPA builds the mask itself)."""
    return [
        f"blocks.{i}.self_attention.heads.{h}.tril" for i in range(arch.n_layer) for h in range(arch.n_head)
    ]


def check_source_shapes(shapes: Mapping[str, Sequence[int]], arch: Architecture) -> None:
    """Raise MappingError listing every missing, unexpected and misshapen key. Silent when all fit."""
    expected = expected_source_shapes(arch)
    problems = [f"missing: {k}" for k in expected if k not in shapes]
    problems += [f"unexpected: {k}" for k in shapes if k not in expected]
    problems += [
        f"misshapen: {k} is {tuple(shapes[k])}, expected {expected[k]}"
        for k in expected
        if k in shapes and tuple(int(d) for d in shapes[k]) != expected[k]
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise MappingError(f"checkpoint does not match the model: {shown}", problems)


def plan_conversion(arch: Architecture) -> list[TargetTensor]:
    """The transformers model's tensors, in a fixed order, each with the source keys it is built from."""
    C, V, P = arch.n_embd, arch.vocab_size, arch.block_size
    plan = [
        TargetTensor("model.embed_tokens.weight", ("token_embedding.weight",), (V, C)),
        TargetTensor("model.embed_positions.weight", ("position_embedding.weight",), (P, C)),
    ]
    for i in range(arch.n_layer):
        src, dst = f"blocks.{i}", f"model.layers.{i}"
        heads = range(arch.n_head)
        plan += [
            TargetTensor(f"{dst}.input_layernorm.weight", (f"{src}.layer_norm1.weight",), (C,)),
            TargetTensor(f"{dst}.input_layernorm.bias", (f"{src}.layer_norm1.bias",), (C,)),
        ]
        # One training head per head_size rows, heads in order: a column split of these keeps whole heads.
        plan += [
            TargetTensor(
                f"{dst}.self_attn.{target}.weight",
                tuple(f"{src}.self_attention.heads.{h}.{source}.weight" for h in heads),
                (C, C),
            )
            for target, source in (("q_proj", "query_proj"), ("k_proj", "key_proj"), ("v_proj", "value_proj"))
        ]
        plan += [
            TargetTensor(
                f"{dst}.self_attn.o_proj.weight", (f"{src}.self_attention.projection.weight",), (C, C)
            ),
            TargetTensor(f"{dst}.self_attn.o_proj.bias", (f"{src}.self_attention.projection.bias",), (C,)),
            TargetTensor(f"{dst}.post_attention_layernorm.weight", (f"{src}.layer_norm2.weight",), (C,)),
            TargetTensor(f"{dst}.post_attention_layernorm.bias", (f"{src}.layer_norm2.bias",), (C,)),
        ]
        ff = f"{src}.feed_forward"
        if arch.ffn_type == "swiglu":
            pairs = [("gate_proj", "w1"), ("up_proj", "w2"), ("down_proj", "w3")]
        else:
            pairs = [("up_proj", "net.0"), ("down_proj", "net.2")]
        for target, source in pairs:
            out_f, in_f = (C, 4 * C) if target == "down_proj" else (4 * C, C)
            plan.append(TargetTensor(f"{dst}.mlp.{target}.weight", (f"{ff}.{source}.weight",), (out_f, in_f)))
            plan.append(TargetTensor(f"{dst}.mlp.{target}.bias", (f"{ff}.{source}.bias",), (out_f,)))
    plan += [
        TargetTensor("model.norm.weight", ("layer_norm.weight",), (C,)),
        TargetTensor("model.norm.bias", ("layer_norm.bias",), (C,)),
        TargetTensor("lm_head.weight", ("lm_head.weight",), (V, C)),
        TargetTensor("lm_head.bias", ("lm_head.bias",), (V,)),
    ]
    return plan


def build_target(target: TargetTensor, get_source) -> torch.Tensor:
    """Materialise one output tensor; ``get_source(key)`` returns a source tensor (may be mmap-backed)."""
    parts = [get_source(k) for k in target.sources]
    tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    if tuple(tensor.shape) != target.shape:  # guards the plan itself; check_source_shapes ran before
        raise MappingError(f"{target.name}: built shape {tuple(tensor.shape)}, expected {target.shape}")
    return tensor


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """Training state dict -> (architecture, transformers state dict), strictly checked. In memory."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    arch = infer_architecture(shapes)
    check_source_shapes(shapes, arch)
    return arch, {t.name: build_target(t, state_dict.__getitem__).clone() for t in plan_conversion(arch)}
