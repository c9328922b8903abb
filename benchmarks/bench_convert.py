"""Benchmark ``release convert`` against the naive conversion and a plain copy, as ratios measured in one run.

Generates a training checkpoint (~85M parameters with real AdamW state and the per-head ``tril`` buffers,
~1.3 GB on disk) in a temporary folder, then runs each contender in its own Python process and reads, inside
that process, its wall time (start-up and imports excluded) and its peak RSS (VmHWM):

    baseline   the interpreter with torch, transformers (incl. the tokenizer and config classes),
               safetensors and release.convert.folder imported: what every contender pays before doing anything
    naive      torch.load the whole file (weights_only=True), save_file the model state dict
    copy       shutil.copyfile of a file the size of the fp32 weights
    convert    release.convert.convert_checkpoint (fp32, one safetensors file, local tokenizer)
    hash       SHA-256 of the checkpoint (for scale: convert must do it for release.json)
    copy+fsync the copy, then fsync (for scale: convert fsyncs what it writes; the copy does not)
    convert-known-sha   convert given the input's SHA-256, as `release run` does after fetch hashed it

Targets (issue #3): convert's peak RSS - baseline <= 1.2x the weights' bytes; convert time <= naive time
(aim for half) and <= 3x the copy time. Every contender runs ``--repeat`` times; the medians are reported.
The files are in the page cache for every contender (each reads what the previous run also read).

    python benchmarks/bench_convert.py            # ~85M parameters
    python benchmarks/bench_convert.py --small    # a few million, for a quick check
    python benchmarks/bench_convert.py --json results.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from harness import (
    FULL,
    SMALL,
    bench_main,
    checkpoint_line,
    peak_rss,
    run_summary,
    spawn,
    write_benchmark_checkpoint,
)

ROLES = ("baseline", "naive", "copy", "convert", "hash", "copy+fsync", "convert-known-sha")
IMPORTS = """
import torch, transformers, safetensors.torch
from transformers import AutoTokenizer, GenerationConfig  # resolve the lazy modules convert uses
import release.convert.folder, release.checkpoint, modeling.configuration_custom_transformer
"""


# --------------------------------------------------------------------------- child processes


def child_generate(args: dict) -> dict:
    from release._io import sha256_file
    from release.demo import demo_text, train_tokenizer

    path = Path(args["checkpoint"])
    info = write_benchmark_checkpoint(args["dims"], path)
    train_tokenizer(demo_text(), Path(args["tokenizer"]), vocab_size=384)
    weights_bytes = info["weights_bytes"]
    with open(args["copy_source"], "wb") as f:  # a file the size of the weights, for the copy baseline
        chunk = os.urandom(1 << 20)
        for _ in range(weights_bytes >> 20):
            f.write(chunk)
        f.write(chunk[: weights_bytes & ((1 << 20) - 1)])
    return {"sha256": sha256_file(path), **info}


def child_run(role: str, args: dict) -> dict:
    exec(IMPORTS, {})  # noqa: S102 - the same imports for every contender, before the clock starts
    out = Path(args["out"])
    start = time.perf_counter()
    if role == "naive":
        import safetensors.torch
        import torch

        ckpt = torch.load(args["checkpoint"], map_location="cpu", weights_only=True)
        out.mkdir()
        safetensors.torch.save_file(
            ckpt["model_state_dict"], out / "model.safetensors", metadata={"format": "pt"}
        )
    elif role in ("copy", "copy+fsync"):
        out.mkdir()
        shutil.copyfile(args["copy_source"], out / "weights.bin")
        if role == "copy+fsync":
            with open(out / "weights.bin", "rb+") as f:
                os.fsync(f.fileno())
    elif role == "hash":
        from release._io import sha256_file

        sha256_file(Path(args["checkpoint"]))
    elif role in ("convert", "convert-known-sha"):
        from release.convert.folder import convert_checkpoint

        # convert-known-sha is what `release run` pays: its fetch step hashed the file while writing it
        known = args["sha256"] if role == "convert-known-sha" else None
        convert_checkpoint(
            Path(args["checkpoint"]),
            out,
            tokenizer=Path(args["tokenizer"]),
            progress=False,
            checkpoint_sha256=known,
        )
    elif role != "baseline":
        raise SystemExit(f"unknown role {role}")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": peak_rss()}


# --------------------------------------------------------------------------- driver


def run(small: bool, repeat: int, workdir: Path) -> dict:
    dims = SMALL if small else FULL
    paths = {
        "checkpoint": str(workdir / "ckpt.pt"),
        "tokenizer": str(workdir / "tokenizer"),
        "copy_source": str(workdir / "weights-sized.bin"),
    }
    print(f"generating a checkpoint with {dims} ...", file=sys.stderr)
    info = spawn(__file__, "generate", {"dims": dims, **paths})
    print(checkpoint_line(info), file=sys.stderr)
    samples: dict[str, list[dict]] = {role: [] for role in ROLES}
    for i in range(repeat):
        for role in samples:
            out = workdir / f"out-{role}"
            shutil.rmtree(out, ignore_errors=True)
            result = spawn(__file__, role, {**paths, "out": str(out), "sha256": info["sha256"]})
            samples[role].append(result)
            print(
                f"  run {i + 1}/{repeat} {role:17s} {result['seconds']:7.3f} s  peak RSS "
                f"{result['peak_rss'] / 1e6:7.0f} MB",
                file=sys.stderr,
            )
            shutil.rmtree(out, ignore_errors=True)
    med = {
        role: {key: statistics.median(s[key] for s in runs) for key in ("seconds", "peak_rss")}
        for role, runs in samples.items()
    }
    weights = info["weights_bytes"]
    base = med["baseline"]["peak_rss"]
    ratios = {
        "convert_rss_over_weights": (med["convert"]["peak_rss"] - base) / weights,
        "naive_rss_over_weights": (med["naive"]["peak_rss"] - base) / weights,
        "convert_time_over_naive": med["convert"]["seconds"] / med["naive"]["seconds"],
        "convert_time_over_copy": med["convert"]["seconds"] / med["copy"]["seconds"],
        # Not targets; where the time goes: the input's SHA-256 (provenance) and the output's fsync.
        "hash_time_over_copy": med["hash"]["seconds"] / med["copy"]["seconds"],
        "copy_fsync_time_over_copy": med["copy+fsync"]["seconds"] / med["copy"]["seconds"],
        "convert_known_sha_time_over_naive": med["convert-known-sha"]["seconds"] / med["naive"]["seconds"],
        "convert_known_sha_time_over_copy": med["convert-known-sha"]["seconds"] / med["copy"]["seconds"],
    }
    targets = {
        "convert_rss_over_weights": ratios["convert_rss_over_weights"] <= 1.2,
        "convert_time_over_naive": ratios["convert_time_over_naive"] <= 1.0,
        "convert_time_over_copy": ratios["convert_time_over_copy"] <= 3.0,
    }
    return {
        **run_summary(
            dims=dims, info=info, repeat=repeat, med=med, samples=samples, ratios=ratios, targets=targets
        ),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def print_summary(results: dict) -> None:
    r, m, model, mb = results["ratios"], results["median"], results["model"], 1e6
    print(f"weights {model['weights_bytes'] / mb:.0f} MB, checkpoint {model['checkpoint_bytes'] / mb:.0f} MB")
    for role in ROLES:
        print(f"  {role:17s} {m[role]['seconds']:7.3f} s   peak RSS {m[role]['peak_rss'] / mb:7.0f} MB")
    print(f"convert peak RSS - baseline = {r['convert_rss_over_weights']:.2f}x weights (target <= 1.2)")
    print(f"naive   peak RSS - baseline = {r['naive_rss_over_weights']:.2f}x weights")
    print(f"convert time / naive time   = {r['convert_time_over_naive']:.2f} (target <= 1, aim 0.5)")
    print(f"convert time / copy time    = {r['convert_time_over_copy']:.2f} (target <= 3)")
    print(
        f"  for scale: sha256 of the input / copy = {r['hash_time_over_copy']:.2f}, "
        f"copy with fsync / copy = {r['copy_fsync_time_over_copy']:.2f}"
    )
    print(
        "  with the input's digest already known: "
        f"convert / naive = {r['convert_known_sha_time_over_naive']:.2f}, "
        f"convert / copy = {r['convert_known_sha_time_over_copy']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (medians are reported)")
    bench_main(
        parser,
        prefix="bench-convert-",
        child_generate=child_generate,
        child_run=child_run,
        run=run,
        print_summary=print_summary,
    )


if __name__ == "__main__":
    main()
