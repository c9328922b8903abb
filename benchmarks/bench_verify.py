"""Benchmark ``release verify``: wall time against the compute floor, peak memory against the weights' bytes.

Generates a training checkpoint (the ~85M-parameter shape of ``bench_convert.py``: GPT-2 vocabulary, 8 layers
of width 512, a 1024-token context) and converts it with ``release.convert.folder`` (or takes an existing
checkpoint and converted folder: ``--checkpoint``, ``--model``, ``--tokenizer``, e.g. a 1B-class one), then
runs each contender in its own Python process and reads, inside that process, its wall time (start-up and
imports excluded), its peak RSS (VmHWM) and its peak anonymous memory (RssAnon, sampled every 10 ms: the part
a runner cannot reclaim, unlike file-backed pages of mapped weights):

    baseline    the interpreter with torch, transformers (auto classes, pipeline), release.verify.runner and the
                reference model's code imported: what every contender pays before doing anything
    floor       the compute floor of a verification: one process loading the converted model and running
                2 x (one full context + 2,048 + 3 x 40) tokens through plain forwards (one model's share of
                parity, perplexity and greedy generation, for each of the two models)
    both        the training module and the transformers model loaded at once, one forward each: what a naive
                verifier that holds both models needs (``--skip-both`` leaves it out, e.g. at 1B)
    verify      release.verify.verify_model with its defaults (3 prompts, 32 new tokens, 2,048 perplexity
                tokens of the shipped text)

Targets (issue #14): verify's wall time <= 2x the floor; verify's peak RSS - baseline <= 1.3x the weights'
bytes (holding both needs > 2x).

    python benchmarks/bench_verify.py            # ~85M parameters
    python benchmarks/bench_verify.py --small    # a few million, for a quick check
    python benchmarks/bench_verify.py --checkpoint CKPT --model DIR --tokenizer DIR --skip-both   # existing
    python benchmarks/bench_verify.py --json results.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from harness import (
    FULL,
    SMALL,
    bench_main,
    checkpoint_line,
    children_anon,
    peak_rss,
    proc_status_bytes,
    run_summary,
    spawn,
    write_benchmark_checkpoint,
)

ROLES = ("baseline", "floor", "both", "verify")
FLOOR_PPL_TOKENS = 2048
FLOOR_GREEDY = (3, 40)  # prompts, tokens of prompt + continuation each

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


class _AnonSampler:
    """Peak RssAnon of this process, sampled every 10 ms in a thread (Linux; 0 elsewhere)."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self.peak_tree = 0  # this process's and its children's (the card-snippet child) at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def current() -> int:
        return proc_status_bytes("RssAnon") or 0

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            own = self.current()
            self.peak = max(self.peak, own)
            self.peak_tree = max(self.peak_tree, own + children_anon())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.current())


def floor_lengths(block_size: int) -> list[int]:
    """The rows of one model's share of the floor: a full context, 2,048 tokens in context-sized windows, and
    three 40-token rows (prompt + continuation)."""
    full, rest = divmod(FLOOR_PPL_TOKENS, block_size)
    return [block_size, *[block_size] * full, *([rest] if rest else []), *[FLOOR_GREEDY[1]] * FLOOR_GREEDY[0]]


def child_run(role: str, args: dict) -> dict:
    exec(IMPORTS, {})  # noqa: S102 - the same imports for every contender, before the clock starts
    import torch

    if args.get("threads"):
        # The same for every contender. On a machine other jobs oversubscribe, torch's threads wait for each
        # other at every operation; many small ones (decoding steps) suffer far more than large matmuls.
        torch.set_num_threads(args["threads"])

    extra: dict = {}
    anon = _AnonSampler()
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if role == "floor":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args["model"], trust_remote_code=True).eval()
        extra["load_seconds"] = time.perf_counter() - start
        generator = torch.Generator().manual_seed(0)
        lengths = floor_lengths(model.config.max_position_embeddings)
        with torch.no_grad():
            for _ in range(2):
                for length in lengths:
                    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
                    model(input_ids=ids, use_cache=False)
        extra["tokens"] = 2 * sum(lengths)
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
        extra = {
            "passed": report.passed,
            "failures": report.failures,
            "timings": report.timings,
            "parity_positions": report.parity.positions,
            "perplexity_tokens": report.perplexity.tokens,
        }
    elif role != "baseline":
        raise SystemExit(f"unknown role {role}")
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    peak_anon = anon.stop()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss": peak_rss(),
        "peak_anon": peak_anon,
        "peak_tree_anon": max(anon.peak_tree, peak_anon),
        **extra,
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process: on a machine other jobs share, the wall time of a contender
    depends on what else runs meanwhile; its CPU time much less (each contender uses the same threads)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- driver


def run(
    small: bool,
    repeat: int,
    workdir: Path,
    max_new_tokens: int,
    existing: dict | None = None,
    skip_both: bool = False,
    threads: int | None = None,
) -> dict:
    paths = {
        "threads": threads,
        "checkpoint": str(workdir / "ckpt.pt"),
        "tokenizer": str(workdir / "tokenizer"),
        "model": str(workdir / "dist" / "model"),
        "max_new_tokens": max_new_tokens,
    }
    if existing:
        paths.update(existing)
        info = spawn(__file__, "describe", paths)
        dims = info.pop("dims")
    else:
        dims = SMALL if small else FULL
        print(f"generating and converting a checkpoint with {dims} ...", file=sys.stderr)
        info = spawn(__file__, "generate", {"dims": dims, **paths})
    print(checkpoint_line(info), file=sys.stderr)
    roles = [role for role in ROLES if not (skip_both and role == "both")]
    samples: dict[str, list[dict]] = {role: [] for role in roles}
    for i in range(repeat):
        for role in roles:
            result = spawn(__file__, role, paths)
            samples[role].append(result)
            print(
                f"  run {i + 1}/{repeat} {role:9s} {result['seconds']:8.2f} s  cpu {result['cpu_seconds']:8.2f} s  peak RSS "
                f"{result['peak_rss'] / 1e6:7.0f} MB  peak anon {result['peak_anon'] / 1e6:7.0f} MB"
                + ("" if result.get("passed", True) else "  (FAILED gates)"),
                file=sys.stderr,
            )
    med = {
        role: {
            key: statistics.median(s[key] for s in runs)
            for key in ("seconds", "cpu_seconds", "peak_rss", "peak_anon", "peak_tree_anon")
        }
        for role, runs in samples.items()
    }
    weights = info["weights_bytes"]
    base, base_anon = med["baseline"]["peak_rss"], med["baseline"]["peak_anon"]
    ratios = {
        "verify_time_over_floor": med["verify"]["seconds"] / med["floor"]["seconds"],
        "verify_cpu_over_floor": med["verify"]["cpu_seconds"] / med["floor"]["cpu_seconds"],
        # The floor has no decode steps; this shows what the rest of verify costs against it.
        "verify_less_generation_over_floor": statistics.median(
            s["seconds"] - s["timings"].get("candidate_generation", 0.0) for s in samples["verify"]
        )
        / med["floor"]["seconds"],
        "verify_rss_over_weights": (med["verify"]["peak_rss"] - base) / weights,
        "verify_anon_over_weights": (med["verify"]["peak_anon"] - base_anon) / weights,
        "verify_tree_anon_over_weights": (med["verify"]["peak_tree_anon"] - base_anon) / weights,
    }
    if "both" in med:
        ratios["both_rss_over_weights"] = (med["both"]["peak_rss"] - base) / weights
    targets = {
        "verify_time_over_floor": ratios["verify_time_over_floor"] <= 2.0,
        "verify_rss_over_weights": ratios["verify_rss_over_weights"] <= 1.3,
        "verify_passed": all(s["passed"] for s in samples["verify"]),
    }
    return {
        **run_summary(
            dims=dims, info=info, repeat=repeat, med=med, samples=samples, ratios=ratios, targets=targets
        ),
        "torch_threads": threads or _torch_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def child_describe(args: dict) -> dict:
    """Parameters, weights' bytes and shapes of an existing checkpoint (nothing is loaded)."""
    import dataclasses
    import math

    from release.checkpoint import open_checkpoint, reference_config

    ckpt = open_checkpoint(Path(args["checkpoint"]))
    config = reference_config(ckpt)
    parameters = sum(math.prod(s) for k, s in ckpt.shapes.items() if not k.endswith(".tril"))
    return {
        "parameters": parameters,
        "weights_bytes": 4 * parameters,
        "checkpoint_bytes": Path(args["checkpoint"]).stat().st_size,
        "dims": {k: v for k, v in dataclasses.asdict(config).items() if k != "dropout"},
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def print_summary(results: dict) -> None:
    r, m, model = results["ratios"], results["median"], results["model"]
    mb = 1e6
    print(f"weights {model['weights_bytes'] / mb:.0f} MB, {model['parameters'] / 1e6:.1f}M parameters")
    for role, figures in m.items():
        print(
            f"  {role:9s} {figures['seconds']:8.2f} s  cpu {figures['cpu_seconds']:8.2f} s   peak RSS {figures['peak_rss'] / mb:7.0f} MB   "
            f"peak anon {figures['peak_anon'] / mb:7.0f} MB"
        )
    print(
        f"verify time / floor = {r['verify_time_over_floor']:.2f}x wall, {r['verify_cpu_over_floor']:.2f}x CPU (target <= 2)"
    )
    print(
        f"verify less the candidate's generation (decode steps) / floor = "
        f"{r['verify_less_generation_over_floor']:.2f}x wall"
    )
    print(f"verify peak RSS - baseline = {r['verify_rss_over_weights']:.2f}x weights (target <= 1.3)")
    print(f"verify peak anon - baseline = {r['verify_anon_over_weights']:.2f}x weights")
    print(
        f"verify + card-snippet child, peak anon - baseline = {r['verify_tree_anon_over_weights']:.2f}x weights"
    )
    if "both_rss_over_weights" in r:
        print(f"both   peak RSS - baseline = {r['both_rss_over_weights']:.2f}x weights")
    print(f"verify passed: {results['targets_met']['verify_passed']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (medians are reported)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="per prompt, as verify's default")
    parser.add_argument("--checkpoint", type=Path, help="an existing training checkpoint (with --model)")
    parser.add_argument("--model", type=Path, help="the folder `release convert` made from --checkpoint")
    parser.add_argument("--tokenizer", type=Path, help="the tokenizer --model was converted with")
    parser.add_argument("--skip-both", action="store_true", help="leave out the two-models-at-once run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of every contender")

    def run_kwargs(options) -> dict:
        given = [options.checkpoint, options.model, options.tokenizer]
        if any(given) and not all(given):
            parser.error("--checkpoint, --model and --tokenizer go together")
        existing = (
            {
                k: str(Path(v).resolve())
                for k, v in zip(("checkpoint", "model", "tokenizer"), given, strict=True)
            }
            if all(given)
            else None
        )
        return {
            "max_new_tokens": options.max_new_tokens,
            "existing": existing,
            "skip_both": options.skip_both,
            "threads": options.threads,
        }

    bench_main(
        parser,
        prefix="bench-verify-",
        child_generate=child_generate,
        child_run=lambda role, args: child_describe(args) if role == "describe" else child_run(role, args),
        run=run,
        print_summary=print_summary,
        run_kwargs=run_kwargs,
    )


if __name__ == "__main__":
    main()
