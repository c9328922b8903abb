"""The release on a CUDA machine: bf16 with sdpa, flex_attention and static cache + compile, against CPU float32.

Loads a converted release folder (or, without one, builds a demo-sized model from random weights and saves it as a
release folder would be) the way users do (``AutoModelForCausalLM``, ``trust_remote_code``), once in float32 on the
CPU (the reference) and in bfloat16 on the GPU per attention setup, then for each setup compares:

- the logits of one teacher-forced forward over the prompts (max abs diff, top-1 agreement with the CPU run);
- greedy tokens (``--new-tokens``) per prompt: identical count, and the first differing step where not.

bf16 rounds, so tokens may legitimately part ways late in a continuation; the figures say where. Prints one JSON
object; ``--device cpu`` runs the same script with float32 on the CPU (a dry run for the parts that need no GPU:
loading, the comparison, the output), which must give identical tokens. Budget: under 8 minutes on one H100 for
the demo size and a 1B model; every setup has its own try so one failing kernel is reported, not fatal.

    python benchmarks/gpu_check.py [--folder dist/v1.0.0/model] [--device cuda] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

# name -> (attn_implementation, generate kwargs)
SETUPS = {
    "sdpa": ("sdpa", {}),
    "flex_attention": ("flex_attention", {}),
    "static_compile": ("sdpa", {"cache_implementation": "static"}),
}
PROMPTS = [[464, 3290, 318, 257], [40, 1101, 407, 1654, 611, 262, 3290, 561], [15496, 11, 995]]


def demo_folder(root: Path) -> Path:
    """A random-weight model of the demo's dimensions saved with its remote code, as a release folder has it."""
    from modeling.configuration_custom_transformer import CustomTransformerConfig
    from modeling.modeling_custom_transformer import CustomTransformerForCausalLM

    torch.manual_seed(0)
    config = CustomTransformerConfig(
        vocab_size=50257, n_positions=256, n_embd=384, n_layer=6, n_head=6, pad_token_id=50256
    )
    model = CustomTransformerForCausalLM(config)
    CustomTransformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    type(config).register_for_auto_class()
    model.save_pretrained(root)
    return root


def load(folder: Path, device: str, dtype: torch.dtype, attn_implementation: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, dtype=dtype, attn_implementation=attn_implementation
    )
    return model.to(device).eval()


@torch.no_grad()
def run(model, new_tokens: int, generate_kwargs: dict) -> tuple[torch.Tensor, list[list[int]]]:
    """Logits of the longest prompt (float32, on the CPU) and each prompt's greedy continuation."""
    device = model.device
    longest = max(PROMPTS, key=len)
    logits = model(torch.tensor([longest], device=device)).logits.float().cpu()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id
    continuations = []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt], device=device)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
            **generate_kwargs,
        )
        continuations.append(out[0, len(prompt) :].tolist())
    return logits, continuations


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def compare(reference, candidate) -> dict:
    ref_logits, ref_tokens = reference
    logits, tokens = candidate
    diffs = [first_difference(r, t) for r, t in zip(ref_tokens, tokens, strict=True)]
    return {
        "logits_max_abs_diff": round(float((logits - ref_logits).abs().max()), 5),
        "top1_agreement": round(float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()), 4),
        "identical_continuations": sum(d is None for d in diffs),
        "prompts": len(diffs),
        "first_differing_step": diffs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--folder", type=Path, help="a converted release folder; default: a demo-sized random model"
    )
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a float32 dry run")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument(
        "--setups", default=",".join(SETUPS), help="comma-separated subset of " + ", ".join(SETUPS)
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu for the dry run")
    setups = [s for s in args.setups.split(",") if s]
    if unknown := sorted(set(setups) - set(SETUPS)):
        ap.error(f"unknown setups {unknown}; choose from {', '.join(SETUPS)}")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder if args.folder is not None else demo_folder(Path(tmp) / "model")
        import transformers

        started = time.perf_counter()
        reference = run(load(folder, "cpu", torch.float32, "sdpa"), args.new_tokens, {})
        result = {
            "folder": str(args.folder) if args.folder else "demo-sized random weights",
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpu_float32_s": round(time.perf_counter() - started, 1),
            "setups": {},
        }
        for name in setups:
            attn_implementation, generate_kwargs = SETUPS[name]
            if name == "static_compile" and args.device == "cuda":
                from transformers import CompileConfig

                generate_kwargs = {**generate_kwargs, "compile_config": CompileConfig(fullgraph=True)}
            started, model = time.perf_counter(), None
            try:
                model = load(folder, args.device, dtype, attn_implementation)
                figures = compare(reference, run(model, args.new_tokens, generate_kwargs))
            except Exception as exc:  # one failing kernel is a figure of the report, not the end of it
                figures = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            figures["seconds"] = round(time.perf_counter() - started, 1)
            result["setups"][name] = figures
            print(json.dumps({name: figures}), flush=True)
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
    print(json.dumps(result, indent=2))
    if args.device == "cpu" and any(
        "error" in f or f["identical_continuations"] != f["prompts"] for f in result["setups"].values()
    ):
        raise SystemExit("the float32 CPU dry run differs from its own reference")


if __name__ == "__main__":
    main()
