"""Configuration of the custom transformer (shipped next to the weights; imports only transformers)."""

from transformers import PretrainedConfig

FFN_TYPES = ("swiglu", "relu")


class CustomTransformerConfig(PretrainedConfig):
    r"""
    Configuration for [`CustomTransformerForCausalLM`]: a GPT-style pre-norm decoder with learned absolute
    position embeddings, biased LayerNorms, and a biased, untied LM head.

    Args:
        vocab_size (`int`, *optional*, defaults to 50257):
            Number of tokens (rows of the token embedding and of the LM head).
        n_positions (`int`, *optional*, defaults to 1024):
            Maximum sequence length (rows of the learned position embedding). Alias: `max_position_embeddings`.
        n_embd (`int`, *optional*, defaults to 768):
            Width of the residual stream. Alias: `hidden_size`.
        n_layer (`int`, *optional*, defaults to 12):
            Number of decoder blocks. Alias: `num_hidden_layers`.
        n_head (`int`, *optional*, defaults to 12):
            Number of attention heads; must divide `n_embd`. Alias: `num_attention_heads`.
        num_key_value_heads (`int`, *optional*):
            Number of key/value heads, read by serving engines to size their caches. The model has no grouped-query
            attention, so it must equal `n_head` (its default).
        ffn_type (`str`, *optional*, defaults to `"swiglu"`):
            Feed-forward variant: `"swiglu"` (`w3(silu(w1 x) * w2 x)`) or `"relu"` (`fc2(relu(fc1 x))`). Both
            use an inner width of `4 * n_embd` with biases.
        intermediate_size (`int`, *optional*):
            Inner width of the feed-forward; defaults to `4 * n_embd` (the only width training produces).
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention weights, attention output and feed-forward output (training only).
        layer_norm_epsilon (`float`, *optional*, defaults to 1e-5):
            Epsilon of every LayerNorm (PyTorch's default, which training used).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser for fresh weights.
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether the model returns a key/value cache for incremental decoding.
        bos_token_id / eos_token_id (`int`, *optional*, defaults to 50256):
            GPT-2's `<|endoftext|>`.
    """

    model_type = "custom_transformer"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    # How tensor parallelism splits the base model: q/k/v and the feed-forward's first layers by output rows (whole
    # heads, whole inner units), o_proj and down_proj by input columns (their partial outputs are summed).
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
    }

    def __init__(
        self,
        vocab_size=50257,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        num_key_value_heads=None,
        ffn_type="swiglu",
        intermediate_size=None,
        dropout=0.0,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=50256,
        eos_token_id=50256,
        tie_word_embeddings=False,
        **kwargs,
    ):
        if ffn_type not in FFN_TYPES:
            raise ValueError(f"ffn_type must be one of {FFN_TYPES}, got {ffn_type!r}")
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if num_key_value_heads is not None and num_key_value_heads != n_head:
            raise ValueError(
                f"num_key_value_heads ({num_key_value_heads}) must equal n_head ({n_head}): this model has one "
                "key/value head per query head; drop num_key_value_heads from the config"
            )
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.num_key_value_heads = n_head
        self.ffn_type = ffn_type
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * n_embd
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
