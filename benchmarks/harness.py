"""What the benchmarks share: the benchmark model's shapes, a realistic training checkpoint, peak RSS, and
running each contender in its own Python process (so one contender's memory never counts against another)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

FULL = {
    "vocab_size": 50257,
    "n_embd": 512,
    "n_head": 8,
    "n_layer": 8,
    "block_size": 1024,
}  # ~85.5M parameters
SMALL = {"vocab_size": 8192, "n_embd": 256, "n_head": 4, "n_layer": 4, "block_size": 256}  # ~7.4M parameters


def proc_status_bytes(field: str, pid: int | str = "self") -> int | None:
    """A size field of /proc/<pid>/status (``VmHWM``, ``RssAnon``...) in bytes; None where /proc is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def children_anon() -> int:
    """RssAnon of this process's child processes, summed (their file-backed pages, such as the same mapped weight
    files, are shared with this process and are not counted twice)."""
    total = 0
    for task in Path("/proc/self/task").glob("*"):
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(proc_status_bytes("RssAnon", pid) or 0 for pid in pids)
    return total


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    peak = proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def write_benchmark_checkpoint(dims: dict, path: Path) -> dict:
    """A training checkpoint of the given shapes with real AdamW state (one optimizer step), as training saves.

    Returns its parameter count, the fp32 weights' bytes and the file's size.
    """
    import torch

    from modeling.reference import GPTLanguageModel, ReferenceConfig
    from release.demo import training_config_dict, write_training_checkpoint

    torch.manual_seed(0)
    model = GPTLanguageModel(ReferenceConfig(**dims, ffn_type="swiglu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():  # one real step: exp_avg and exp_avg_sq for every parameter
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    config = training_config_dict(
        n_embd=dims["n_embd"], n_head=dims["n_head"], n_layer=dims["n_layer"], block_size=dims["block_size"]
    )
    write_training_checkpoint(
        model, path, train_config=config, iter_num=5000, val_loss=3.1, best_val_loss=3.0, optimizer=optimizer
    )
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "checkpoint_bytes": path.stat().st_size,
    }


def run_summary(
    *, dims: dict, info: dict, repeat: int, med: dict, samples: dict, ratios: dict, targets: dict
):
    """The JSON every benchmark prints: the model, the medians and samples, the ratios and which targets were met."""
    import os

    return {
        "model": {**dims, **info},
        "repeat": repeat,
        "median": med,
        "samples": samples,
        "ratios": ratios,
        "targets_met": targets,
        "cpu_count": os.cpu_count(),
    }


def checkpoint_line(info: dict) -> str:
    """One line describing a benchmark checkpoint (``write_benchmark_checkpoint``'s figures)."""
    return (
        f"  {info['parameters'] / 1e6:.1f}M parameters, weights {info['weights_bytes'] / 1e6:.0f} MB, "
        f"checkpoint {info['checkpoint_bytes'] / 1e6:.0f} MB"
    )


def spawn(script: str, role: str, args: dict) -> dict:
    """Run ``script --child ROLE ARGS`` in a fresh interpreter and return the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, script, "--child", role, json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{role} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_main(
    parser, *, prefix: str, child_generate, child_run, run, print_summary, run_kwargs=None
) -> None:
    """The shared command-line flow: ``--child ROLE ARGS`` runs one contender and prints its JSON; otherwise
    run every contender in ``--workdir`` (default: a temporary folder, removed afterwards) and print the ratios."""

    parser.add_argument("--small", action="store_true", help="a model of a few million parameters")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to generate files (default: a temp dir)"
    )
    parser.add_argument("--child", nargs=2, metavar=("ROLE", "ARGS"), help=__import__("argparse").SUPPRESS)
    options = parser.parse_args()
    if options.child:
        role, args = options.child[0], json.loads(options.child[1])
        print(json.dumps(child_generate(args) if role == "generate" else child_run(role, args)))
        return
    with work_folder(options.workdir, prefix) as workdir:
        results = run(options.small, options.repeat, workdir, **(run_kwargs(options) if run_kwargs else {}))
    print_summary(results)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def work_folder(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """``workdir`` (created if needed, kept), or a temporary folder removed afterwards."""
    import shutil
    import tempfile

    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix=prefix)) if own else workdir
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
