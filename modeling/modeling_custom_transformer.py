"""The custom transformer as a transformers model (shipped next to the weights, loaded with trust_remote_code).

Self-contained on purpose: it imports only torch, transformers and its sibling configuration file, because users
load it on machines where the release repo is not installed. It must keep working across the transformers range
the project supports (4.46 up to 5.x), so version differences are handled here explicitly:

- the key/value cache argument (and output field) is ``past_key_values`` up to 5.23 and ``cache`` from 5.24 on
  (``generate`` passes ``cache=``; checked with ``release compat``): ``forward`` accepts both and returns the cache
  under the output field name the installed version defines;
- caches are transformers' own ``Cache`` objects (``DynamicCache``), used only through ``update`` and
  ``get_seq_length``, which both major versions provide;
- fresh weights are initialised through ``transformers.initialization`` when it exists (5.x, which skips weights
  that were loaded from the checkpoint) and ``torch.nn.init`` otherwise (4.x only initialises missing weights).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_custom_transformer import CustomTransformerConfig

try:  # transformers >= 5: init functions that leave already-loaded weights alone
    from transformers import initialization as _init
except ImportError:  # transformers 4.x
    from torch.nn import init as _init

# 5.24 renamed the output field `past_key_values` to `cache`.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _new_dynamic_cache(config: CustomTransformerConfig) -> DynamicCache:
    try:
        return DynamicCache(config=config)  # 5.x
    except TypeError:
        return DynamicCache()  # 4.x


class CustomTransformerAttention(nn.Module):
    """Causal self-attention with one fused QKV projection and PyTorch's scaled_dot_product_attention."""

    def __init__(self, config: CustomTransformerConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        # Rows: [q heads 0..H-1 | k heads 0..H-1 | v heads 0..H-1], each head head_dim rows.
        self.qkv_proj = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=True)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        B, T, C = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(B, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, nh, past+T, hs)
        # attn_mask is None only for an unpadded prompt without a past: plain causal attention.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=attn_mask is None and T > 1,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.o_proj(y))


class CustomTransformerMLP(nn.Module):
    """SwiGLU (`down(silu(gate x) * up x)`) or ReLU (`down(relu(up x))`), inner width 4 * n_embd, with biases."""

    def __init__(self, config: CustomTransformerConfig):
        super().__init__()
        self.ffn_type = config.ffn_type
        if config.ffn_type == "swiglu":
            self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ffn_type == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = F.relu(self.up_proj(x))
        return self.dropout(self.down_proj(h))


class CustomTransformerBlock(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: CustomTransformerConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.self_attn = CustomTransformerAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = CustomTransformerMLP(config)

    def forward(self, hidden_states, attn_mask, cache):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), attn_mask, cache)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class CustomTransformerPreTrainedModel(PreTrainedModel):
    config_class = CustomTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CustomTransformerBlock"]
    _supports_sdpa = True
    _supports_cache_class = True  # 4.x: let generate() hand us a DynamicCache
    _supports_static_cache = False

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            _init.ones_(module.weight)
            _init.zeros_(module.bias)


def _positions_and_mask(
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    past_length: int,
    query_length: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids for the new tokens and the boolean SDPA mask (B or 1, 1, T, past+T); True = may attend.

    Positions come from the 2D padding mask so a left-padded prompt gets the same positions as the prompt alone.
    """
    key_length = past_length + query_length
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                "attention_mask must be a 2D (batch, past + new tokens) padding mask; "
                f"got shape {tuple(attention_mask.shape)}"
            )
        if attention_mask.shape[-1] != key_length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but the cache holds {past_length} "
                f"and {query_length} new tokens were given; pass the mask for all {key_length} positions"
            )
    if position_ids is None:
        if attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_length:]
        else:
            position_ids = torch.arange(past_length, key_length, device=device).unsqueeze(0)

    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and past_length == 0:
        return position_ids, None  # SDPA's is_causal path
    if not padded and query_length == 1:
        return position_ids, None  # one new token may see the whole past
    q_pos = torch.arange(past_length, key_length, device=device)
    k_pos = torch.arange(key_length, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, T, S)
    if padded:
        mask = mask & attention_mask[:, None, None, :].bool()  # (B, 1, T, S)
    # A query at a padding position may see nothing; give it everything so softmax stays finite. Its output is
    # never read (real tokens never attend to padding keys).
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return position_ids, mask


class CustomTransformerModel(CustomTransformerPreTrainedModel):
    """The decoder stack without the LM head; returns the final (normalised) hidden states."""

    def __init__(self, config: CustomTransformerConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.embed_positions = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([CustomTransformerBlock(config, i) for i in range(config.n_layer)])
        self.norm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation and an incrementally filled cache do not mix
        if cache is None:
            cache = past_key_values
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError(
                "the key/value cache must be a transformers Cache (e.g. DynamicCache); legacy tuples are not "
                "supported by this model"
            )
        if use_cache and cache is None:
            cache = _new_dynamic_cache(self.config)
        if not use_cache:
            cache = None

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, T, _ = inputs_embeds.shape
        past_length = cache.get_seq_length() if cache is not None else 0
        position_ids, attn_mask = _positions_and_mask(
            attention_mask, position_ids, past_length, T, inputs_embeds.device
        )
        if T > 0 and int(position_ids.max()) >= self.config.n_positions:
            raise ValueError(
                f"sequence too long: position {int(position_ids.max())} needs max_position_embeddings > "
                f"{int(position_ids.max())}, but this model has {self.config.n_positions}; truncate the input "
                "or lower max_new_tokens"
            )
        hidden_states = self.drop(inputs_embeds + self.embed_positions(position_ids))

        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, attn_mask, None
                )
            else:
                hidden_states = layer(hidden_states, attn_mask, cache)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        hidden_states = self.norm(hidden_states)

        outputs = {
            "last_hidden_state": hidden_states,
            "hidden_states": all_hidden_states,
            _CACHE_FIELD: cache if use_cache else None,
        }
        if not return_dict:
            return tuple(v for v in outputs.values() if v is not None)
        return BaseModelOutputWithPast(**outputs)


class CustomTransformerForCausalLM(CustomTransformerPreTrainedModel, GenerationMixin):
    """The decoder with its biased, untied LM head. ``labels`` give the shifted next-token cross-entropy."""

    def __init__(self, config: CustomTransformerConfig):
        super().__init__(config)
        self.model = CustomTransformerModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ):
        if output_attentions:
            raise ValueError("output_attentions is not supported: attention runs in fused SDPA kernels")
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        base = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache=cache if cache is not None else past_key_values,
        )
        hidden_states = base.last_hidden_state
        if logits_to_keep:  # generate() asks only for the last position's logits
            hidden_states = hidden_states[:, -logits_to_keep:, :]
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1, :].float()
            shift_labels = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100
            )

        outputs = {
            "loss": loss,
            "logits": logits,
            _CACHE_FIELD: getattr(base, _CACHE_FIELD),
            "hidden_states": base.hidden_states,
        }
        if not return_dict:
            return tuple(v for v in outputs.values() if v is not None)
        return CausalLMOutputWithPast(**outputs)


__all__ = ["CustomTransformerForCausalLM", "CustomTransformerModel", "CustomTransformerPreTrainedModel"]
