"""Generation speed: the released model against transformers' own model of the same dimensions, in every mode.

Modes (greedy, a fixed number of new tokens, all prompts of one length):
- ``dynamic``: ``generate`` with the default dynamic cache, batch 1;
- ``static``: ``generate(cache_implementation="static")`` with the decode step compiled (fullgraph), batch 1;
- ``batch``: continuous batching, ``generate_batch`` over 8 prompts (paged attention).

The native anchors are built in the same run with the same widths, depth, heads, vocabulary and context: Llama for
the SwiGLU variant, GPT-2 with ReLU for the other, both with random weights (speed does not depend on them). Runs
alternate between the two models so machine noise hits both alike; each figure is the median of ``--repeats``.
Prints tokens/s for both and the ratio (ours / native; the goal is >= 0.95). Our model's tokens in the static and
batch modes are checked against its dynamic-cache tokens, so speed is never bought with a different result.

    python benchmarks/bench_generate.py --params 85M [--ffn swiglu|relu] [--modes dynamic,static,batch]
    python benchmarks/bench_generate.py --params 1B --new-tokens 32 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from modeling.configuration_custom_transformer import CustomTransformerConfig
from modeling.modeling_custom_transformer import CustomTransformerForCausalLM

# (n_embd, n_layer, n_head) with GPT-2's vocabulary: ~85M and ~1.0B parameters (SwiGLU variant).
SIZES = {"85M": (512, 8, 8), "1B": (2048, 12, 16)}
MODES = ("dynamic", "static", "batch")


def build_models(args) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    n_embd, n_layer, n_head = SIZES[args.params]
    dims = {"vocab_size": args.vocab_size, "n_positions": args.block_size, "n_embd": n_embd}
    ours = CustomTransformerForCausalLM(
        CustomTransformerConfig(**dims, n_layer=n_layer, n_head=n_head, ffn_type=args.ffn, pad_token_id=0)
    )
    if args.ffn == "swiglu":
        from transformers import LlamaConfig, LlamaForCausalLM

        native = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=args.vocab_size,
                hidden_size=n_embd,
                intermediate_size=4 * n_embd,
                num_hidden_layers=n_layer,
                num_attention_heads=n_head,
                num_key_value_heads=n_head,
                max_position_embeddings=args.block_size,
                mlp_bias=True,
                tie_word_embeddings=False,
                pad_token_id=0,
            )
        )
        name = "llama"
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        native = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=args.vocab_size,
                n_positions=args.block_size,
                n_embd=n_embd,
                n_layer=n_layer,
                n_head=n_head,
                n_inner=4 * n_embd,
                activation_function="relu",
                pad_token_id=0,
            )
        )
        name = "gpt2-relu"
    return ours.eval(), native.eval(), name


def make_runner(model, mode: str, prompts: torch.Tensor, new_tokens: int):
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    if mode == "batch":
        from transformers import ContinuousBatchingConfig

        engine = ContinuousBatchingConfig(
            num_blocks=64, block_size=32, max_batch_tokens=prompts.shape[0] * prompts.shape[1]
        )
        rows = prompts.tolist()

        def run():
            results = model.generate_batch(
                rows, generation_config=config, continuous_batching_config=engine, progress_bar=False
            )
            by_prompt = {tuple(r.prompt_ids): list(r.generated_tokens) for r in results.values()}
            return [by_prompt[tuple(p)] for p in rows]

        return run, prompts.shape[0] * new_tokens

    ids = prompts[:1]
    if mode == "static":
        from transformers import CompileConfig

        compile_config = CompileConfig(fullgraph=True)
        compile_config._compile_all_devices = True  # generate compiles only on accelerators unless told
        config.cache_implementation, config.compile_config = "static", compile_config
    kwargs = {"attention_mask": torch.ones_like(ids), "generation_config": config}

    def run():
        return [model.generate(ids, **kwargs)[0, ids.shape[1] :].tolist()]

    return run, new_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", choices=sorted(SIZES), default="85M", help="model size (GPT-2 vocabulary)")
    ap.add_argument("--ffn", choices=("swiglu", "relu"), default="swiglu")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    ap.add_argument("--vocab-size", type=int, default=50257)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--prompt-length", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable figures on a shared machine)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := sorted(set(modes) - set(MODES)):
        ap.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    if args.prompt_length + args.new_tokens > args.block_size:
        ap.error("prompt-length + new-tokens must fit in block-size")

    torch.manual_seed(0)
    ours, native, native_name = build_models(args)
    prompts = torch.randint(1, args.vocab_size, (args.batch_prompts, args.prompt_length))
    result = {
        "params": args.params,
        "ours_params": sum(p.numel() for p in ours.parameters()),
        "native": native_name,
        "native_params": sum(p.numel() for p in native.parameters()),
        "ffn": args.ffn,
        "torch_threads": torch.get_num_threads(),
        "modes": {},
    }
    reference_tokens = None
    with torch.inference_mode():
        for mode in modes:
            runners = {
                name: make_runner(m, mode, prompts, args.new_tokens)
                for name, m in (("ours", ours), ("native", native))
            }
            times: dict[str, list[float]] = {"ours": [], "native": []}
            tokens = {}
            for name, (run, _) in runners.items():
                tokens[name] = run()  # warm-up (and compilation for the static mode)
            for _ in range(args.repeats):
                for name, (run, _) in runners.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
            generated = runners["ours"][1]
            ours_tps = generated / statistics.median(times["ours"])
            native_tps = generated / statistics.median(times["native"])
            if mode == "dynamic":
                reference_tokens = tokens["ours"]
            entry = {
                "tokens": generated,
                "ours_tokens_per_s": round(ours_tps, 1),
                "native_tokens_per_s": round(native_tps, 1),
                "ratio": round(ours_tps / native_tps, 3),
            }
            if reference_tokens is not None and mode != "dynamic":
                entry["same_tokens_as_dynamic"] = tokens["ours"][0] == reference_tokens[0]
            result["modes"][mode] = entry
            print(json.dumps({mode: entry}), flush=True)
    print(json.dumps(result, indent=2))
    if any(e.get("same_tokens_as_dynamic") is False for e in result["modes"].values()):
        raise SystemExit("a serving mode produced different tokens than the dynamic cache")


if __name__ == "__main__":
    main()
