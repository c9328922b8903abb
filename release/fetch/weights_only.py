"""Fetch a training checkpoint as a stream and keep only what a release needs: the weights-only file.

A training checkpoint is mostly optimizer state (AdamW: ~3x the weights), which a release never reads.
``fetch_weights_only`` reads the checkpoint once, front to back, hashes every byte for the SHA-256 pin, and
writes ``<cache>/weights-only/<original sha256>.pt``: a ``torch.save`` file with the model's records
(byte-identical) and the small metadata, for ``torch.load(..., weights_only=True, mmap=True)``. All other records
are hashed and dropped as they pass; memory stays around one storage record.

torch's zip format can be read front to back: ``data.pkl`` comes first and says (read with an allow-list
unpickler that builds nothing but references, never plain pickle) which ``data/<key>`` records are the model's.
The zip module needs the central directory at the end, hence the small local-header reader here.

Not streamable (``StreamFallback``: the caller fetches the whole file, or hashes a local one in place and uses
it as it is): a legacy (non-zip) ``torch.save`` file, a DCP folder, an archive without ``data.pkl`` first or
without a model state dict. Across runs nothing is resumed (hashlib's state cannot be saved): the weights-only
file appears only once the whole stream is hashed, and later runs reuse it after re-hashing it against its
sidecar (what the release workflow caches).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from release._io import first_line, fsync_dir, fsync_file, sha256_file, write_text_atomic
from release.errors import CheckpointError, FetchError
from release.fetch.artifact import fetch_artifact
from release.fetch.source import LocalFile, Source, default_cache_dir, normalize_sha256, open_source

log = logging.getLogger(__name__)

WEIGHTS_ONLY_DIR = "weights-only"  # under fetch.default_cache_dir(); release.yml caches this folder
KEPT_META = ("config", "iter_num", "val_loss", "best_val_loss")
MODEL_KEYS = ("model_state_dict", "model")
_COPIED_RECORDS = (".format_version", ".storage_alignment", "byteorder")  # small records worth keeping
_LOCAL_HEADER = b"PK\x03\x04"
_END_SIGNATURES = (b"PK\x01\x02", b"PK\x06\x06", b"PK\x06\x07", b"PK\x05\x06")
_DATA_DESCRIPTOR_FLAG = 0x08
_MAX_PICKLE = 1 << 30  # a data.pkl larger than this is not a state dict's


@dataclass(frozen=True)
class CheckpointHead:
    """What a checkpoint's first bytes say (``peek_checkpoint``), for the preflight."""

    size: int | None  # the whole checkpoint, when the source says
    weights_bytes: int  # the model's parameters (no buffers), in the checkpoint's dtype
    reference_bytes: int  # what the weights-only file will hold (parameters + distinct buffers)
    dtype_bytes: int  # item size of most of the weights (4: fp32)
    streamable: bool
    reason: str | None = None  # why not


@dataclass(frozen=True)
class Fetched:
    """The fetch step's result: the checkpoint a release reads, and the original it came from."""

    path: Path  # the weights-only file; after a fallback, the original (local) or its whole download
    sha256: str  # the ORIGINAL checkpoint's SHA-256 (what the pin and the provenance name)
    size: int  # the ORIGINAL checkpoint's size in bytes
    filename: str  # the original's file name, for provenance
    source: Literal["stream", "cache", "fallback"]  # streamed now, reused weights-only file, or whole file
    fallback_reason: str | None = None  # why the checkpoint could not be streamed (source 'fallback')
    kept_bytes: int = 0  # bytes of the model's records kept (source 'stream')


class StreamFallback(Exception):
    """The checkpoint cannot be streamed; the message says why (one line)."""


def weights_only_path(sha256: str, cache_dir: Path | None = None) -> Path:
    """Where the weights-only file of the checkpoint with this SHA-256 lives."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / WEIGHTS_ONLY_DIR / f"{sha256}.pt"


def fetch_weights_only(
    uri: str,
    *,
    sha256: str,
    cache_dir: Path | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 60,
    progress: bool | None = None,
    fallback_out: Path | None = None,
) -> Fetched:
    """Stream the checkpoint at ``uri`` into its weights-only file, checking the whole stream's SHA-256.

    Args:
        uri: Local path, ``file://``, ``http(s)://``, ``hf://``, ``s3://`` or ``gs://``.
        sha256: The original checkpoint's expected SHA-256.
        cache_dir: The artifact cache (default ``fetch.default_cache_dir()``); the file goes to
            ``<cache_dir>/weights-only/<sha256>.pt`` with a ``<sha256>.json`` sidecar.
        retries, backoff, timeout: HTTP: attempts without progress, first delay, seconds to wait for bytes.
        progress: A progress bar (``huggingface_hub.utils.tqdm``); None: only when stderr is a terminal.
        fallback_out: Where a non-streamable remote checkpoint is downloaded whole (``fetch_artifact``).

    Raises:
        UsageError: A malformed URI or SHA-256.
        FetchError: The source cannot be read, the stream ends early, or its SHA-256 is not ``sha256``.
        CheckpointError: ``data.pkl`` is unsafe (a global outside the allow-list: refused, nothing run), a
            model record is compressed or missing.
    """
    expected = normalize_sha256(sha256)
    source = open_source(uri, retries=retries, backoff=backoff, timeout=timeout)
    out = weights_only_path(expected, cache_dir)
    show_progress = sys.stderr.isatty() if progress is None else progress

    reused = _reuse(out, expected)
    if reused is not None:
        log.info("using the weights-only file %s of %s (sha256 %s)", out, source.display, expected[:12])
        return Fetched(out, expected, *reused, "cache")
    local = source.path if isinstance(source, LocalFile) else None
    if local is not None and local.is_dir():
        return _fallback_local(source, expected, f"{source.display} is a folder (a DCP checkpoint)")
    try:
        with _stream(source, progress=show_progress) as stream:
            kept, size = _extract(stream, out, expected=expected, filename=source.name)
    except StreamFallback as exc:
        if local is not None:
            return _fallback_local(source, expected, str(exc))
        log.warning("%s cannot be streamed (%s); downloading it whole instead", source.display, exc)
        fetched = fetch_artifact(
            uri,
            sha256=expected,
            out=fallback_out or (out.parent.parent / "checkpoints" / expected / source.name),
            cache_dir=cache_dir,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            progress=show_progress,
        )
        return Fetched(fetched.path, expected, fetched.size, source.name, "fallback", str(exc))
    log.info(
        "streamed %s (%d bytes, sha256 %s): kept %d bytes of model records in %s",
        source.display,
        size,
        expected[:12],
        kept,
        out,
    )
    return Fetched(out, expected, size, source.name, "stream", None, kept)


def peek_checkpoint(uri: str, *, timeout: float = 30) -> CheckpointHead:
    """The checkpoint's size and its model's bytes from its first record (data.pkl), never the whole file.

    Over HTTP this is the start of one GET, closed after data.pkl (a few kilobytes). Not streamable: the
    whole file counts as weights (an upper bound), with the reason.
    """
    source = open_source(uri, retries=2, backoff=0.5, timeout=timeout)
    if isinstance(source, LocalFile) and source.path.is_dir():
        size = sum(f.stat().st_size for f in source.path.rglob("*") if f.is_file())
        return CheckpointHead(size, size, size, 4, False, "a DCP folder")
    with _stream(source, progress=False) as stream:
        try:
            _first_record(stream)
            obj, _ = _read_pickle(_StreamFile(stream, _MAX_PICKLE), stream.display)
            model = _weights_object(obj)
        except StreamFallback as exc:
            total = source.size
            return CheckpointHead(total, total or 0, total or 0, 4, False, str(exc))
    state = next((model[k] for k in MODEL_KEYS if isinstance(model.get(k), dict)), model)
    weights = reference = 0
    itemsizes: dict[int, int] = {}
    seen_buffers: set[tuple] = set()
    for key, ref in state.items():
        if not isinstance(ref, _TensorRef):
            continue
        itemsize = _ITEMSIZES[ref.storage.storage_type]
        nbytes = ref.storage.numel * itemsize
        if key.endswith(".tril"):  # identical per-head buffers: one record in the weights-only file
            if ref.size not in seen_buffers:
                seen_buffers.add(ref.size)
                reference += nbytes
            continue
        weights += nbytes
        reference += nbytes
        itemsizes[itemsize] = itemsizes.get(itemsize, 0) + nbytes
    dtype_bytes = max(itemsizes, key=itemsizes.get) if itemsizes else 4
    return CheckpointHead(source.size, weights, reference, dtype_bytes, True)


# --- the hashing stream ----------------------------------------------------------------------------


@contextlib.contextmanager
def _stream(source: Source, *, progress: bool) -> Iterator[HashingStream]:
    """The source's bytes from the start as a ``HashingStream``; the request (or file) is closed after."""
    with contextlib.closing(source.read(0, progress=progress)) as chunks:
        yield HashingStream(chunks, display=source.display)


class HashingStream:
    """Bytes from an iterator of chunks, read exactly, every byte fed to one SHA-256 as it arrives."""

    def __init__(self, chunks: Iterator[bytes], *, display: str):
        self._chunks = chunks
        self._buf = bytearray()
        self._pos = 0  # read position inside _buf
        self.digest = hashlib.sha256()
        self.offset = 0  # bytes consumed by the reader
        self.received = 0  # bytes pulled from the source (all hashed)
        self.display = display

    def _chunk(self) -> bytes | None:
        """The source's next chunk, hashed and counted; None at its end."""
        chunk = next(self._chunks, None)
        if chunk is None:
            return None
        self.digest.update(chunk)
        self.received += len(chunk)
        return chunk

    def _pull(self) -> bool:
        chunk = self._chunk()
        if chunk is None:
            return False
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += chunk
        return True

    def _ended(self, what: str) -> FetchError:
        return FetchError(
            f"{self.display}: the stream ended after {self.offset} bytes, inside {what}; the checkpoint is "
            "truncated (or the download was cut short); nothing was kept"
        )

    def read(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes; a stream that ends first is a ``FetchError`` naming ``what``."""
        out = bytearray(n)
        self.readinto(memoryview(out), what)
        return bytes(out)

    def readinto(self, view: memoryview, what: str) -> None:
        """Fill ``view`` exactly; chunks go straight into it (``what`` names it in a truncation error)."""
        self._consume(len(view), what, view)

    def skip(self, n: int, what: str) -> None:
        """Consume ``n`` bytes (hashed, not kept: nothing is allocated for them)."""
        self._consume(n, what, None)

    def _consume(self, n: int, what: str, view: memoryview | None) -> None:
        filled = 0
        while filled < n:
            available = len(self._buf) - self._pos
            if available:
                take = min(n - filled, available)
                if view is not None:
                    with memoryview(self._buf) as buffered:
                        view[filled : filled + take] = buffered[self._pos : self._pos + take]
                self._pos += take
            else:
                chunk = self._chunk()
                if chunk is None:
                    raise self._ended(what)
                take = min(n - filled, len(chunk))
                if view is not None:
                    view[filled : filled + take] = memoryview(chunk)[:take]
                if take < len(chunk):
                    self._buf, self._pos = bytearray(memoryview(chunk)[take:]), 0
            filled += take
            self.offset += take

    def peek(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n and self._pull():
            pass
        return bytes(self._buf[self._pos : self._pos + n])

    def drain(self) -> int:
        """Hash the rest of the stream (the zip's central directory); return the total size."""
        while self._chunk() is not None:
            pass
        return self.received


# --- the zip records ----------------------------------------------------------------------------
# torch's writer streams its records, so each local header says "sizes follow" (flag bit 3) and a data
# descriptor (PK\x07\x08, CRC-32, sizes) comes after the bytes. A stored record's end is still known: a
# tensor record's size is in data.pkl (numel x item size), data.pkl ends at its pickle STOP opcode, and a
# small text record ends at the descriptor whose CRC-32 and size match the bytes before it.


@dataclass
class _Record:
    name: str  # without the archive's folder
    size: int | None  # None: given by the data descriptor after the bytes
    method: int
    descriptor: bool
    zip64: bool


def _next_record(stream: HashingStream) -> _Record | None:
    """The next local file header, or None at the central directory."""
    signature = stream.peek(4)
    if signature in _END_SIGNATURES or not signature:
        return None
    if signature != _LOCAL_HEADER:
        raise CheckpointError(
            f"{stream.display}: not a zip record at byte {stream.offset}; the checkpoint is damaged"
        )
    header = stream.read(30, "a zip record header")
    _, _, flags, method, _, _, _, csize, usize, name_len, extra_len = struct.unpack("<IHHHHHIIIHH", header)
    name = stream.read(name_len, "a zip record name").decode("utf-8", "replace")
    zip64 = _zip64_field(stream.read(extra_len, "a zip record header"))
    descriptor = bool(flags & _DATA_DESCRIPTOR_FLAG)
    size = None if descriptor else csize
    if size is not None and 0xFFFFFFFF in (csize, usize):
        if zip64 is None:
            raise CheckpointError("a zip64 record has no zip64 sizes; the checkpoint is damaged")
        if csize == 0xFFFFFFFF:  # the zip64 field holds the uncompressed size first (if it overflowed)
            size = struct.unpack_from(f"<{len(zip64) // 8}Q", zip64)[1 if usize == 0xFFFFFFFF else 0]
    name = name.split("/", 1)[1] if "/" in name else name
    return _Record(name, size, method, descriptor, zip64 is not None)


def _zip64_field(extra: bytes) -> bytes | None:
    """The zip64 extended information in a local header's extra data, None without one."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 0x0001:
            return extra[pos + 4 : pos + 4 + length]
        pos += 4 + length
    return None


def _end_of_record(stream: HashingStream, record: _Record, size: int) -> None:
    """Read the data descriptor after a record of ``size`` bytes and check that it says the same size."""
    if not record.descriptor:
        return
    what = f"the data descriptor of {record.name}"
    head = stream.peek(4)
    if head == b"PK\x07\x08":
        stream.skip(4, what)
    fmt = "<IQQ" if record.zip64 else "<III"
    _, csize, usize = struct.unpack(fmt, stream.read(struct.calcsize(fmt), what))
    if csize != size or usize != size:
        raise CheckpointError(
            f"{stream.display}: record {record.name} has {csize} bytes by its zip entry, {size} by data.pkl; "
            "the checkpoint is damaged"
        )


def _scan_small_record(stream: HashingStream, record: _Record, limit: int = 1 << 16) -> bytes:
    """A small stored record with a data descriptor: its bytes end where a descriptor matching them begins."""
    import zlib

    fmt = "<IQQ" if record.zip64 else "<III"
    desc = 4 + struct.calcsize(fmt)
    window = stream.peek(limit + desc)
    for end in range(len(window) - desc + 1):
        if window[end : end + 4] == b"PK\x07\x08":
            crc, csize, usize = struct.unpack_from(fmt, window, end + 4)
            if csize == usize == end and crc == zlib.crc32(window[:end]):
                stream.skip(end + desc, f"record {record.name}")
                return window[:end]
    raise StreamFallback(f"the end of record {record.name} cannot be found without the central directory")


class _StreamFile:
    """``read``/``readline`` over the stream for the unpickler: it consumes exactly the pickle's bytes."""

    def __init__(self, stream: HashingStream, limit: int):
        self.stream, self.left = stream, limit
        self.consumed = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            raise CheckpointError(f"{self.stream.display}: data.pkl is larger than {_MAX_PICKLE} bytes")
        data = self.stream.read(n, "data.pkl")
        self.left -= n
        self.consumed += n
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        line = bytearray()
        while not line.endswith(b"\n"):
            line += self.read(1)
        return bytes(line)


# --- data.pkl through an allow-list ----------------------------------------------------------------


@dataclass(eq=False)
class _StorageRef:
    storage_type: str  # e.g. 'FloatStorage'
    key: str
    location: str
    numel: int


@dataclass(eq=False)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple
    requires_grad: bool


class _StorageType(str):
    """``torch.<X>Storage`` as named by data.pkl (only the name is kept)."""


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest
):
    if not isinstance(storage, _StorageRef):
        raise CheckpointError("data.pkl rebuilds a tensor from something that is not a storage record")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride), bool(requires_grad))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(data, _TensorRef):
        raise CheckpointError("data.pkl rebuilds a parameter from something that is not a tensor")
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _ReferenceUnpickler(pickle.Unpickler):
    """Reads data.pkl into plain containers and references to storage records; runs nothing else.

    Only the globals a state dict needs are resolved, each to a function of this module that builds a
    reference (never torch's own rebuilders); any other global is refused before anything is called.
    """

    def __init__(self, file, display: str):
        super().__init__(file)
        self.display = display
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _ITEMSIZES:
            return _StorageType(name)
        raise CheckpointError(
            f"{self.display}: data.pkl asks for {module}.{name}, which a checkpoint has no reason to contain; "
            "refused without running it (only tensors, containers and numbers are allowed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.display}: data.pkl holds an unknown persistent id")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.display}: data.pkl names a storage of an unknown type")
        if str(key) not in self.storages:
            self.storages[str(key)] = _StorageRef(str(storage_type), str(key), str(location), int(numel))
        return self.storages[str(key)]


def _read_pickle(file, display: str) -> tuple[Any, dict[str, _StorageRef]]:
    """The checkpoint object (with references for tensors) and every storage record it names."""
    unpickler = _ReferenceUnpickler(file, display)
    try:
        return unpickler.load(), unpickler.storages
    except (CheckpointError, FetchError):
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{display}: data.pkl cannot be read ({type(exc).__name__}: {first_line(exc)})"
        ) from exc


def _weights_object(obj: Any) -> dict:
    """The part of the checkpoint a release reads: the model's state dict and the small metadata."""
    if isinstance(obj, dict):
        for key in MODEL_KEYS:
            if isinstance(obj.get(key), dict):
                kept = {key: obj[key]}
                kept.update({k: obj[k] for k in KEPT_META if k in obj})
                return kept
        if obj and all(isinstance(v, _TensorRef) for v in obj.values()):
            return obj  # a bare state dict: all of it is the model
    raise StreamFallback("data.pkl holds no model_state_dict")


def _storages_in(obj: Any, found: dict[str, _StorageRef]) -> None:
    if isinstance(obj, _TensorRef):
        found[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages_in(v, found)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _storages_in(v, found)


def _dump_pickle(obj: Any, alias: dict[str, str]) -> bytes:
    """data.pkl for ``obj``: what ``torch.save`` writes for the same tensors (locations become 'cpu'); a key
    in ``alias`` names the record of another key with the same bytes."""
    import torch

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _StorageRef):
                return ("storage", getattr(torch, o.storage_type), alias.get(o.key, o.key), "cpu", o.numel)
            return None

        def reducer_override(self, o):
            if isinstance(o, _TensorRef):
                args = (o.storage, o.offset, o.size, o.stride, o.requires_grad, collections.OrderedDict())
                return torch._utils._rebuild_tensor_v2, args
            return NotImplemented

    buf = io.BytesIO()
    Pickler(buf, protocol=torch.serialization.DEFAULT_PROTOCOL).dump(obj)
    return buf.getvalue()


# --- extraction ------------------------------------------------------------------------------------


def _first_record(stream: HashingStream) -> _Record:
    """The data.pkl record's header, first in the archive; anything else is not streamable."""
    head = stream.peek(4)
    if head != _LOCAL_HEADER:
        if head[:1] == b"\x80":
            raise StreamFallback("it is a legacy (non-zip) torch.save file")
        raise StreamFallback("it is not a zip archive (torch.save's format since torch 1.6)")
    first = _next_record(stream)
    if first is None or first.name != "data.pkl":
        raise StreamFallback(f"its first record is {first.name if first else 'missing'}, not data.pkl")
    if first.method != 0:
        raise StreamFallback(f"its data.pkl is compressed (zip method {first.method})")
    return first


def _extract(stream: HashingStream, out: Path, *, expected: str, filename: str) -> tuple[int, int]:
    """Read the whole stream, write the kept records to ``out`` (atomically, only if the hash matches)."""
    import torch

    display = stream.display
    first = _first_record(stream)
    pickle_file = _StreamFile(stream, first.size if first.size is not None else _MAX_PICKLE)
    obj, storages = _read_pickle(pickle_file, display)
    kept_obj = _weights_object(obj)
    del obj
    if first.size is not None and pickle_file.consumed != first.size:
        stream.skip(first.size - pickle_file.consumed, "data.pkl")
    _end_of_record(stream, first, first.size if first.size is not None else pickle_file.consumed)
    wanted: dict[str, _StorageRef] = {}
    _storages_in(kept_obj, wanted)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{expected[:12]}-"))
    try:
        tmp = staging / out.name
        writer = torch._C.PyTorchFileWriter(str(tmp))
        kept_bytes, written = 0, set()
        # Records with the same bytes and type are written once (the per-head ``tril`` buffers: 0.8 GB at 1B);
        # their tensors then share that storage, as tied weights do. data.pkl, which names the kept keys, is
        # therefore written last (torch.load finds records by name, not by position).
        first_of: dict[tuple[str, str], str] = {}
        alias: dict[str, str] = {}
        sizes = {key: ref.numel * _ITEMSIZES[ref.storage_type] for key, ref in storages.items()}
        while (record := _next_record(stream)) is not None:
            key = record.name[len("data/") :] if record.name.startswith("data/") else None
            keep = key in wanted
            if record.method != 0:
                if keep:
                    raise CheckpointError(
                        f"{display}: record {record.name} is compressed (zip method {record.method}); torch.save "
                        "stores records uncompressed: re-save the checkpoint with torch.save"
                    )
                if record.size is None:
                    raise StreamFallback(f"record {record.name} is compressed and its size follows its bytes")
            size = record.size if record.size is not None else sizes.get(key)
            if size is None:  # a small record of unknown size: .format_version, byteorder, ...
                data = _scan_small_record(stream, record)
                if record.name in _COPIED_RECORDS:
                    writer.write_record(record.name, data, len(data))
                continue
            if keep:
                if size != sizes[key]:
                    raise CheckpointError(
                        f"{display}: record {record.name} has {size} bytes, data.pkl says {sizes[key]}; "
                        "the checkpoint is damaged"
                    )
                buffer = bytearray(size)
                stream.readinto(memoryview(buffer), f"record {record.name}")
                content = (wanted[key].storage_type, hashlib.sha256(buffer).hexdigest())
                written.add(key)
                if content in first_of:
                    alias[key] = first_of[content]
                else:
                    first_of[content] = key
                    if size:
                        storage = torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage()
                        writer.write_record(record.name, storage, size)
                        del storage
                    else:
                        writer.write_record(record.name, b"", 0)
                    kept_bytes += size
                del buffer
            elif record.name in _COPIED_RECORDS:
                data = stream.read(size, f"record {record.name}")
                writer.write_record(record.name, data, len(data))
            else:
                stream.skip(size, f"record {record.name}")
            _end_of_record(stream, record, size)
        missing = sorted(set(wanted) - written, key=lambda k: (len(k), k))
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(
                f"{display}: data.pkl names record data/{missing[0]}{more} but the archive has no such record; "
                "the checkpoint is damaged or incomplete"
            )
        size = stream.drain()
        actual = stream.digest.hexdigest()
        if actual != expected:
            raise FetchError(
                f"SHA-256 mismatch for {display}: expected {expected}, got {actual}; nothing was kept"
            )
        data_pkl = _dump_pickle(kept_obj, alias)
        writer.write_record("data.pkl", data_pkl, len(data_pkl))
        writer.write_end_of_file()
        del writer
        fsync_file(tmp)
        sidecar = {
            "format": "weights-only/1",
            "original_sha256": expected,
            "original_size": size,
            "filename": filename,
            "sha256": sha256_file(tmp),
            "kept_bytes": kept_bytes,
            "shared_records": len(alias),
        }
        os.replace(tmp, out)
        write_text_atomic(out.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        fsync_dir(out.parent)
        return kept_bytes, size
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_ITEMSIZES = {  # the storage types data.pkl may name, and their item sizes
    "DoubleStorage": 8,
    "LongStorage": 8,
    "FloatStorage": 4,
    "IntStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
}


def _reuse(out: Path, expected: str) -> tuple[int, str] | None:
    """(original size, file name) from the sidecar of a complete weights-only file whose bytes still match it;
    else None (and it is removed)."""
    sidecar = out.with_suffix(".json")
    if not (out.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if meta.get("original_sha256") == expected and sha256_file(out) == meta.get("sha256"):
            return int(meta["original_size"]), str(meta.get("filename") or "checkpoint.pt")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.warning("the weights-only file %s does not match its sidecar; fetching the checkpoint again", out)
    out.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    return None


def _fallback_local(source: LocalFile, expected: str, reason: str) -> Fetched:
    """A local checkpoint that cannot be streamed: hashed in place and used as it is (never copied)."""
    from release.checkpoint import checkpoint_digest

    path = source.path
    log.warning(
        "%s cannot be streamed (%s); hashing it in place and reading it as it is", source.display, reason
    )
    actual = checkpoint_digest(path)
    if actual != expected:
        raise FetchError(f"SHA-256 mismatch for {source.display}: expected {expected}, got {actual}")
    files = path.rglob("*") if path.is_dir() else [path]
    size = sum(f.stat().st_size for f in files if f.is_file())
    return Fetched(path, expected, size, path.name, "fallback", reason)
