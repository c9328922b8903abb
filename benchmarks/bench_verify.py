"""Benchmark ``release verify``: peak memory against the weights' bytes, time against the reference alone.

Generates a training checkpoint (the ~85M-parameter shape of ``bench_convert.py``: GPT-2 vocabulary, 8 layers
of width 512, a 1024-token context) and converts it with ``release.convert.folder``, then runs each contender in its
own Python process and reads, inside that process, its wall time (start-up and imports excluded) and its peak
RSS (VmHWM):

    baseline    the interpreter with torch, transformers (auto classes, pipeline), release.verify.runner and the
                reference model's code imported: what every contender pays before doing anything
    reference   the training module alone: load the checkpoint, one forward over a full-context row, then
                greedy decoding of ``--max-new-tokens`` tokens from a short prompt (the unit of time)
    both        the training module and the transformers model loaded at once, one forward each: what a naive
                verifier that holds both models needs
    verify      release.verify.verify_model with its defaults (3 prompts, 32 new tokens, the shipped text)

Targets (issue #4): verify's peak RSS - baseline <= 1.3x the weights' bytes (holding both needs > 2x);
verify's wall time is reported as a multiple of the reference pass.

    python benchmarks/bench_verify.py            # ~85M parameters
    python benchmarks/bench_verify.py --small    # a few million, for a quick check
    python benchmarks/bench_verify.py --json results.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from harness import FULL, SMALL, bench_main, peak_rss, spawn, write_benchmark_checkpoint

ROLES = ("baseline", "reference", "both", "verify")

IMPORTS = """
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # resolve the lazy modules verify uses
import release.verify.runner, release.verify.checks, release.verify.loading, release.checkpoint, modeling.reference
"""


# --------------------------------------------------------------------------- child processes


def child_generate(args: dict) -> dict:
    from release.convert.folder import convert_checkpoint
    from release.demo import demo_text, train_tokenizer

    checkpoint = Path(args["checkpoint"])
    info = write_benchmark_checkpoint(args["dims"], checkpoint)
    tokenizer = train_tokenizer(demo_text(), Path(args["tokenizer"]), vocab_size=384)
    convert_checkpoint(checkpoint, Path(args["model"]), tokenizer=tokenizer, progress=False)
    return info


def child_run(role: str, args: dict) -> dict:
    exec(IMPORTS, {})  # noqa: S102 - the same imports for every contender, before the clock starts
    import torch

    extra: dict = {}
    start = time.perf_counter()
    if role == "reference":
        from release.checkpoint import load_reference_model

        model, ckpt = load_reference_model(Path(args["checkpoint"]))
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (1, model.config.block_size), generator=generator)
        with torch.no_grad():
            model(ids)
            model.generate_greedy(ids[:, :8], args["max_new_tokens"])
    elif role == "both":
        from transformers import AutoModelForCausalLM

        from release.checkpoint import load_reference_model

        reference, ckpt = load_reference_model(Path(args["checkpoint"]))
        candidate = AutoModelForCausalLM.from_pretrained(args["model"], trust_remote_code=True)
        ids = torch.randint(
            0, reference.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            reference(ids)
            candidate(input_ids=ids)
    elif role == "verify":
        from release.verify.runner import verify_model

        report = verify_model(
            Path(args["model"]),
            checkpoint=Path(args["checkpoint"]),
            tokenizer=Path(args["tokenizer"]),
            max_new_tokens=args["max_new_tokens"],
        )
        extra = {"passed": report.passed, "failures": report.failures, "timings": report.timings}
    elif role != "baseline":
        raise SystemExit(f"unknown role {role}")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": peak_rss(), **extra}


# --------------------------------------------------------------------------- driver


def run(small: bool, repeat: int, workdir: Path, max_new_tokens: int) -> dict:
    dims = SMALL if small else FULL
    paths = {
        "checkpoint": str(workdir / "ckpt.pt"),
        "tokenizer": str(workdir / "tokenizer"),
        "model": str(workdir / "dist" / "model"),
        "max_new_tokens": max_new_tokens,
    }
    print(f"generating and converting a checkpoint with {dims} ...", file=sys.stderr)
    info = spawn(__file__, "generate", {"dims": dims, **paths})
    print(
        f"  {info['parameters'] / 1e6:.1f}M parameters, weights {info['weights_bytes'] / 1e6:.0f} MB, "
        f"checkpoint {info['checkpoint_bytes'] / 1e6:.0f} MB",
        file=sys.stderr,
    )
    samples: dict[str, list[dict]] = {role: [] for role in ROLES}
    for i in range(repeat):
        for role in ROLES:
            result = spawn(__file__, role, paths)
            samples[role].append(result)
            print(
                f"  run {i + 1}/{repeat} {role:9s} {result['seconds']:8.2f} s  peak RSS "
                f"{result['peak_rss'] / 1e6:7.0f} MB"
                + ("" if result.get("passed", True) else "  (FAILED gates)"),
                file=sys.stderr,
            )
    med = {
        role: {key: statistics.median(s[key] for s in runs) for key in ("seconds", "peak_rss")}
        for role, runs in samples.items()
    }
    weights = info["weights_bytes"]
    base = med["baseline"]["peak_rss"]
    ratios = {
        "verify_rss_over_weights": (med["verify"]["peak_rss"] - base) / weights,
        "both_rss_over_weights": (med["both"]["peak_rss"] - base) / weights,
        "verify_time_over_reference_pass": med["verify"]["seconds"] / med["reference"]["seconds"],
    }
    return {
        "model": {**dims, **info},
        "repeat": repeat,
        "median": med,
        "samples": samples,
        "ratios": ratios,
        "targets_met": {
            "verify_rss_over_weights": ratios["verify_rss_over_weights"] <= 1.3,
            "verify_passed": all(s["passed"] for s in samples["verify"]),
        },
        "cpu_count": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def print_summary(results: dict) -> None:
    r, m, model = results["ratios"], results["median"], results["model"]
    mb = 1e6
    print(f"weights {model['weights_bytes'] / mb:.0f} MB, {model['parameters'] / 1e6:.1f}M parameters")
    for role in ROLES:
        print(f"  {role:9s} {m[role]['seconds']:8.2f} s   peak RSS {m[role]['peak_rss'] / mb:7.0f} MB")
    print(f"verify peak RSS - baseline = {r['verify_rss_over_weights']:.2f}x weights (target <= 1.3)")
    print(f"both   peak RSS - baseline = {r['both_rss_over_weights']:.2f}x weights")
    print(f"verify time / reference forward+generate = {r['verify_time_over_reference_pass']:.1f}x")
    print(f"verify passed: {results['targets_met']['verify_passed']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (medians are reported)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="per prompt, as verify's default")
    bench_main(
        parser,
        prefix="bench-verify-",
        child_generate=child_generate,
        child_run=child_run,
        run=run,
        print_summary=print_summary,
        run_kwargs=lambda options: {"max_new_tokens": options.max_new_tokens},
    )


if __name__ == "__main__":
    main()
