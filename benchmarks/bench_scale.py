"""Benchmark ``release run --dry-run`` at scale: peak extra disk, peak RSS and anonymous memory as multiples of
the weights' bytes, and seconds per step.

    python benchmarks/bench_scale.py                       # a small training checkpoint (~30M parameters)
    python benchmarks/bench_scale.py --params 1e9          # 1B class: 4 GB of weights, 13 GB with AdamW state
    python benchmarks/bench_scale.py --write-only /work/bench/1b/best_model.pt --params 1e9
    python benchmarks/bench_scale.py --checkpoint /work/bench/1b/best_model.pt --stop-after convert

Writes a training-format checkpoint with AdamW state (``scale_checkpoint.write_scale_checkpoint``: never more
than one record in memory) unless ``--checkpoint`` names one, then runs ``release run --dry-run`` in a child
process while a sampler thread reads, every 0.2 s, the bytes used on the work folder's file system (extra disk
= the peak minus the figure before the child started; other users of the disk add noise, so the figure is an
upper bound) and the child's RSS and anonymous memory (``/proc/<pid>/status``: VmRSS, RssAnon). Steps are timed
from the child's log lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_checkpoint import dims_for, write_scale_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_ready(path: Path, params: float, seed: int) -> dict:
    from release._io import sha256_file, write_text_atomic

    info = write_scale_checkpoint(dims_for(params), path, seed=seed)
    info["sha256"] = sha256_file(path)
    write_text_atomic(path.parent / "READY", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=3e7, help="parameters of the generated checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write-only", type=Path, default=None, help="write the checkpoint (+ READY) and stop"
    )
    options = parser.parse_args()
    if options.write_only:
        info = write_ready(options.write_only, options.params, options.seed)
        print(json.dumps(info, sort_keys=True))
        return


if __name__ == "__main__":
    main()
