"""The custom transformer as a transformers model (shipped next to the weights, loaded with trust_remote_code).

Self-contained on purpose: it imports only torch, transformers and its sibling configuration file, because users
load it on machines where the release repo is not installed. It must keep working across the transformers range
the project supports (4.46 up to 5.x), so version differences are handled here explicitly, by feature detection:

- where transformers has its attention interface (``ALL_ATTENTION_FUNCTIONS``) and mask builder
  (``masking_utils.create_causal_mask``), attention runs through them: any registered kernel (sdpa, flex, flash,
  the paged ones continuous batching uses) can be plugged in, extra keyword arguments from the top ``forward``
  reach it, and static caches, ``torch.compile`` and packed rows work. Elsewhere the model runs its own eager/SDPA
  path with its own masks;
- the key/value cache argument (and output field) is ``past_key_values`` up to 5.23 and ``cache`` from 5.24 on:
  ``forward`` accepts both and returns the cache under the output field name the installed version defines;
- blocks are ``GradientCheckpointingLayer`` where it exists (it owns recomputation there);
- fresh weights are initialised through ``transformers.initialization`` when it exists (5.x, which skips weights
  that were loaded from the checkpoint) and ``torch.nn.init`` otherwise (4.x only initialises missing weights).
"""

from __future__ import annotations

import inspect

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

try:  # the attention interface and the mask builder that goes with it
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
except ImportError:
    create_causal_mask = ALL_ATTENTION_FUNCTIONS = None
HAS_ATTENTION_INTERFACE = create_causal_mask is not None

try:  # int or tensor (1D or per-row 2D) logits_to_keep
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:
    slice_logits_to_keep = None

try:
    from transformers.modeling_layers import GradientCheckpointingLayer as _BlockBase
except ImportError:
    _BlockBase = nn.Module
_LAYERS_CHECKPOINT_THEMSELVES = _BlockBase is not nn.Module

# 5.24 renamed the output field `past_key_values` to `cache`.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# The mask builder's argument names changed across versions (input_embeds/inputs_embeds, past_key_values/cache,
# cache_position dropped); it is called with the names the installed version has.
_MASK_PARAMS = set(inspect.signature(create_causal_mask).parameters) if HAS_ATTENTION_INTERFACE else set()
_MASK_EMBEDS = "inputs_embeds" if "inputs_embeds" in _MASK_PARAMS else "input_embeds"
_MASK_CACHE = "cache" if "cache" in _MASK_PARAMS else "past_key_values"
# 5.x caches take the attention kwargs (the paged cache reads its indices from them and fills them in place).
_CACHE_UPDATE_TAKES_KWARGS = any(
    p.kind is inspect.Parameter.VAR_KEYWORD
    for p in inspect.signature(DynamicCache.update).parameters.values()
)


def _is_compiling() -> bool:
    return torch.compiler.is_compiling() if hasattr(torch, "compiler") else False


def _new_dynamic_cache(config: CustomTransformerConfig) -> DynamicCache:
    try:
        return DynamicCache(config=config)  # 5.x
    except TypeError:
        return DynamicCache()  # 4.x


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax(q k^T) v with the weights returned; the mask is boolean (True = may attend) or additive.

    ``None`` means plain causal attention, the new queries being the last positions of the keys.
    """
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, T, S)
    if attention_mask is None:
        T, S = query.shape[-2], key.shape[-2]
        attention_mask = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)
    if attention_mask.dtype == torch.bool:
        weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
    else:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, nh, hs)
    return output, weights


def _sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The model's own SDPA call for versions without the attention interface; same contract as the eager one."""
    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=attention_mask is None and query.shape[-2] > 1,
    )
    return output.transpose(1, 2).contiguous(), None


class CustomTransformerAttention(nn.Module):
    """Causal self-attention: separate q/k/v projections (rows grouped per head), one output projection."""

    def __init__(self, config: CustomTransformerConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.num_key_value_groups = 1  # read by transformers' attention functions: no grouped-query attention
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.attention_dropout = config.dropout
        # Rows of each: heads 0..H-1 in order, head_dim rows each, so a column split keeps whole heads.
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.k_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.v_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=True)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if cache is not None:
            if _CACHE_UPDATE_TAKES_KWARGS:
                k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
            else:  # static caches of these versions write at cache_position
                cache_kwargs = {"cache_position": kwargs.get("cache_position")}
                k, v = cache.update(k, v, self.layer_idx, cache_kwargs)  # (B, nh, past+T, hs)

        implementation = self.config._attn_implementation
        if output_attentions or implementation == "eager":
            attention = eager_attention_forward  # the only one that computes the weights
        elif HAS_ATTENTION_INTERFACE:
            attention = ALL_ATTENTION_FUNCTIONS[implementation]
        else:
            attention = _sdpa_attention_forward
        output, weights = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(*input_shape, -1).contiguous()
        return self.resid_dropout(self.o_proj(output)), weights


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


class CustomTransformerBlock(_BlockBase):
    """Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x)). Returns (hidden states, attention weights)."""

    def __init__(self, config: CustomTransformerConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.self_attn = CustomTransformerAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = CustomTransformerMLP(config)

    def forward(self, hidden_states, attention_mask=None, cache=None, output_attentions=False, **kwargs):
        attn_output, weights = self.self_attn(
            self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            cache=cache,
            output_attentions=output_attentions,
            **kwargs,
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)), weights


class CustomTransformerPreTrainedModel(PreTrainedModel):
    config_class = CustomTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CustomTransformerBlock"]
    _supports_sdpa = True
    _supports_cache_class = True  # 4.x: let generate() hand us a DynamicCache
    # What needs the attention interface and its masks is declared only where they exist (old and new flag names).
    _supports_attention_backend = HAS_ATTENTION_INTERFACE
    _supports_flex_attn = HAS_ATTENTION_INTERFACE
    _supports_flex_attention = HAS_ATTENTION_INTERFACE
    _supports_flash_attn = HAS_ATTENTION_INTERFACE
    _supports_flash_attn_2 = HAS_ATTENTION_INTERFACE
    _supports_static_cache = HAS_ATTENTION_INTERFACE
    _supports_quantized_cache = HAS_ATTENTION_INTERFACE
    _can_compile_fullgraph = HAS_ATTENTION_INTERFACE

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


def _own_mask(
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    positions_given: bool,
    past_length: int,
    query_length: int,
) -> torch.Tensor | None:
    """The boolean mask (B or 1, 1, T, past+T) for the model's own attention path; True = may attend.

    ``None`` stands for plain causal attention. A row given without a mask and without a past whose positions
    restart (several sequences packed into one row) gets a block-diagonal causal mask.
    """
    device = position_ids.device
    key_length = past_length + query_length
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                "attention_mask must be a 2D (batch, past + new tokens) padding mask with this transformers "
                f"version; got shape {tuple(attention_mask.shape)}"
            )
        if attention_mask.shape[-1] != key_length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but the cache holds {past_length} "
                f"and {query_length} new tokens were given; pass the mask for all {key_length} positions"
            )
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and positions_given and past_length == 0 and query_length > 1:
        segments = (position_ids.diff(dim=-1, prepend=position_ids[:, :1] - 1) != 1).cumsum(-1)  # (B, T)
        if bool(segments[:, -1].any()):
            causal = torch.ones(query_length, query_length, dtype=torch.bool, device=device).tril()
            return (causal & (segments[:, :, None] == segments[:, None, :]))[:, None]
    if not padded and (past_length == 0 or query_length == 1):
        return None
    q_pos = torch.arange(past_length, key_length, device=device)
    k_pos = torch.arange(key_length, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, T, S)
    if padded:
        mask = mask & attention_mask[:, None, None, :].bool()  # (B, 1, T, S)
    # A query at a padding position may see nothing; give it everything so softmax stays finite. Its output is
    # never read (real tokens never attend to padding keys).
    return mask | ~mask.any(dim=-1, keepdim=True)


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

    def _mask(self, attention_mask, inputs_embeds, cache, position_ids, cache_position):
        """The attention mask in the form the configured attention implementation takes."""
        kwargs = {
            "config": self.config,
            _MASK_EMBEDS: inputs_embeds,
            "attention_mask": attention_mask,
            _MASK_CACHE: cache,
            "position_ids": position_ids,
        }
        if "cache_position" in _MASK_PARAMS:
            kwargs["cache_position"] = cache_position
        return create_causal_mask(**kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else config.use_cache
        return_dict = return_dict if return_dict is not None else getattr(config, "return_dict", True)
        if cache is None:
            cache = past_key_values
        if isinstance(cache, (tuple, list)):
            raise TypeError(
                "the key/value cache must be a transformers Cache (e.g. DynamicCache); legacy tuples are not "
                "supported by this model"
            )
        if self.gradient_checkpointing and self.training:
            use_cache, cache = False, None  # recomputation and an incrementally filled cache do not mix
        given_cache = cache
        if use_cache and cache is None:
            cache = _new_dynamic_cache(config)

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        T = inputs_embeds.shape[1]
        # Only needed to place new tokens; caches managed by an engine (paged) come with position_ids.
        needs_past = position_ids is None or not HAS_ATTENTION_INTERFACE
        needs_past |= "cache_position" in _MASK_PARAMS and kwargs.get("cache_position") is None
        past_length = given_cache.get_seq_length() if given_cache is not None and needs_past else 0
        positions_given = position_ids is not None
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                # a left-padded prompt gets the positions it has alone
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past_length, past_length + T, device=inputs_embeds.device)[None]
        if T > 0 and not _is_compiling() and int(position_ids.max()) >= config.n_positions:
            raise ValueError(
                f"sequence too long: position {int(position_ids.max())} needs max_position_embeddings > "
                f"{int(position_ids.max())}, but this model has {config.n_positions}; truncate the input "
                "or lower max_new_tokens"
            )
        if HAS_ATTENTION_INTERFACE:
            if "cache_position" in _MASK_PARAMS and kwargs.get("cache_position") is None:
                # versions whose masks and static caches index by it (their generate() passes it)
                kwargs["cache_position"] = torch.arange(
                    past_length, past_length + T, device=inputs_embeds.device
                )
            # A fresh cache holds nothing yet: building the mask without it lets a packed row be recognised.
            mask = self._mask(
                attention_mask, inputs_embeds, given_cache, position_ids, kwargs.get("cache_position")
            )
        else:
            mask = _own_mask(attention_mask, position_ids, positions_given, past_length, T)
        hidden_states = self.drop(inputs_embeds + self.embed_positions(position_ids))

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if self.gradient_checkpointing and self.training and not _LAYERS_CHECKPOINT_THEMSELVES:
                hidden_states, weights = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, mask, None, output_attentions
                )
            else:
                hidden_states, weights = layer(
                    hidden_states,
                    attention_mask=mask,
                    cache=cache,
                    output_attentions=output_attentions,
                    position_ids=position_ids,
                    **kwargs,
                )
            if output_attentions:
                all_attentions += (weights,)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        hidden_states = self.norm(hidden_states)

        outputs = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{_CACHE_FIELD: cache if use_cache else None},
        )
        return outputs if return_dict else outputs.to_tuple()


def _keep_logits(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The positions whose logits are wanted: the last ``n`` for an int (0 = all), the given indices for a tensor."""
    if slice_logits_to_keep is not None:
        return slice_logits_to_keep(hidden_states, logits_to_keep)
    if isinstance(logits_to_keep, int):
        return hidden_states[:, -logits_to_keep:, :] if logits_to_keep else hidden_states
    return hidden_states[:, logits_to_keep, :]


class CustomTransformerForCausalLM(CustomTransformerPreTrainedModel, GenerationMixin):
    """The decoder with its biased, untied LM head. ``labels`` give the shifted next-token cross-entropy."""

    # The LM head is split by vocabulary rows and gathered (its bias is split with them).
    _tp_plan = {"lm_head": "colwise_rep"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

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
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        base = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache=cache if cache is not None else past_key_values,
            **kwargs,
        )
        logits = self.lm_head(_keep_logits(base.last_hidden_state, logits_to_keep))

        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1, :].float()
            shift_labels = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100
            )

        outputs = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
            **{_CACHE_FIELD: getattr(base, _CACHE_FIELD)},
        )
        return outputs if return_dict else outputs.to_tuple()


__all__ = ["CustomTransformerForCausalLM", "CustomTransformerModel", "CustomTransformerPreTrainedModel"]
