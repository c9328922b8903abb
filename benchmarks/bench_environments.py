"""What one compat environment costs: seconds to build and disk, with uv's hardlinked cache and without it.

The baseline, measured in the same run, is the first environment on an empty cache (every wheel downloaded
and unpacked). Then the same requirements into a new environment from the warm cache, hardlinked (what
``release compat`` does for every next version) and copied (``--link-mode copy``: what each environment would
cost on its own). Printed: seconds and the ratio to the baseline, the files' size and the bytes the environment
alone holds (the rest are hardlinks into the cache).

    python benchmarks/bench_environments.py                 # transformers 4.46.3
    python benchmarks/bench_environments.py --version 5.0.0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from release.compat.environments import (
    Environment,
    build_environment,
    environment_disk,
    run_uv,
    torch_requirement,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="4.46.3", help="the transformers version to install")
    options = parser.parse_args()
    requirements = [f"transformers=={options.version}", torch_requirement()]
    with tempfile.TemporaryDirectory(prefix="bench-environments-") as tmp:
        cache = Path(tmp) / "cache"
        rows = []

        def measure(name: str, target: Path, build) -> None:
            start = time.perf_counter()
            build(target)
            seconds = time.perf_counter() - start
            disk = environment_disk(target)
            rows.append((name, seconds, disk.total_bytes, disk.unique_bytes))

        measure(
            "cold cache",
            Path(tmp) / "cold",
            lambda t: build_environment(t, requirements, cache_dir=cache, what="cold"),
        )
        measure(
            "warm, hardlinked",
            Path(tmp) / "hardlinked",
            lambda t: build_environment(t, requirements, cache_dir=cache, what="hardlinked"),
        )

        def copied(target: Path) -> None:
            build_environment(target, [], cache_dir=cache, what="copied")
            python = str(Environment(target).python)
            run_uv(
                ["pip", "install", "--python", python, "--link-mode", "copy", *requirements],
                what="copied",
                cache_dir=cache,
            )

        measure("warm, copied", Path(tmp) / "copied", copied)
        baseline = rows[0][1]
        print(
            f"transformers {options.version} + {requirements[1].split(' @ ')[0]} (the running torch's wheel)"
        )
        for name, seconds, total, unique in rows:
            print(
                f"{name:18} {seconds:7.1f} s ({seconds / baseline:5.2f}x the cold build)  "
                f"files {total / 2**20:6.0f} MB, its own {unique / 2**20:6.1f} MB"
            )


if __name__ == "__main__":
    main()
