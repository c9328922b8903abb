"""What the card_snippet gate costs: the card's code run verbatim in a fresh Python, against a converted folder.

The baseline, measured in the same run, is the least any fresh-process check pays: a child interpreter with the
same environment that imports torch and transformers and does nothing else. Printed: the gate's wall time as a
multiple of that, and the child's peak RSS against the baseline child's and against the folder's weights.

    python benchmarks/bench_snippet.py --model dist/v1.2.0/model   # an existing converted folder
    python benchmarks/bench_snippet.py --small                     # builds a small model and its folder

Each contender runs in its own interpreter (``harness.spawn``), so its children's peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness beside this file

from harness import FULL, SMALL, spawn, write_benchmark_checkpoint  # noqa: E402

MAX_NEW_TOKENS = 16


def children_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def child_run(role: str, args: dict) -> dict:
    folder = Path(args["folder"])
    start = time.perf_counter()
    if role == "baseline":
        # The snippet child's interpreter flags (release.verify.without_repo.child_command), nothing else.
        subprocess.run(
            [sys.executable, "-E", "-P", "-c", "import torch, transformers"],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        failures: list[str] = []
    else:
        from release.verify.snippet import card_snippet, run_card_snippet

        verification = {"generation": {"max_new_tokens": MAX_NEW_TOKENS, "cases": [{"prompt": "The Fox"}]}}
        code = card_snippet(folder, report=verification)
        failures = run_card_snippet(code, folder, expected=None).failures
    return {"seconds": time.perf_counter() - start, "peak_rss": children_peak_rss(), "failures": failures}


def build_folder(small: bool, workdir: Path) -> Path:
    from release.convert.folder import convert_checkpoint
    from release.demo import demo_text, train_tokenizer

    ckpt = workdir / "ckpt.pt"
    write_benchmark_checkpoint(SMALL if small else FULL, ckpt)
    tok = train_tokenizer(demo_text(), workdir / "tokenizer", vocab_size=512)
    return convert_checkpoint(ckpt, workdir / "model", tokenizer=tok, progress=False).out_dir


def main() -> None:
    import shutil
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a converted folder (default: build one)")
    parser.add_argument("--small", action="store_true", help="build a model of a few million parameters")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each contender; the best is kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--child", nargs=2, metavar=("ROLE", "ARGS"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child_run(options.child[0], json.loads(options.child[1]))))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-snippet-"))
    try:
        folder = options.model or build_folder(options.small, workdir)
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        results: dict[str, dict] = {}
        for _ in range(options.repeat):  # interleaved, so both see the same machine load
            for role in ("baseline", "snippet"):
                run = spawn(__file__, role, {"folder": str(folder)})
                best = results.get(role)
                if best is None or run["seconds"] < best["seconds"]:
                    results[role] = run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base, gate = results["baseline"], results["snippet"]
    mb = 1e6
    print(f"folder: {folder} ({weights / mb:.0f} MB of weights)")
    print(
        f"baseline (fresh python, import torch + transformers): {base['seconds']:.1f}s, peak {base['peak_rss'] / mb:.0f} MB"
    )
    print(
        f"card_snippet gate: {gate['seconds']:.1f}s, peak {gate['peak_rss'] / mb:.0f} MB, failures {gate['failures']}"
    )
    print(f"ratio time gate/baseline: {gate['seconds'] / base['seconds']:.2f}x")
    print(f"ratio peak RSS gate/baseline: {gate['peak_rss'] / base['peak_rss']:.2f}x")
    print(
        f"(gate peak - baseline peak) / weights bytes: {(gate['peak_rss'] - base['peak_rss']) / weights:.2f}"
    )
    if options.json:
        options.json.write_text(
            json.dumps({"weights_bytes": weights, **results}, indent=2, sort_keys=True) + "\n"
        )


if __name__ == "__main__":
    main()
