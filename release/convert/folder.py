"""Convert a training checkpoint into the folder users download: a transformers model with remote code.

``convert_checkpoint`` validates everything that is cheap first (output folder, checkpoint, architecture
against the training config, every key's shape, the tokenizer), then streams the weights tensor by tensor into
safetensors files it writes itself, so memory stays near one tensor whatever the model's size. The folder is
built beside ``--out`` and renamed into place only when complete; nothing is left behind on any failure.

Output (byte-identical for the same inputs: no timestamps, fixed order everywhere)::

    config.json  generation_config.json  configuration_custom_transformer.py  modeling_custom_transformer.py
    model.safetensors | model-0000K-of-0000N.safetensors + model.safetensors.index.json
    tokenizer files (vocabulary byte for byte; tokenizer_config.json describes this model: release.convert.tokenizer)
    release.json (provenance: input, converter, libraries, every file's SHA-256)
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import math
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from release._io import folder_files, fsync_dir, fsync_file, sha256_file
from release.checkpoint import background_digest
from release.convert.tokenizer import TokenizerInfo, stage_tokenizer
from release.errors import ConversionError, OutputExistsError, ResourceError, UsageError
from release.settings import DTYPES, SAFETENSORS_DTYPES

if TYPE_CHECKING:
    import torch

    from modeling.mapping import Architecture, TargetTensor
    from release.checkpoint import TrainingCheckpoint

log = logging.getLogger(__name__)

MODELING_FILES = ("configuration_custom_transformer.py", "modeling_custom_transformer.py")
AUTO_MAP = {
    "AutoConfig": "configuration_custom_transformer.CustomTransformerConfig",
    "AutoModel": "modeling_custom_transformer.CustomTransformerModel",
    "AutoModelForCausalLM": "modeling_custom_transformer.CustomTransformerForCausalLM",
}
ARCHITECTURES = ["CustomTransformerForCausalLM"]
WRITEBACK_CHUNK = 64 * 2**20  # see SafetensorsWriter._start_writeback
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
RELEASE_FILE = "release.json"
CONVERTER_NAME = "custom-transformer-release"


@dataclass(frozen=True)
class FileRecord:
    """One output file: its SHA-256 and size in bytes."""

    sha256: str
    size: int


@dataclass(frozen=True)
class ConversionResult:
    """What ``convert_checkpoint`` wrote.

    Attributes:
        out_dir: The finished model folder.
        architecture: The model's dimensions, read from the checkpoint's tensors.
        files: Every file in ``out_dir`` (relative POSIX path -> record), ``release.json`` included.
        checkpoint_sha256: SHA-256 of the input (``release.checkpoint.checkpoint_digest`` for DCP folders).
        dtype: The weights' dtype: "float32", "bfloat16" or "float16".
    """

    out_dir: Path
    architecture: Architecture
    files: dict[str, FileRecord]
    checkpoint_sha256: str
    dtype: str


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_size(text: str) -> int:
    """Parse a size such as "500MB", "2GB", "1GiB" or "12345" (bytes) into bytes. KB/MB/GB are powers of 10.

    Raises:
        UsageError: The text is not a positive size.
    """
    match = _SIZE.match(str(text))
    if match is None:
        raise UsageError(f"invalid size {text!r}: use e.g. 500MB, 2GB, 1GiB or a number of bytes")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[(unit or "b").lower()])
    if size <= 0:
        raise UsageError(f"invalid size {text!r}: must be more than 0 bytes")
    return size


def convert_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    tokenizer: str | Path | None = None,
    dtype: str = "float32",
    max_shard_size: int = 5 * 10**9,
    force: bool = False,
    progress: bool | None = None,
    checkpoint_sha256: str | None = None,
    original: tuple[str, int] | None = None,
) -> ConversionResult:
    """Convert a training checkpoint into a transformers model folder with remote code, atomically.

    Args:
        checkpoint: A ``torch.save`` training checkpoint or bare state dict, or a
            ``torch.distributed.checkpoint`` folder.
        out: The model folder to create. Built in a temporary folder beside it and renamed when complete.
        tokenizer: A local tokenizer folder or a Hub repo id; None means GPT-2's ("gpt2" on the Hub).
        dtype: "float32", "bfloat16" or "float16": the dtype the weights are cast to.
        max_shard_size: Largest weights file in bytes; above it the weights are split into numbered shards.
        force: Replace ``out`` if it exists and is not empty.
        progress: Report tensors/bytes written on stderr; None means only when stderr is a terminal.
        checkpoint_sha256: The input's SHA-256 when the caller computed it itself over the same bytes (the
            pipeline's fetch step hashes the file as it writes it); recorded in ``release.json`` instead of
            hashing the input a second time. None: hash it here.
        original: (file name, size in bytes) of the checkpoint ``checkpoint_sha256`` names, when ``checkpoint``
            is the weights-only file fetch extracted from it: release.json's provenance names the original.

    Raises:
        UsageError: ``dtype`` or ``max_shard_size`` is invalid.
        OutputExistsError: ``out`` exists and is not empty (and ``force`` is not set), or is not a folder.
        CheckpointError: The checkpoint is missing, unreadable, unsafe or not a checkpoint of this model.
        ConversionError: Keys are missing/unexpected/misshapen, the training config disagrees with the
            tensors, or a weight is NaN/Inf (or overflows ``dtype``).
        TokenizerError: The tokenizer cannot be loaded or its vocabulary does not fit the embedding.
    """
    from modeling.mapping import dropped_keys
    from release.checkpoint import open_checkpoint

    if dtype not in DTYPES:
        raise UsageError(f"invalid dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int) or max_shard_size <= 0:
        raise UsageError(f"invalid max_shard_size {max_shard_size!r}: must be a positive number of bytes")
    if sys.byteorder != "little":  # safetensors is little-endian and the weights are written as raw bytes
        raise ConversionError("converting on a big-endian machine is not supported")
    out, checkpoint = Path(out), Path(checkpoint)
    _check_output(out, force=force)
    progress = sys.stderr.isatty() if progress is None else progress
    # Hashing the input (all of it, optimizer state included) is the longest single task: it starts at once
    # and runs beside everything else; any failure cancels it.
    with background_digest(checkpoint, checkpoint_sha256) as digest, _one_torch_thread():
        ckpt = open_checkpoint(checkpoint)
        try:
            arch = ckpt.architecture  # config cross-check and every key's shape, before any weight is read
            dropout = ckpt.dropout
            needed = _weight_bytes(ckpt, arch, dtype)
            folder = next(p for p in [out.parent.absolute(), *out.parent.absolute().parents] if p.exists())
            if shutil.disk_usage(folder).free < needed:
                raise _full_disk(folder, needed)
            with _staging_folder(out, needed) as staging:
                tok = stage_tokenizer(tokenizer, staging, arch)
                _write_text(staging / "config.json", _config_json(arch, dtype, dropout, tok))
                _write_text(staging / "generation_config.json", _generation_config_json(tok))
                for name in MODELING_FILES:
                    (staging / name).write_bytes(resources.files("modeling").joinpath(name).read_bytes())
                records = _write_weights(
                    ckpt, arch, staging, dtype=dtype, max_shard_size=max_shard_size, progress=progress
                )
                # Checked after the weights are written, while the disk takes them in: the time is hidden
                # behind the final fsync (a bad buffer still leaves nothing behind).
                _check_dropped(ckpt, dropped_keys(arch))
                for rel, path in folder_files(staging):
                    if rel not in records:
                        records[rel] = _file_record(path)
                checkpoint_sha256 = digest()
                provenance = _release_json(ckpt, checkpoint_sha256, arch, dtype, tok, records, original)
                _write_text(staging / RELEASE_FILE, provenance)
                records[RELEASE_FILE] = _file_record(staging / RELEASE_FILE)
                _fsync_folder(staging)
                _publish(staging, out, force=force)
        finally:
            ckpt.close()
    files = dict(sorted(records.items()))
    return ConversionResult(
        out_dir=out, architecture=arch, files=files, checkpoint_sha256=checkpoint_sha256, dtype=dtype
    )


# --------------------------------------------------------------------------- output folder


def _check_output(out: Path, *, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise OutputExistsError(f"output {out} exists and is not a folder; choose another --out")
        if any(out.iterdir()) and not force:
            raise OutputExistsError(f"output folder {out} is not empty; pass --force to replace it")


def _weight_bytes(ckpt, arch, dtype: str) -> int:
    """What the weights take in ``dtype``: the bulk of the model folder."""
    import torch

    from modeling.mapping import dropped_keys

    dropped = set(dropped_keys(arch))
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    return itemsize * sum(math.prod(shape) for key, shape in ckpt.shapes.items() if key not in dropped)


def _full_disk(folder: Path, needed: int) -> ResourceError:
    folder = next(p for p in [folder, *folder.parents] if p.exists())
    free = shutil.disk_usage(folder).free
    return ResourceError(
        f"not enough free disk: {folder} has {free:,} bytes free, the model folder needs {needed:,} bytes "
        "(the weights); free up space or choose another --out"
    )


@contextmanager
def _staging_folder(out: Path, needed: int = 0) -> Iterator[Path]:
    """A fresh hidden folder beside ``out``; removed (with any parents it created) if anything goes wrong. A
    full disk becomes a ``ResourceError`` naming the folder and the ``needed`` bytes."""
    parent = out.parent.absolute()
    created = list(itertools.takewhile(lambda folder: not folder.exists(), [parent, *parent.parents]))
    staging = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OutputExistsError(
                f"cannot write into {parent}: {(exc.strerror or str(exc)).lower()}; choose an --out folder you "
                "can write to"
            ) from exc
        yield staging
    except BaseException as exc:  # Ctrl-C and a full disk included: leave nothing behind
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _full_disk(parent, needed) from exc
        raise


def _publish(staging: Path, out: Path, *, force: bool) -> None:
    """Rename the finished folder to ``out``; with ``force`` the old folder is moved aside and deleted after.

    If anything fails (Ctrl-C included) before the new folder is in place, the old one is moved back.
    """
    _check_output(out, force=force)  # again: something may have appeared at ``out`` meanwhile
    aside = None
    try:
        if out.exists() and any(out.iterdir()):
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, aside / "previous")
        try:
            os.replace(staging, out)  # replaces an empty folder atomically on POSIX
        except OSError as exc:
            reason = exc.strerror or exc
            raise OutputExistsError(f"cannot move the converted model into {out}: {reason}") from exc
    except BaseException:
        if aside is not None and (aside / "previous").exists() and not out.exists():
            os.replace(aside / "previous", out)
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(out.parent)


def _fsync_folder(folder: Path) -> None:
    """Make every file in ``folder``, and the folder itself, durable before it is renamed into place.

    One pass at the end rather than one fsync per file as it is written: the disk works on the weights while the
    conversion goes on, and the small files share one journal commit.
    """
    for _, path in folder_files(folder):
        fsync_file(path)
    fsync_dir(folder)


def _write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))  # no newline translation on any platform


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _file_record(path: Path) -> FileRecord:
    return FileRecord(sha256=sha256_file(path), size=path.stat().st_size)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch ops on one thread meanwhile.

    The work is memory-bound, another thread hashes the input, and on a busy machine every small op otherwise
    waits ~10-20 ms for the intra-op thread pool to wake up.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- config files


def _config_json(arch: Architecture, dtype: str, dropout: float, tok: TokenizerInfo) -> str:
    from modeling.configuration_custom_transformer import CustomTransformerConfig

    config = CustomTransformerConfig(
        **arch.hf_config_kwargs(),
        dropout=dropout,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        auto_map=dict(AUTO_MAP),
        architectures=list(ARCHITECTURES),
    )
    data = json.loads(config.to_json_string(use_diff=True))
    data.update(arch.hf_config_kwargs())  # every dimension explicit, even one equal to a default
    data["dtype"] = dtype  # transformers 5.x
    data["torch_dtype"] = dtype  # transformers 4.x reads this name
    return _json_text(data)


def _generation_config_json(tok: TokenizerInfo) -> str:
    from transformers import GenerationConfig

    config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    return _json_text(json.loads(config.to_json_string(use_diff=True)))


# --------------------------------------------------------------------------- weights


def plan_shards(plan: list[TargetTensor], itemsize: int, max_shard_size: int) -> list[tuple[str, list]]:
    """Split the plan, in order, into shards of at most ``max_shard_size`` bytes (a bigger tensor: alone)."""
    groups: list[list[TargetTensor]] = [[]]
    size = 0
    for target in plan:
        nbytes = math.prod(target.shape) * itemsize
        if groups[-1] and size + nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(target)
        size += nbytes
    if len(groups) == 1:
        return [(SINGLE_FILE, groups[0])]
    n = len(groups)
    return [(f"model-{i:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups, start=1)]


def _write_weights(
    ckpt: TrainingCheckpoint,
    arch: Architecture,
    folder: Path,
    *,
    dtype: str,
    max_shard_size: int,
    progress: bool,
) -> dict[str, FileRecord]:
    """Stream every output tensor into safetensors files; returns the weights files' records (index included).

    Every tensor is checked for NaN/Inf after the cast; all offending keys are collected before failing.
    ``progress``: huggingface_hub's bar (it honours HF_HUB_DISABLE_PROGRESS_BARS) and a line per file written.
    """
    import torch
    from huggingface_hub.utils import tqdm

    from modeling.mapping import build_target, plan_conversion

    target_dtype = getattr(torch, dtype)  # one of DTYPES, checked by convert_checkpoint
    plan = plan_conversion(arch)
    shards = plan_shards(plan, target_dtype.itemsize, max_shard_size)
    total_size = sum(math.prod(t.shape) for t in plan) * target_dtype.itemsize
    bar = tqdm(
        total=total_size,
        unit="B",
        unit_scale=True,
        desc=f"converting {len(plan)} tensors",
        disable=not progress,
    )
    records: dict[str, FileRecord] = {}
    weight_map: dict[str, str] = {}
    bad: list[str] = []
    for filename, targets in shards:
        writer = None if bad else SafetensorsWriter(folder / filename, targets, SAFETENSORS_DTYPES[dtype])
        try:
            for target in targets:
                sources: list[torch.Tensor] = []

                def get_source(key: str, sources=sources) -> torch.Tensor:
                    sources.append(ckpt.get(key))
                    return sources[-1]

                tensor = build_target(target, get_source).to(target_dtype).contiguous()
                bad += _nonfinite(tensor, dict(zip(target.sources, sources, strict=True)), target_dtype)
                if not bad:
                    writer.write(target.name, tensor)
                    bar.update(tensor.numel() * tensor.element_size())
                del tensor
                for source in sources:
                    ckpt.release(source)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is None:
            continue
        if bad:  # keep checking the remaining tensors so the error lists them all, but write nothing more
            writer.abort()
            continue
        records[filename] = writer.close()
        weight_map.update(dict.fromkeys((t.name for t in targets), filename))
        if progress:
            bar.write(f"wrote {filename}", file=sys.stderr)
    bar.close()
    if bad:
        shown = "; ".join(bad[:8]) + (f"; and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise ConversionError(f"non-finite weights in {len(bad)} checkpoint tensor(s): {shown}")
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total_size},
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_text(folder / INDEX_FILE, _json_text(index))
        records[INDEX_FILE] = _file_record(folder / INDEX_FILE)
    return records


def _nonfinite(tensor: torch.Tensor, sources: dict[str, torch.Tensor], dtype: torch.dtype) -> list[str]:
    """The source keys behind non-finite values of ``tensor`` (the cast of their concatenation), with why.

    A NaN or Inf anywhere makes the sum non-finite, so one reduction without allocations clears almost every
    tensor; only a non-finite sum (or an overflowing one) gets the element-wise checks.
    """
    import torch

    if math.isfinite(float(tensor.sum(dtype=torch.float32))) or bool(torch.isfinite(tensor).all()):
        return []
    problems = []
    for key, source in sources.items():
        if not bool(torch.isfinite(source).all()):
            problems.append(f"{key} (NaN/Inf)")
        elif not bool(torch.isfinite(source.to(dtype)).all()):
            problems.append(f"{key} (values beyond the range of {str(dtype).removeprefix('torch.')})")
    return problems


def _check_dropped(ckpt: TrainingCheckpoint, keys: list[str]) -> None:
    """The dropped ``tril`` buffers must be the causal mask the converted model builds itself.

    Anything else would mean the training module computed something the converted model does not.
    """
    import torch

    masks: dict[tuple, torch.Tensor] = {}
    wrong = []
    for key in keys:
        tensor = ckpt.get(key)
        mask_key = (tuple(tensor.shape), tensor.dtype)
        if mask_key not in masks:
            masks[mask_key] = torch.tril(torch.ones(tensor.shape, dtype=tensor.dtype))
        if not _bitwise_equal(tensor, masks[mask_key]):
            wrong.append(key)
        ckpt.release(tensor)
        del tensor
    if wrong:
        shown = ", ".join(wrong[:5]) + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise ConversionError(f"causal-mask buffers are not lower-triangular ones: {shown}")


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bits; compared as integers (about twice as fast as comparing floats)."""
    import torch

    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    same_layout = a.shape == b.shape and a.dtype == b.dtype
    return same_layout and torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


class SafetensorsWriter:
    """Write one safetensors file tensor by tensor, in the given order, hashing the bytes as they are written.

    The header (names, dtypes, shapes, offsets; ``{"format": "pt"}`` metadata) is known from the plan, so only
    one tensor is ever in memory. Tensors are written contiguously in plan order; the header is padded with
    spaces to a multiple of 8 bytes so every tensor is aligned for memory-mapped loading.
    """

    def __init__(self, path: Path, targets: list[TargetTensor], dtype_code: str):
        itemsize = {"F32": 4, "BF16": 2, "F16": 2}[dtype_code]
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        self._expected: list[tuple[str, int]] = []
        for target in targets:
            nbytes = math.prod(target.shape) * itemsize
            header[target.name] = {
                "dtype": dtype_code,
                "shape": list(target.shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._expected.append((target.name, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self.path = path
        self._next = 0
        self._hash = hashlib.sha256()
        self._size = self._flushed = 0
        self._file = open(path, "wb")
        self._emit(struct.pack("<Q", len(raw)) + raw)

    def _emit(self, data) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)
        if self._size - self._flushed >= WRITEBACK_CHUNK:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Let the disk start on what is written so far, so the final fsync has less left to wait for.

        POSIX_FADV_DONTNEED starts writeback of dirty pages without waiting for it (Linux); it drops only pages
        that are already clean, and those of this file are not read again here.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        self._file.flush()
        os.posix_fadvise(
            self._file.fileno(), self._flushed, self._size - self._flushed, os.POSIX_FADV_DONTNEED
        )
        self._flushed = self._size

    def write(self, name: str, tensor: torch.Tensor) -> None:
        import torch

        expected_name, nbytes = self._expected[self._next]
        if name != expected_name or tensor.numel() * tensor.element_size() != nbytes:
            raise ConversionError(f"internal error: {name} written out of order or with the wrong size")
        if nbytes:
            self._emit(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> FileRecord:
        if self._next != len(self._expected):
            raise ConversionError(f"internal error: {self.path.name} is missing tensors")
        self._start_writeback()
        self._file.close()  # fsync comes with the whole folder's, at the end
        return FileRecord(sha256=self._hash.hexdigest(), size=self._size)

    def abort(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------- provenance


def _release_json(
    ckpt: TrainingCheckpoint,
    checkpoint_sha256: str,
    arch: Architecture,
    dtype: str,
    tok: TokenizerInfo,
    records: dict[str, FileRecord],
    original: tuple[str, int] | None = None,
) -> str:
    import safetensors
    import tokenizers
    import torch
    import transformers

    import release

    path = Path(ckpt.path)
    files = path.rglob("*") if path.is_dir() else [path]
    filename, size = path.name, sum(f.stat().st_size for f in files if f.is_file())
    if original is not None:  # the weights-only file stands in for this checkpoint
        filename, size = original
    commit, dirty = _converter_git()
    data = {
        "converter": {
            "name": CONVERTER_NAME,
            "version": release.__version__,
            "git_commit": commit,
            "dirty": dirty,
        },
        "checkpoint": {
            "filename": filename,
            "sha256": checkpoint_sha256,
            "size": size,
            "format": ckpt.format,
            "iter_num": _metric(ckpt.meta.get("iter_num")),
            "val_loss": _metric(ckpt.meta.get("val_loss")),
            "best_val_loss": _metric(ckpt.meta.get("best_val_loss")),
            "train_config": _jsonable(ckpt.train_config),
        },
        "architecture": asdict(arch),
        "num_parameters": sum(math.prod(s) for k, s in ckpt.shapes.items() if not k.endswith(".tril")),
        "dtype": dtype,
        "tokenizer": asdict(tok),
        "libraries": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "tokenizers": tokenizers.__version__,
            "python": platform.python_version(),
        },
        "files": {name: asdict(rec) for name, rec in sorted(records.items())},
    }
    return _json_text(data)


def _metric(value: Any) -> int | float | None:
    """A number from the checkpoint's metadata, or None when it is absent or not finite (an initial inf loss)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None if value is None else _jsonable(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """Plain JSON: non-finite floats become "inf"/"nan" (JSON has no such numbers), keys become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _converter_git() -> tuple[str | None, bool | None]:
    """The commit of the repository the converter runs from, and whether tracked files differ from it."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None, None

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True
        )
        return run.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status)
