"""Generation speed: the transformers model with its KV cache vs the training module's full-recompute decoding.

Both decode 128 new tokens greedily from the same prompt with the same weights, in this process, alternating
runs so machine noise hits both alike. Prints the ratio (training module time / cached time) and checks the
tokens are identical, so the speed-up is never bought with a different result.

    python benchmarks/bench_generate.py [--n-embd 384 --n-layer 6 --n-head 6 --block-size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from modeling.configuration_custom_transformer import CustomTransformerConfig
from modeling.mapping import convert_state_dict
from modeling.modeling_custom_transformer import CustomTransformerForCausalLM
from modeling.reference import GPTLanguageModel, ReferenceConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=50257)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--prompt-length", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.prompt_length + args.new_tokens > args.block_size:
        ap.error("prompt-length + new-tokens must fit in block-size")

    torch.manual_seed(0)
    ref = GPTLanguageModel(
        ReferenceConfig(args.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd)
    ).eval()
    arch, state_dict = convert_state_dict(ref.state_dict())
    hf = CustomTransformerForCausalLM(CustomTransformerConfig(**arch.hf_config_kwargs())).eval()
    hf.load_state_dict(state_dict, strict=True)
    prompt = torch.randint(0, args.vocab_size - 1, (1, args.prompt_length))
    mask = torch.ones_like(prompt)

    def run_cached():
        return hf.generate(
            prompt,
            attention_mask=mask,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    def run_reference():
        return ref.generate_greedy(prompt, args.new_tokens)

    times = {"cached": [], "reference": []}
    with torch.inference_mode():
        run_cached(), run_reference()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("cached", run_cached), ("reference", run_reference)):
                start = time.perf_counter()
                tokens = fn()
                times[name].append(time.perf_counter() - start)
                if name == "cached":
                    cached_tokens = tokens
                else:
                    same = torch.equal(cached_tokens, tokens)
    cached, reference = statistics.median(times["cached"]), statistics.median(times["reference"])
    result = {
        "params": sum(p.numel() for p in hf.parameters()),
        "new_tokens": args.new_tokens,
        "cached_s": round(cached, 3),
        "reference_full_recompute_s": round(reference, 3),
        "speedup_cached_vs_reference": round(reference / cached, 2),
        "identical_tokens": same,
    }
    print(json.dumps(result, indent=2))
    if not same:
        raise SystemExit("cached generation produced different tokens than the training module")


if __name__ == "__main__":
    main()
