"""The training-time model: the module the training script builds, whose state-dict keys ARE the checkpoint format.

This is the ground truth that parity checks compare the transformers implementation against. It is written the
way the training script wrote it (separate attention heads, a ``tril`` buffer per head, two feed-forward
variants) and must not be "improved": any change to names or structure breaks loading real checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.nn import functional as F

FFNType = Literal["swiglu", "relu"]


@dataclass(frozen=True)
class ReferenceConfig:
    vocab_size: int  # rows of token_embedding; not in the training config (GPT-2 BPE: 50257)
    block_size: int  # context length = rows of position_embedding
    n_layer: int
    n_head: int
    n_embd: int
    ffn_type: FFNType = "swiglu"  # "swiglu" (current) or "relu" (older checkpoints)
    dropout: float = 0.0

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class Head(nn.Module):
    """One causal self-attention head."""

    def __init__(self, config: ReferenceConfig):
        super().__init__()
        hs = config.head_size
        self.key_proj = nn.Linear(config.n_embd, hs, bias=False)
        self.query_proj = nn.Linear(config.n_embd, hs, bias=False)
        self.value_proj = nn.Linear(config.n_embd, hs, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(config.block_size, config.block_size)))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, T, _ = x.shape
        k = self.key_proj(x)  # (B, T, hs)
        q = self.query_proj(x)  # (B, T, hs)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = self.dropout(F.softmax(wei, dim=-1))
        return wei @ self.value_proj(x)  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    def __init__(self, config: ReferenceConfig):
        super().__init__()
        self.heads = nn.ModuleList([Head(config) for _ in range(config.n_head)])
        self.projection = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)  # (B, T, n_embd), heads in order
        return self.dropout(self.projection(out))


class SwiGLUFeedForward(nn.Module):
    def __init__(self, config: ReferenceConfig):
        super().__init__()
        self.w1 = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.w2 = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.w3 = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w3(F.silu(self.w1(x)) * self.w2(x)))


class ReLUFeedForward(nn.Module):
    def __init__(self, config: ReferenceConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.ReLU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, config: ReferenceConfig):
        super().__init__()
        self.self_attention = MultiHeadAttention(config)
        self.feed_forward = (
            SwiGLUFeedForward(config) if config.ffn_type == "swiglu" else ReLUFeedForward(config)
        )
        self.layer_norm1 = nn.LayerNorm(config.n_embd)
        self.layer_norm2 = nn.LayerNorm(config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.layer_norm1(x))
        return x + self.feed_forward(self.layer_norm2(x))


class GPTLanguageModel(nn.Module):
    """The training script's decoder. ``forward`` returns (logits, loss) like the training loop expects."""

    def __init__(self, config: ReferenceConfig):
        super().__init__()
        if config.ffn_type not in ("swiglu", "relu"):
            raise ValueError(f"ffn_type must be 'swiglu' or 'relu', got {config.ffn_type!r}")
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])
        self.layer_norm = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)  # with bias, not tied

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, return_hidden_states: bool = False
    ):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.token_embedding(idx) + self.position_embedding(pos)  # (B, T, C)
        hidden_states = [x]
        for block in self.blocks:
            x = block(x)
            hidden_states.append(x)
        logits = self.lm_head(self.layer_norm(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        if return_hidden_states:
            return logits, loss, hidden_states
        return logits, loss

    @torch.no_grad()
    def generate_greedy(self, idx: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None):
        """Full-recompute greedy decoding (no cache), the way the training script samples.

        Stops early only when every row has produced ``eos_token_id``; rows that finished keep emitting eos
        (which matches transformers' padding of finished rows when pad == eos).
        """
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size :])
            nxt = logits[:, -1, :].argmax(dim=-1)
            if eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
        return idx
