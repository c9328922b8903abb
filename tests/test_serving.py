"""What serving engines and transformers' serving features ask of the model, tested without the engines.

Features the installed transformers lacks are skipped by name; on such versions the model must behave as before
(tests/test_modeling.py) and must not claim the feature (test_flags_follow_the_installed_transformers).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from transformers.cache_utils import Cache

from modeling import modeling_custom_transformer as modeling
from modeling.configuration_custom_transformer import CustomTransformerConfig
from modeling.mapping import convert_state_dict
from modeling.modeling_custom_transformer import CustomTransformerForCausalLM
from tests.conftest import build_reference

VOCAB, EOS = 97, 96
needs_interface = pytest.mark.skipif(
    not modeling.HAS_ATTENTION_INTERFACE, reason="this transformers has no attention interface"
)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    diff = (actual.float() - expected.float()).abs()
    assert diff.max().item() <= atol, f"max abs diff {diff.max().item():.3e}, mean {diff.mean().item():.3e}"


def build(ffn_type: str = "swiglu", attn_implementation: str | None = None) -> CustomTransformerForCausalLM:
    arch, state_dict = convert_state_dict(build_reference(ffn_type=ffn_type, vocab_size=VOCAB).state_dict())
    config = CustomTransformerConfig(
        **arch.hf_config_kwargs(), bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS
    )
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    model = CustomTransformerForCausalLM(config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@pytest.fixture(params=["swiglu", "relu"])
def model(request):
    return build(request.param)


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), EOS)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask


PROMPTS = [[5, 17, 42, 7], [3, 1, 4, 1, 5, 9, 2, 6, 5], [88, 12]]


def test_flags_follow_the_installed_transformers():
    cls = CustomTransformerForCausalLM
    has = modeling.HAS_ATTENTION_INTERFACE
    assert cls._supports_sdpa
    for flag in (
        "_supports_attention_backend",
        "_supports_flex_attn",
        "_supports_flash_attn",
        "_supports_flash_attn_2",
        "_supports_static_cache",
        "_can_compile_fullgraph",
    ):
        assert getattr(cls, flag) is has, flag


def test_config_exposes_key_value_heads_and_plans():
    config = CustomTransformerConfig(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    assert config.num_key_value_heads == 4
    with pytest.raises(ValueError, match="num_key_value_heads"):
        CustomTransformerConfig(n_embd=32, n_head=4, num_key_value_heads=2)
    model = CustomTransformerForCausalLM(config)
    modules = dict(model.model.named_modules())
    for pattern in config.base_model_tp_plan:
        assert pattern.replace("*", "0") in modules, pattern
    assert "lm_head" in CustomTransformerForCausalLM._tp_plan


def test_return_dict_false_follows_the_output_classes(model):
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        as_dict = model.model(ids, output_hidden_states=True, output_attentions=True)
        as_tuple = model.model(ids, output_hidden_states=True, output_attentions=True, return_dict=False)
        lm_tuple = model(ids, labels=ids, output_hidden_states=True, return_dict=False)
    assert len(as_tuple) == 4
    assert torch.equal(as_tuple[0], as_dict.last_hidden_state)
    assert isinstance(as_tuple[1], Cache)  # the cache comes second, as in BaseModelOutputWithPast
    assert len(as_tuple[2]) == model.config.n_layer + 1 and len(as_tuple[3]) == model.config.n_layer
    assert lm_tuple[0].ndim == 0 and lm_tuple[1].shape == (
        1,
        ids.shape[1],
        VOCAB,
    )  # loss, logits, cache, hidden
    assert len(lm_tuple) == 4 and len(lm_tuple[3]) == model.config.n_layer + 1


def test_attention_weights_are_causal_distributions_from_every_implementation(model):
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        out = model(ids, output_attentions=True)
        plain = model(ids)
    assert_close(out.logits, plain.logits)
    assert len(out.attentions) == model.config.n_layer
    for weights in out.attentions:
        assert weights.shape == (1, model.config.n_head, ids.shape[1], ids.shape[1])
        assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert float(weights.triu(1).abs().max()) == 0.0


def test_eager_equals_sdpa():
    sdpa, eager = build(), build(attn_implementation="eager")
    ids, mask = left_padded(PROMPTS)
    with torch.no_grad():
        real = mask.bool()  # logits at padding positions are never read and differ by kernel
        assert_close(
            eager(ids, attention_mask=mask).logits[real], sdpa(ids, attention_mask=mask).logits[real]
        )


@pytest.mark.parametrize("keep", [1, 3, torch.tensor([0, 3]), torch.tensor([5])])
def test_logits_to_keep_int_or_tensor(model, keep):
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        full = model(ids).logits
        kept = model(ids, logits_to_keep=keep).logits
    expected = full[:, -keep:] if isinstance(keep, int) else full[:, keep]
    assert_close(kept, expected)


def packed_row(model, implementation: str | None = None):
    a, b = PROMPTS[0], PROMPTS[1]
    ids = torch.tensor([a + b])
    positions = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    if implementation is not None:
        model.config._attn_implementation = implementation
    with torch.no_grad():
        packed = model(ids, position_ids=positions, use_cache=False).logits[0]
        alone = [model(torch.tensor([p])).logits[0] for p in (a, b)]
    return packed, torch.cat(alone)


def test_packed_row_with_restarting_positions_equals_separate_runs(model):
    packed, separate = packed_row(model)
    assert_close(packed, separate)


@needs_interface
def test_packed_row_through_eager_and_flex_attention():
    model = build()  # one variant: flex attention compiles its kernel on the CPU, which takes a while
    for implementation in ("eager", "flex_attention"):
        packed, separate = packed_row(model, implementation)
        assert_close(packed, separate, atol=1e-4)


@needs_interface
def test_registered_attention_function_sees_every_layer_and_the_engine_kwargs(model):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append((module.layer_idx, kwargs.get("engine_request_ids"), query.shape))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("recording_sdpa", recording_attention)
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        expected = model(ids).logits
        model.config._attn_implementation = "recording_sdpa"
        got = model(ids, engine_request_ids=("r1",)).logits
    assert [c[0] for c in calls] == list(range(model.config.n_layer))
    assert all(c[1] == ("r1",) for c in calls)
    assert_close(got, expected)


@needs_interface
@pytest.mark.parametrize("implementation", ["flex_attention", "eager"])
def test_other_attention_implementations_load_and_match(tmp_path, implementation):
    from transformers import AutoModelForCausalLM

    model = build()
    CustomTransformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    type(model.config).register_for_auto_class()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, trust_remote_code=True, attn_implementation=implementation
    ).eval()
    assert loaded.config._attn_implementation == implementation
    ids, mask = left_padded(PROMPTS)
    with torch.no_grad():
        got, expected = loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    real = mask.bool()  # logits at padding positions are never read and differ by kernel
    assert_close(got[real], expected[real], atol=1e-4)


def shard_rows(w: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return w.chunk(world, dim=0)[rank]


def shard_cols(w: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return w.chunk(world, dim=1)[rank]


@pytest.mark.parametrize("world", [2, 4])
def test_weights_split_by_the_tp_plan_give_the_full_model(model, world):
    """Each rank holds its slice of every layer the plan names: colwise = output rows (whole heads), rowwise =
    input columns; a rowwise layer's partial outputs are summed across ranks (the all-reduce) and its bias added
    once, as tensor parallelism does."""
    config = model.config
    plan = config.base_model_tp_plan
    assert config.n_head % world == 0
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        expected = model(ids, output_hidden_states=True)
        x = expected.hidden_states[0]
        T = ids.shape[1]
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            style = {name.split(".")[-1]: s for name, s in plan.items()}
            assert style["q_proj"] == style["k_proj"] == style["v_proj"] == "colwise"
            assert style["o_proj"] == style["down_proj"] == "rowwise"
            h = layer.input_layernorm(x)
            attn_sum = 0
            for r in range(world):
                q, k, v = (
                    F_linear(h, shard_rows(p.weight, r, world)).view(1, T, -1, attn.head_dim).transpose(1, 2)
                    for p in (attn.q_proj, attn.k_proj, attn.v_proj)
                )
                y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                attn_sum = attn_sum + F_linear(
                    y.transpose(1, 2).reshape(1, T, -1), shard_cols(attn.o_proj.weight, r, world)
                )
            x = x + attn_sum + attn.o_proj.bias
            h = layer.post_attention_layernorm(x)
            mlp_sum = 0
            for r in range(world):
                up = F_linear(
                    h, shard_rows(mlp.up_proj.weight, r, world), shard_rows(mlp.up_proj.bias, r, world)
                )
                if config.ffn_type == "swiglu":
                    gate = mlp.gate_proj
                    inner = (
                        torch.nn.functional.silu(
                            F_linear(h, shard_rows(gate.weight, r, world), shard_rows(gate.bias, r, world))
                        )
                        * up
                    )
                else:
                    inner = torch.relu(up)
                mlp_sum = mlp_sum + F_linear(inner, shard_cols(mlp.down_proj.weight, r, world))
            x = x + mlp_sum + mlp.down_proj.bias
            assert_close(x, expected.hidden_states[i + 1])
        h = model.model.norm(x)
        head = model.lm_head
        logits = torch.cat(
            [
                F_linear(h, shard_rows(head.weight, r, world), shard_rows(head.bias, r, world))
                for r in range(world)
            ],
            dim=-1,
        )
    assert_close(logits, expected.logits)


def F_linear(x, weight, bias=None):
    return torch.nn.functional.linear(x, weight, bias)


@needs_interface
def test_static_cache_generates_the_dynamic_tokens_left_padded(model):
    ids, mask = left_padded(PROMPTS)
    kwargs = {"attention_mask": mask, "max_new_tokens": 10, "do_sample": False}
    with torch.no_grad():
        dynamic = model.generate(ids, **kwargs)
        static = model.generate(ids, cache_implementation="static", **kwargs)
    assert torch.equal(static, dynamic)


@needs_interface
def test_a_decode_step_compiles_with_fullgraph():
    from transformers import StaticCache

    model = build()
    ids, mask = left_padded(PROMPTS[:2])
    max_len = ids.shape[1] + 4
    try:
        cache = StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:
        cache = StaticCache(config=model.config, max_batch_size=ids.shape[0], max_cache_len=max_len)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full_mask = torch.cat([mask, torch.zeros(2, 4, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        out = model(ids, attention_mask=full_mask[:, : ids.shape[1]], position_ids=positions, cache=cache)
        nxt = out.logits[:, -1:].argmax(-1)
        step_mask = full_mask.clone()
        step_mask[:, ids.shape[1]] = 1
        step_positions = positions[:, -1:] + 1

        def decode(tokens, attention_mask, position_ids):
            return model(
                tokens,
                attention_mask=attention_mask[:, : ids.shape[1] + 1],
                position_ids=position_ids,
                cache=cache,
            ).logits

        eager_cache_len = int(cache.get_seq_length())
        compiled = torch.compile(decode, fullgraph=True, dynamic=False)
        got = compiled(nxt, step_mask, step_positions)
    assert int(cache.get_seq_length()) == eager_cache_len + 1
    # the same step without the cache: the full sequence run from scratch
    full_ids = torch.cat([ids, nxt], dim=1)
    with torch.no_grad():
        expected = model(full_ids, attention_mask=step_mask[:, : ids.shape[1] + 1], use_cache=False).logits[
            :, -1:
        ]
    assert_close(got, expected, atol=1e-4)


@pytest.mark.skipif(
    not hasattr(CustomTransformerForCausalLM, "generate_batch"),
    reason="this transformers has no generate_batch",
)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_generate_batch_returns_the_generate_tokens(implementation):
    from transformers import ContinuousBatchingConfig, GenerationConfig

    model = build(attn_implementation=implementation)
    # Sized for the test: left alone, the paged cache is sized to the machine's memory.
    engine = ContinuousBatchingConfig(num_blocks=16, block_size=32, max_batch_tokens=64)
    config = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=EOS, pad_token_id=EOS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = model.generate_batch(
            PROMPTS, generation_config=config, continuous_batching_config=engine, progress_bar=False
        )
    by_prompt = {tuple(r.prompt_ids): list(r.generated_tokens) for r in results.values()}
    assert len(by_prompt) == len(PROMPTS)
    for prompt in PROMPTS:
        with torch.no_grad():
            alone = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                generation_config=config,
            )
        assert by_prompt[tuple(prompt)] == alone[0, len(prompt) :].tolist(), prompt


def test_auto_model_loads_the_base_model_of_a_release_folder(tmp_path):
    import json

    from transformers import AutoModel

    from release.convert.folder import AUTO_MAP

    model = build()
    model.save_pretrained(tmp_path)
    for name in ("configuration_custom_transformer.py", "modeling_custom_transformer.py"):
        (tmp_path / name).write_text((Path(modeling.__file__).parent / name).read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = AUTO_MAP
    (tmp_path / "config.json").write_text(json.dumps(config))
    base = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(base).__name__ == "CustomTransformerModel"
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        assert_close(base(ids).last_hidden_state, model.model(ids).last_hidden_state)
