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
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import work_folder  # noqa: E402
from scale_checkpoint import dims_for, write_scale_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


PYPROJECT = Path(__file__).with_name("scale_pyproject.toml")  # the project settings, {dtype} left open


def write_ready(path: Path, params: float, seed: int) -> dict:
    from release._io import sha256_file, write_text_atomic

    info = write_scale_checkpoint(dims_for(params), path, seed=seed)
    info["sha256"] = sha256_file(path)
    write_text_atomic(path.parent / "READY", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def checkpoint_info(path: Path) -> dict:
    """READY beside a shared checkpoint, else the figures computed here (hash + the head's weights)."""
    ready = path.parent / "READY"
    if ready.is_file():
        info = json.loads(ready.read_text())
        if info.get("checkpoint_bytes") == path.stat().st_size:
            return info
    from release._io import sha256_file
    from release.fetch.weights_only import peek_checkpoint

    head = peek_checkpoint(str(path))
    return {"sha256": sha256_file(path), "weights_bytes": head.weights_bytes, "checkpoint_bytes": head.size}


def allocated_bytes(folder: Path) -> int:
    """Disk blocks allocated to the files under ``folder`` (what the run itself holds on disk)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:  # removed while we looked
                pass
    return total


class Sampler(threading.Thread):
    """Every ``interval`` s: the run's own files (everything it writes is under the work folder: cache, dist,
    TMPDIR, HF_HOME), the bytes used on that file system (an upper bound: other users of the disk add to it),
    and the child tree's RSS/RssAnon."""

    def __init__(self, pid: int, folder: Path, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.folder, self.interval = pid, folder, interval
        self.disk_base = shutil.disk_usage(folder).used
        self.files_base = allocated_bytes(folder)
        self.peak_disk = 0
        self.peak_files = 0
        self.peak_rss = 0
        self.peak_anon = 0
        self.samples = 0
        self.stop = threading.Event()

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo.extend(int(c) for c in task.read_text().split())
                except OSError:
                    pass
        return pids

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_disk = max(self.peak_disk, shutil.disk_usage(self.folder).used - self.disk_base)
            self.peak_files = max(self.peak_files, allocated_bytes(self.folder) - self.files_base)
            rss = anon = 0
            for pid in self._tree():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
            self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
            self.samples += 1
            self.stop.wait(self.interval)


STEP_LINE = re.compile(r"^\[(\w+)\] (ok|skipped)\b.*\(([\d.]+) s\)$")


def run_release(workdir: Path, checkpoint: Path, info: dict, *, stop_after: str | None, dtype: str) -> dict:
    """``release run --dry-run`` in a child process, sampled; the figures as multiples of the weights."""
    from release.demo import demo_text, train_tokenizer

    project = workdir / "project"
    project.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    (project / "pyproject.toml").write_text(PYPROJECT.read_text(encoding="utf-8").format(dtype=dtype))
    tokenizer = train_tokenizer(
        demo_text(), project / "tokenizer", vocab_size=384
    )  # offline: no GPT-2 download
    env = {
        **os.environ,
        "RELEASE_CACHE_DIR": str(workdir / "cache"),  # a fresh cache: the weights-only file counts
        "TMPDIR": str(workdir / "tmp"),  # verify's spill files, on the sampled file system and removed after
        "HF_HOME": str(workdir / "hf"),  # remote-code module caches too
        "RELEASE_CHECKPOINT": str(checkpoint),
        "RELEASE_CHECKPOINT_SHA256": info["sha256"],
        "RELEASE_TOKENIZER": str(tokenizer),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "release", "run", "--version", "v1.0.0", "--dry-run"]
    if stop_after:
        command += ["--stop-after", stop_after]
    log_path = workdir / "release-run.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(child.pid, workdir)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
    seconds = time.perf_counter() - started
    text = log_path.read_text()
    steps = {m.group(1): float(m.group(3)) for m in map(STEP_LINE.match, text.splitlines()) if m}
    weights = info["weights_bytes"]
    return {
        "exit_code": child.returncode,
        "log_tail": text.splitlines()[-3:],
        "stop_after": stop_after,
        "dtype": dtype,
        "weights_bytes": weights,
        "checkpoint_bytes": info.get("checkpoint_bytes"),
        "peak_extra_disk_bytes": sampler.peak_files,
        "peak_extra_disk_x_weights": round(sampler.peak_files / weights, 3),
        "peak_fs_used_delta_bytes": sampler.peak_disk,
        "peak_fs_used_delta_x_weights": round(sampler.peak_disk / weights, 3),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "peak_rss_x_weights": round(usage.ru_maxrss * 1024 / weights, 3),
        "peak_tree_rss_x_weights": round(sampler.peak_rss / weights, 3),
        "peak_anon_bytes": sampler.peak_anon,
        "peak_anon_x_weights": round(sampler.peak_anon / weights, 3),
        "seconds_per_step": steps,
        "seconds_total": round(seconds, 1),
        "samples": sampler.samples,
    }


def print_summary(r: dict) -> None:
    gb = 1e9
    print(f"weights {r['weights_bytes'] / gb:.2f} GB; checkpoint {(r['checkpoint_bytes'] or 0) / gb:.2f} GB")
    print(
        f"release run --dry-run{' --stop-after ' + r['stop_after'] if r['stop_after'] else ''} ({r['dtype']}): "
        f"exit {r['exit_code']}, {r['seconds_total']} s"
    )
    print(
        f"  peak extra disk  {r['peak_extra_disk_bytes'] / gb:6.2f} GB = {r['peak_extra_disk_x_weights']:.2f}x weights"
    )
    print(
        f"  (file system used, upper bound: {r['peak_fs_used_delta_bytes'] / gb:.2f} GB = "
        f"{r['peak_fs_used_delta_x_weights']:.2f}x; other users of the disk add to it)"
    )
    print(f"  peak RSS         {r['peak_rss_bytes'] / gb:6.2f} GB = {r['peak_rss_x_weights']:.2f}x weights")
    print(f"  peak anonymous   {r['peak_anon_bytes'] / gb:6.2f} GB = {r['peak_anon_x_weights']:.2f}x weights")
    print("  seconds per step " + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds_per_step"].items()))
    if r["exit_code"]:
        print("  FAILED: " + " | ".join(r["log_tail"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=3e7, help="parameters of the generated checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write-only", type=Path, default=None, help="write the checkpoint (+ READY) and stop"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="measure this checkpoint instead")
    parser.add_argument("--stop-after", default=None, help="e.g. convert; default: the whole dry run")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: a temporary folder, removed after"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    options = parser.parse_args()
    if options.write_only:
        info = write_ready(options.write_only, options.params, options.seed)
        print(json.dumps(info, sort_keys=True))
        return
    with work_folder(options.workdir, "bench-scale-") as workdir:
        checkpoint = options.checkpoint
        if checkpoint is None:
            checkpoint = workdir / "best_model.pt"
            info = write_scale_checkpoint(dims_for(options.params), checkpoint, seed=options.seed)
            from release._io import sha256_file

            info["sha256"] = sha256_file(checkpoint)
        else:
            info = checkpoint_info(checkpoint)
        results = run_release(
            workdir / "run", checkpoint, info, stop_after=options.stop_after, dtype=options.dtype
        )
    print_summary(results)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
