"""Preflight: in seconds and before any download, check that ``release run`` can finish.

Every setting the run needs is validated up front (the card's would otherwise fail only after verify), and free
disk and memory are checked against what this checkpoint needs, from its head alone (its size and ``data.pkl``,
read as the streaming fetch reads them; where the head cannot be read, the whole checkpoint counts as weights).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from release.errors import ResourceError

if TYPE_CHECKING:
    from release.fetch import CheckpointHead

log = logging.getLogger(__name__)

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Verify's spill files: mostly the reference logits (tokens x vocabulary), so nearly the same at 30M and at 1B
# parameters (0.91 GB both, measured with benchmarks/bench_scale.py; see README, "Scale"): the larger of a
# floor and a share of the weights. Plus what a model folder holds besides the weights (tokenizer, code), logs.
VERIFY_DISK_SHARE = 0.25
VERIFY_DISK_MIN = 1 * 10**9
FIXED_DISK = 200 * 10**6
# Memory over the weights' fp32 bytes: the run's peak RSS was 1.12x at 1B (fp32 release, verify's peak); plus
# the interpreter with torch and transformers.
MEMORY_SHARE = 1.1
FIXED_MEMORY = 1 * 10**9
RUNNER_HINT = (
    "free space or memory, or point the build at a larger runner (repository variable RELEASE_RUNNER; see the "
    "README's 'Scale' section)"
)


@dataclass(frozen=True)
class Needs:
    disk: int  # bytes, peak extra
    memory: int  # bytes, peak
    detail: str


def needs_for(head: CheckpointHead, *, dtype: str, cached: bool, local: bool) -> Needs:
    """What a run needs for this checkpoint released as ``dtype``.

    ``cached``: the weights-only file is already there; ``local``: a non-streamable local file is read in place.
    """
    params = head.weights_bytes // max(head.dtype_bytes, 1)
    out_bytes = params * DTYPE_BYTES[dtype]
    if head.streamable:
        reference = 0 if cached else head.reference_bytes
        ref_what = "weights-only file (cached)" if cached else "weights-only file"
    else:  # the fallback downloads the whole file, or reads a local one where it is
        reference = 0 if local else (head.size or head.weights_bytes)
        ref_what = "checkpoint read in place" if local else "whole checkpoint"
    verify = max(VERIFY_DISK_MIN, int(VERIFY_DISK_SHARE * head.weights_bytes))
    disk = reference + out_bytes + verify + FIXED_DISK
    memory = int(MEMORY_SHARE * params * 4) + FIXED_MEMORY
    detail = f"{ref_what} {reference / GB:.1f} GB + model folder {out_bytes / GB:.1f} GB + verify {verify / GB:.1f} GB"
    return Needs(disk=disk, memory=memory, detail=detail)


def _existing(path: Path) -> Path:
    """``path``, or its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).free


def available_memory_bytes() -> int | None:
    """MemAvailable, capped by a cgroup v2 limit; None where neither is readable."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max" and available is not None:
            available = min(available, int(limit) - current)
    except (OSError, ValueError):
        pass
    return available


def check_resources(needs: Needs, *, work_dirs: list[Path]) -> None:
    """Raise ``ResourceError`` (one line, figures, what to do) when disk or memory fall short."""
    by_device: dict[int, Path] = {}
    for folder in work_dirs:
        by_device.setdefault(os.stat(_existing(folder)).st_dev, folder)
    # Everything lands on one file system in the common case; with several, the largest share must fit each.
    for folder in by_device.values():
        free = free_disk_bytes(folder)
        if free < needs.disk:
            raise ResourceError(
                f"not enough free disk: {folder} has {free / GB:.1f} GB free, this checkpoint needs "
                f"{needs.disk / GB:.1f} GB ({needs.detail}); {RUNNER_HINT}"
            )
    memory = available_memory_bytes()
    if memory is not None and memory < needs.memory:
        raise ResourceError(
            f"not enough memory: {memory / GB:.1f} GB available, this checkpoint needs {needs.memory / GB:.1f} GB; "
            f"{RUNNER_HINT}"
        )


def device_line(device: str, *, weights_bytes: int, gpus=None) -> str:
    """Where verify will run the models for ``device`` (``release.verify.loading.resolve_device``), in one line:
    the GPU's free memory against what one float32 model needs, and what happens when it is short.

    ``gpus``: ``(free, total)`` bytes per GPU (default: ``release.verify.loading.cuda_memory``).

    Raises:
        UsageError: ``device`` names a GPU that is not there, or accelerate is missing.
    """
    from release.verify import loading

    memory = (gpus or loading.cuda_memory)()
    placement = loading.resolve_device(device, weights_bytes=weights_bytes, gpus=lambda: memory)
    if placement.name == "cpu":
        return f"device {device}: {'' if device == 'cpu' else 'no GPU is visible, '}verify runs on the CPU"
    needs = loading.DEVICE_MEMORY_SHARE * weights_bytes
    free = memory[int(placement.name.split(":")[1])][0]
    line = f"device {placement.name}: {free / GB:.1f} GB free, verify needs {needs / GB:.1f} GB"
    if not placement.spread:
        return line + ": ok"
    gpu_count = sum(1 for key in placement.max_memory if key != "cpu")
    return (
        f"{line}: short, so accelerate spreads each model over {gpu_count} GPU(s) and the CPU (slower); a GPU "
        "with more free memory keeps it on one"
    )


def preflight(settings, *, stop_after: str | None, pyproject_dir: Path | None) -> list[str]:
    """Check everything ``release run`` will need before it starts; return what was checked, one line each.

    Raises:
        SettingsError: a setting a later step needs is missing or invalid (the card's included).
        ResourceError: free disk or memory fall short of what this checkpoint needs.
        UsageError: the configured device names a GPU that is not there.
        FetchError: the checkpoint's source cannot be reached.
    """
    from release.errors import SettingsError
    from release.settings import STEPS

    last = STEPS.index(stop_after) if stop_after else len(STEPS) - 1
    lines = []
    if last >= STEPS.index("card"):
        from release.card.model_card import card_settings_from

        card = card_settings_from(settings, base_dir=pyproject_dir)
        if card.template and not Path(card.template).is_file():
            raise SettingsError(f"[tool.release.card] template {card.template} does not exist")
        lines.append(f"card settings: ok ({card.model_name}, {card.license})")
    if settings.eval_text and not Path(settings.eval_text).is_file():
        raise SettingsError(
            f"eval_text {settings.eval_text} does not exist; set it to a text file or leave it unset"
        )
    if not settings.checkpoint:
        return lines
    from release.fetch import default_cache_dir, peek_checkpoint, weights_only_path

    head = peek_checkpoint(settings.checkpoint)
    cached = weights_only_path(settings.checkpoint_sha256.lower()).is_file()
    local = "://" not in settings.checkpoint or settings.checkpoint.startswith("file://")
    needs = needs_for(head, dtype=settings.dtype, cached=cached, local=local)
    check_resources(needs, work_dirs=[default_cache_dir(), Path(settings.dist_dir)])
    size = f"{head.size / GB:.2f} GB" if head.size else "size unknown"
    streamed = "streamed weights-only" if head.streamable else f"not streamable: {head.reason}"
    lines.append(
        f"checkpoint: {size}, weights {head.weights_bytes / GB:.2f} GB ({streamed}); needs disk "
        f"{needs.disk / GB:.1f} GB ({needs.detail}), memory {needs.memory / GB:.1f} GB: ok"
    )
    if last >= STEPS.index("verify"):
        params = head.weights_bytes // max(head.dtype_bytes, 1)
        lines.append(device_line(settings.device, weights_bytes=4 * params))
    return lines
