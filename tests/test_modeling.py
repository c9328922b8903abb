"""The transformers implementation behaves exactly like the training module (issue #2)."""

from __future__ import annotations

import json

import pytest
import torch

from modeling.configuration_custom_transformer import CustomTransformerConfig
from modeling.mapping import MappingError, convert_state_dict, dropped_keys, infer_architecture
from modeling.modeling_custom_transformer import CustomTransformerForCausalLM
from tests.conftest import build_reference, run_isolated

ATOL = 1e-5


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    diff = (actual.float() - expected.float()).abs()
    assert diff.max().item() <= atol, f"max abs diff {diff.max().item():.3e}, mean {diff.mean().item():.3e}"


def to_hf(reference, **config_overrides) -> CustomTransformerForCausalLM:
    arch, state_dict = convert_state_dict(reference.state_dict())
    config = CustomTransformerConfig(**arch.hf_config_kwargs(), **config_overrides)
    model = CustomTransformerForCausalLM(config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@pytest.fixture(params=["swiglu", "relu"])
def pair(request):
    ref = build_reference(ffn_type=request.param, vocab_size=97, block_size=32)
    eos = 96
    return ref, to_hf(ref, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)


@pytest.mark.parametrize("length", [1, 13, 32])
def test_logits_match_training_module(pair, length):
    ref, hf = pair
    idx = torch.randint(0, 97, (3, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        expected, _ = ref(idx)
        actual = hf(idx).logits
    assert_close(actual, expected)


def test_hidden_states_and_loss_match(pair):
    ref, hf = pair
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, _, ref_hidden = ref(idx, return_hidden_states=True)
        out = hf(idx, labels=idx, output_hidden_states=True)
        ref_logits, ref_loss = ref(idx[:, :-1], targets=idx[:, 1:].contiguous())
    assert len(out.hidden_states) == len(ref_hidden) == ref.config.n_layer + 1
    for got, want in zip(out.hidden_states, ref_hidden, strict=True):
        assert_close(got, want)
    assert abs(out.loss.item() - ref_loss.item()) < 1e-5


def test_cached_greedy_generation_equals_full_recompute_and_training_module(pair):
    ref, hf = pair
    prompt = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cached = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False
        )
        uncached = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=20,
            do_sample=False,
            use_cache=False,
        )
        # step by step without any cache
        manual = prompt
        for _ in range(20):
            nxt = hf(manual, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            manual = torch.cat([manual, nxt], dim=1)
        expected = ref.generate_greedy(prompt, 20)
    assert torch.equal(uncached, manual[:, : uncached.shape[1]])
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, expected[:, : cached.shape[1]])


def test_left_padded_batch_generates_like_each_prompt_alone(pair):
    _, hf = pair
    pad = hf.config.pad_token_id
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 96, (n,), generator=g) for n in (3, 8, 5)]
    width = max(len(p) for p in prompts)
    batch = torch.full((len(prompts), width), pad)
    mask = torch.zeros_like(batch)
    for row, p in enumerate(prompts):
        batch[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    with torch.no_grad():
        together = hf.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False)
        for row, p in enumerate(prompts):
            alone = hf.generate(
                p[None],
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=12,
                do_sample=False,
            )
            row_tokens = together[row, width - len(p) :]
            # a prompt that hit eos alone stops early; in the batch its row continues with padding (= eos)
            assert torch.equal(row_tokens[: alone.shape[1]], alone[0]), f"prompt {row} differs when batched"
            assert bool((row_tokens[alone.shape[1] :] == pad).all())


def test_sequence_longer_than_context_is_a_clear_error(pair):
    _, hf = pair
    with pytest.raises(ValueError, match="max_position_embeddings"):
        hf(torch.zeros(1, 33, dtype=torch.long))


def test_gradient_checkpointing_gives_same_gradients():
    ref = build_reference(vocab_size=97, block_size=32)
    hf = to_hf(ref).train()
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(4))
    hf(idx, labels=idx).loss.backward()
    plain = {n: p.grad.clone() for n, p in hf.named_parameters()}
    hf.zero_grad()
    hf.gradient_checkpointing_enable()
    hf(idx, labels=idx).loss.backward()
    for name, p in hf.named_parameters():
        assert_close(p.grad, plain[name], atol=1e-6)


def test_config_standard_names_and_validation():
    config = CustomTransformerConfig(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    assert config.max_position_embeddings == 32
    with pytest.raises(ValueError, match="ffn_type"):
        CustomTransformerConfig(ffn_type="gelu")
    with pytest.raises(ValueError, match="divisible"):
        CustomTransformerConfig(n_embd=30, n_head=4)


def test_fresh_weights_are_initialised():
    model = CustomTransformerForCausalLM(
        CustomTransformerConfig(vocab_size=97, n_positions=32, n_embd=32, n_layer=1, n_head=4)
    )
    ln = model.model.layers[0].input_layernorm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(
        ln.bias, torch.zeros_like(ln.bias)
    )
    assert 0.01 < model.lm_head.weight.std().item() < 0.03
    assert torch.count_nonzero(model.lm_head.bias) == 0


def test_mapping_is_strict_about_keys_and_shapes():
    sd = build_reference(vocab_size=97, block_size=32).state_dict()
    arch = infer_architecture({k: v.shape for k, v in sd.items()})
    assert (arch.vocab_size, arch.block_size, arch.n_layer, arch.n_head, arch.ffn_type) == (
        97,
        32,
        2,
        4,
        "swiglu",
    )
    assert len(dropped_keys(arch)) == 2 * 4 and all(k in sd for k in dropped_keys(arch))

    missing = dict(sd)
    del missing["blocks.1.layer_norm2.bias"]
    with pytest.raises(MappingError, match="missing: blocks.1.layer_norm2.bias"):
        convert_state_dict(missing)

    extra = dict(sd, **{"blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(MappingError, match="unexpected: blocks.0.extra.weight"):
        convert_state_dict(extra)

    wrong = dict(sd, **{"lm_head.bias": torch.zeros(5)})
    with pytest.raises(MappingError, match=r"misshapen: lm_head.bias is \(5,\), expected \(97,\)"):
        convert_state_dict(wrong)


def test_save_and_load_in_a_process_that_cannot_import_this_repo(tmp_path, tokenizer_dir):
    ref = build_reference(vocab_size=400, block_size=32)
    hf = to_hf(ref, bos_token_id=383, eos_token_id=383, pad_token_id=383)
    CustomTransformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    type(hf.config).register_for_auto_class()
    out = tmp_path / "model"
    hf.save_pretrained(out)
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_custom_transformer.CustomTransformerForCausalLM"
    assert (out / "modeling_custom_transformer.py").exists() and (
        out / "configuration_custom_transformer.py"
    ).exists()

    prompt = [[5, 17, 42, 7]]
    expected = ref.generate_greedy(torch.tensor(prompt), 10)[0].tolist()
    code = f"""
import json, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
ids = torch.tensor({prompt})
out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
print(json.dumps(out[0].tolist()))
"""
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = run_isolated(code, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected


def test_text_generation_pipeline_with_offline_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ref = build_reference(vocab_size=400, block_size=64)
    eos = tok.eos_token_id
    hf = to_hf(ref, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    pipe = pipeline("text-generation", model=hf, tokenizer=tok)
    result = pipe("The Fox and the", max_new_tokens=8, do_sample=False)
    text = result[0]["generated_text"]
    assert text.startswith("The Fox and the") and len(text) > len("The Fox and the")
    ids = tok("The Fox and the", return_tensors="pt").input_ids
    expected = ref.generate_greedy(ids, 8)[0, ids.shape[1] :]
    assert text == "The Fox and the" + tok.decode(expected)
