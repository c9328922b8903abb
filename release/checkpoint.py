"""Read training checkpoints safely and lazily: ``torch.save`` files and ``torch.distributed.checkpoint``.

``open_checkpoint`` accepts the training script's checkpoint dict (``model_state_dict`` + optimizer, scaler,
``iter_num``, losses and the training ``config``), a bare state dict, and a DCP folder as multi-GPU FSDP runs
save it. It offers the model tensors' shapes at once and each tensor on demand, so a converter can validate
a checkpoint before reading any weight and never holds more than it is writing:

- ``torch.save`` files are opened with ``weights_only=True`` (a pickle that would run code is refused) and
  ``mmap=True``: tensors stay backed by the file; optimizer and scaler state are never read.
- DCP folders: shapes come from the metadata; each model tensor is read into a fresh buffer when asked for.
  DCP's own reader unpickles ``.metadata`` with plain ``pickle`` and non-tensor entries with
  ``weights_only=False``; here the metadata goes through an allow-list and non-tensor entries through
  ``torch.load(weights_only=True)``, so a crafted DCP folder cannot run code either.

Keys prefixed by DistributedDataParallel (``module.``) or ``torch.compile`` (``_orig_mod.``), in any nesting,
are stripped (``strip_wrapper_prefixes``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import mmap
import pickle
import re
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from release._io import attrs_dict, first_line
from release.errors import CheckpointError, ConversionError

if TYPE_CHECKING:
    import torch

    from modeling.mapping import Architecture
    from modeling.reference import GPTLanguageModel, ReferenceConfig

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
META_KEYS = ("iter_num", "val_loss", "best_val_loss")
# Top-level entries of the training dict that are known and deliberately not read.
NOT_MODEL_KEYS = ("optimizer_state_dict", "scaler_state_dict", "optimizer", "scaler", "lr_scheduler")
MODEL_GROUPS = ("model_state_dict", "model")  # where a DCP folder may keep the model's state dict
# Large reads into one reused buffer: fewer handovers of the GIL to and from the thread that hashes beside the
# conversion, and no allocation per chunk.
DIGEST_CHUNK = 8 * 1024 * 1024


def strip_wrapper_prefixes(keys: list[str]) -> dict[str, str]:
    """Map each key without its leading ``module.`` / ``_orig_mod.`` prefixes (any nesting) to the stored key.

    Logs what it strips. Two stored keys that become one are an error: the checkpoint holds two models.
    """
    stripped: dict[str, str] = {}
    removed: set[str] = set()
    clashes: list[str] = []
    for key in keys:
        name = key
        while name.startswith(WRAPPER_PREFIXES):
            prefix = next(p for p in WRAPPER_PREFIXES if name.startswith(p))
            removed.add(prefix)
            name = name[len(prefix) :]
        if name in stripped:
            clashes.append(f"{stripped[name]} and {key}")
        stripped[name] = key
    if clashes:
        raise CheckpointError(
            "checkpoint holds the same tensor twice once wrapper prefixes are removed: "
            + "; ".join(clashes[:5])
        )
    if removed:
        log.info("stripped wrapper prefixes %s from the checkpoint's keys", ", ".join(sorted(removed)))
    return stripped


class TrainingCheckpoint:
    """A training checkpoint opened for reading. Tensors are read lazily with ``get``.

    Attributes:
        path: The file or DCP folder.
        format: ``"training-dict"``, ``"state-dict"`` or ``"dcp"``.
        shapes: Every model tensor's shape, keyed by the training module's state-dict key (prefixes stripped).
        dtypes: Every model tensor's dtype, same keys.
        meta: ``iter_num``, ``val_loss``, ``best_val_loss`` where the checkpoint records them (plain numbers).
        train_config: The training script's ``config`` dict, or None when the checkpoint has none.
    """

    format: str

    def __init__(self, path: Path, shapes, dtypes, meta: dict, train_config: dict | None):
        self.path = path
        self.shapes: dict[str, tuple[int, ...]] = shapes
        self.dtypes: dict[str, torch.dtype] = dtypes
        self.meta: dict = meta
        self.train_config: dict | None = train_config

    def get(self, key: str) -> torch.Tensor:
        """The tensor stored under ``key`` (a stripped key from ``shapes``)."""
        raise NotImplementedError

    def release(self, tensor: torch.Tensor) -> None:
        """Hint that ``tensor`` (from ``get``) has been used: its file pages may leave memory. Optional."""

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the file; of a DCP folder, its files' paths and SHA-256s (``checkpoint_digest``)."""
        return checkpoint_digest(self.path)

    @functools.cached_property
    def architecture(self) -> Architecture:
        """The architecture read from the tensors, checked against ``train_config`` and every key's shape.

        Raises:
            CheckpointError: The tensors are not those of this model at all.
            ConversionError: Keys are missing, unexpected or misshapen, or the config disagrees with them.
        """
        return validate_architecture(self.shapes, self.train_config)

    @property
    def dropout(self) -> float:
        """The training config's dropout (0.0 without a config; it does not affect outputs)."""
        if self.train_config is None or "dropout" not in self.train_config:
            return 0.0
        value = self.train_config["dropout"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ConversionError(f"training config's dropout is {value!r}, not a number in [0, 1)")
        return float(value)

    def close(self) -> None:
        """Drop references to the file (the mmap is unmapped once no tensor from ``get`` is alive)."""


def validate_architecture(shapes: Mapping[str, tuple[int, ...]], train_config: dict | None) -> Architecture:
    """``infer_architecture`` + config cross-check + ``check_source_shapes``, mapped to the release errors."""
    from modeling.mapping import MappingError, check_source_shapes, infer_architecture

    if "token_embedding.weight" not in shapes and not any(k.startswith("blocks.") for k in shapes):
        shown = ", ".join(sorted(shapes)[:5]) + (", ..." if len(shapes) > 5 else "")
        raise CheckpointError(
            f"not a checkpoint of this model: no token_embedding.weight or blocks.* tensors (found: {shown})"
        )
    try:
        arch = infer_architecture(shapes)
    except MappingError as exc:
        raise ConversionError(str(exc)) from exc
    if train_config is not None:
        _cross_check_config(arch, train_config)
    try:
        check_source_shapes(shapes, arch)
    except MappingError as exc:
        raise ConversionError(str(exc)) from exc
    return arch


def _cross_check_config(arch: Architecture, train_config: dict) -> None:
    where = {  # the config keys checked, in order, and where the tensors give each
        "n_embd": "token_embedding.weight columns",
        "n_head": "attention heads in blocks.0",
        "n_layer": "blocks.N",
        "block_size": "position_embedding.weight rows",
        "vocab_size": "token_embedding.weight rows",
    }
    problems = []
    for key in where:
        found = getattr(arch, key)
        if key not in train_config:
            if key != "vocab_size":  # the training script never recorded vocab_size
                log.warning("training config has no %s; using %d from the tensors", key, found)
            continue
        value = train_config[key]
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"config {key} is {value!r}, not an integer")
        elif value != found:
            problems.append(f"config {key}={value} but the tensors have {found} ({where[key]})")
    if "ffn_type" in train_config and train_config["ffn_type"] != arch.ffn_type:
        problems.append(f"config ffn_type={train_config['ffn_type']!r} but the tensors are {arch.ffn_type!r}")
    if problems:
        raise ConversionError("training config disagrees with the tensors: " + "; ".join(problems))


def checkpoint_digest(path: Path, *, cancel: threading.Event | None = None) -> str:
    """SHA-256 of a checkpoint file; of a folder, of the lines ``"<sha256>  <relative path>\\n"`` by path.

    ``cancel`` stops a background computation early (the result is then meaningless and is not returned).
    """
    path = Path(path)
    if not path.is_dir():
        return _file_sha256(path, cancel)
    files = sorted((f.relative_to(path).as_posix(), f) for f in path.rglob("*") if f.is_file())
    listing = "".join(f"{_file_sha256(f, cancel)}  {rel}\n" for rel, f in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _file_sha256(path: Path, cancel: threading.Event | None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(DIGEST_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            if cancel is not None and cancel.is_set():
                raise CancelledHash()
            digest.update(view[:n])
    return digest.hexdigest()


class CancelledHash(Exception):
    """``checkpoint_digest`` was cancelled."""


@contextmanager
def background_digest(path: Path, known: str | None) -> Iterator[Callable[[], str]]:
    """Hash ``path`` (``checkpoint_digest``) in a thread while the caller works with it (convert, verify); gives
    the function that waits for the digest. Leaving the context early cancels the hashing.

    With ``known``, a digest the caller computed itself while writing the file (``release fetch`` hashes what it
    writes), no thread runs: hashing a 12 GB checkpoint twice is the single largest cost of a release.
    """
    if known is not None:
        yield lambda: known
        return
    cancel = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="checkpoint-sha256") as pool:
        future = pool.submit(checkpoint_digest, path, cancel=cancel)

        def result() -> str:
            try:
                return future.result()
            except Exception as exc:  # the hash's own failure (a Ctrl-C while waiting stays one)
                raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc

        try:
            yield result
        finally:
            cancel.set()


# --------------------------------------------------------------------------- torch.save files


class TorchSaveCheckpoint(TrainingCheckpoint):
    """A ``torch.save`` file opened with ``weights_only=True, mmap=True``: tensors are views of the file."""

    def __init__(
        self, path: Path, fmt: str, tensors: dict[str, torch.Tensor], meta, train_config, mapped: bool
    ):
        super().__init__(
            path,
            {k: tuple(t.shape) for k, t in tensors.items()},
            {k: t.dtype for k, t in tensors.items()},
            meta,
            train_config,
        )
        self.format = fmt
        self._tensors = tensors
        self._mapped = mapped

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def release(self, tensor: torch.Tensor) -> None:
        if self._mapped:
            _drop_file_pages(tensor)

    def close(self) -> None:
        self._tensors = {}


def _drop_file_pages(tensor: torch.Tensor) -> None:
    """``madvise(MADV_DONTNEED)`` the pages under a tensor of the (private, read-only use) checkpoint mapping.

    Reading a mapped tensor makes its pages resident and they count towards the process's RSS until unmapped;
    dropping them after use keeps a conversion near one tensor of memory instead of the whole model. Reading
    again faults them back in from the file, so this is safe for tensors that were never written to. Linux
    only.
    """
    if _LIBC is None or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    page = mmap.PAGESIZE
    first = (start + page - 1) // page * page  # whole pages only: neighbours' pages stay
    last = end // page * page
    if last > first:
        _LIBC.madvise(first, last - first, _MADV_DONTNEED)  # argtypes convert the ints


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()
_MADV_DONTNEED = 4


def _torch_load(path: Path) -> tuple[Any, bool]:
    import torch

    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt (zip archive is incomplete)"
        )
    mapped = zipfile.is_zipfile(path)
    if not mapped:
        if not head.startswith(b"\x80"):
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint (neither a torch.save zip nor a pickle)"
            )
        log.warning(
            "%s uses the legacy (pre-1.6) torch.save format, which cannot be memory-mapped: reading it", path
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped), mapped
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"refusing to load {path}: it contains Python objects{what} that could run code when unpickled; "
            "only tensors and plain values are accepted"
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt ({first_line(exc)})"
        ) from exc


def _plain(value: Any, what: str) -> Any:
    """A 0-dim tensor (how some scripts store losses) becomes a number; other values pass as they are."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CheckpointError(
                f"checkpoint's {what} is a tensor of shape {tuple(value.shape)}, not a number"
            )
        return value.item()
    return value


def _check_train_config(config: Any) -> dict:
    if not isinstance(config, Mapping):
        raise CheckpointError(f"checkpoint's config is a {type(config).__name__}, not a dict")
    return {str(k): _plain(v, f"config[{k!r}]") for k, v in config.items()}


def _model_tensors(state_dict: Mapping, where: str) -> dict[str, torch.Tensor]:
    import torch

    not_tensors = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{where} holds values that are not tensors: {', '.join(not_tensors[:5])}")
    if not state_dict:
        raise CheckpointError(f"{where} is empty")
    keys = [str(k) for k in state_dict]
    return {name: state_dict[key] for name, key in strip_wrapper_prefixes(keys).items()}


def _open_torch_save(path: Path) -> TorchSaveCheckpoint:
    import torch

    obj, mapped = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(obj).__name__}, not a dict")
    if "model_state_dict" in obj:
        if isinstance(obj, dict):  # optimizer and scaler state are never read: drop the references at once
            for key in NOT_MODEL_KEYS:
                obj.pop(key, None)
        model = obj["model_state_dict"]
        if not isinstance(model, Mapping):
            raise CheckpointError(f"{path}: model_state_dict is a {type(model).__name__}, not a dict")
        tensors = _model_tensors(model, f"{path}: model_state_dict")
        meta = {k: _plain(obj[k], k) for k in META_KEYS if k in obj}
        config = _check_train_config(obj["config"]) if "config" in obj else None
        unknown = sorted(set(map(str, obj)) - {"model_state_dict", "config", *META_KEYS, *NOT_MODEL_KEYS})
        if unknown:
            log.info("ignoring top-level checkpoint entries %s", ", ".join(unknown))
        return TorchSaveCheckpoint(path, "training-dict", tensors, meta, config, mapped)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return TorchSaveCheckpoint(path, "state-dict", _model_tensors(obj, str(path)), {}, None, mapped)
    shown = ", ".join(map(str, list(obj)[:6])) or "nothing"
    raise CheckpointError(
        f"{path} is not a checkpoint of this model: a dict with {shown} but no model_state_dict, "
        "and not a state dict"
    )


# --------------------------------------------------------------------------- torch.distributed.checkpoint

_DCP_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The DCP metadata names a global outside the allow-list."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` but only into DCP's metadata classes, torch.Size, dtypes and paths."""

    def find_class(self, module: str, name: str):
        import torch

        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _DCP_METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"GLOBAL {module}.{name} is not allowed in DCP metadata")


# What a truncated or garbled pickle raises (the allow-list's refusal is handled before).
_BROKEN_PICKLE = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OSError,
)


def _read_dcp_metadata(folder: Path):
    try:
        with open(folder / ".metadata", "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except _ForbiddenGlobal as exc:
        raise CheckpointError(
            f"refusing to load {folder}: its .metadata contains Python objects that could run code ({exc})"
        ) from exc
    except _BROKEN_PICKLE as exc:
        raise CheckpointError(f"cannot read {folder}/.metadata: truncated or corrupt ({exc})") from exc
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{folder}/.metadata is not torch.distributed.checkpoint metadata")
    return metadata


class DistributedCheckpoint(TrainingCheckpoint):
    """A ``torch.distributed.checkpoint`` folder, read tensor by tensor, never gathered into one pickle."""

    format = "dcp"

    def __init__(self, folder: Path):
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

        self.path = folder
        self._metadata = metadata = _read_dcp_metadata(folder)
        entries = metadata.state_dict_metadata
        paths = dict(metadata.planner_data or {})
        paths = {fqn: tuple(paths.get(fqn, (fqn,))) for fqn in entries}
        groups = {p[0] for p in paths.values()}
        group = next((g for g in MODEL_GROUPS if g in groups), None)
        model_fqns: dict[str, str] = {}
        other: dict[str, tuple] = {}
        for fqn, p in paths.items():
            if group is not None and p[0] == group and len(p) == 2:
                model_fqns[str(p[1])] = fqn
            elif group is None and p[0] not in (*NOT_MODEL_KEYS, *META_KEYS, "config"):
                model_fqns[".".join(map(str, p))] = fqn
            else:
                other[fqn] = p
        not_tensors = [
            k for k, fqn in model_fqns.items() if not isinstance(entries[fqn], TensorStorageMetadata)
        ]
        if not_tensors:
            raise CheckpointError(
                f"{folder}: model entries that are not tensors: {', '.join(not_tensors[:5])}"
            )
        if not model_fqns:
            raise CheckpointError(
                f"{folder} is not a checkpoint of this model: no model tensors in its metadata"
            )
        stripped = strip_wrapper_prefixes(list(model_fqns))
        self._fqns = {name: model_fqns[key] for name, key in stripped.items()}
        shapes = {name: tuple(int(d) for d in entries[fqn].size) for name, fqn in self._fqns.items()}
        dtypes = {name: entries[fqn].properties.dtype for name, fqn in self._fqns.items()}

        meta: dict = {}
        config: dict | None = None
        for fqn, p in sorted(other.items()):
            if p[0] not in (*META_KEYS, "config"):
                continue  # optimizer and scaler state: never read
            entry = entries[fqn]
            value = (
                self._read_bytes(folder, fqn) if isinstance(entry, BytesStorageMetadata) else self._load(fqn)
            )
            if p[0] == "config":
                if len(p) < 2:
                    raise CheckpointError(f"{folder}: config is a {type(value).__name__}, not a dict")
                config = {} if config is None else config
                _set_nested(config, list(p[1:]), value)
            else:
                meta[p[0]] = _plain(value, p[0])
        if config is not None:
            _lists_back(config)
        super().__init__(
            folder, shapes, dtypes, meta, _check_train_config(config) if config is not None else None
        )

    def _reader(self):
        from torch.distributed.checkpoint import FileSystemReader

        metadata = self._metadata

        class _Reader(FileSystemReader):  # DCP's own read_metadata would unpickle without an allow-list
            def read_metadata(self, *args, **kwargs):
                return metadata

        return _Reader(self.path)

    def _load(self, fqn: str) -> torch.Tensor:
        import torch
        import torch.distributed.checkpoint as dcp

        entry = self._metadata.state_dict_metadata[fqn]
        tensor = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        try:
            with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": indeed
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                dcp.load({fqn: tensor}, storage_reader=self._reader(), no_dist=True)
        except Exception as exc:  # DCP wraps reader failures in its own exception types
            raise CheckpointError(f"cannot read {fqn} from {self.path}: {first_line(exc)}") from exc
        return tensor

    def _read_bytes(self, folder: Path, fqn: str) -> Any:
        """A non-tensor entry (iter_num, a config value), read with ``weights_only=True`` (DCP: False)."""
        import torch
        from torch.distributed.checkpoint.metadata import MetadataIndex

        info = self._metadata.storage_data.get(MetadataIndex(fqn))
        if info is None or getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{folder}: cannot read the entry {fqn}")
        file = (folder / info.relative_path).resolve()
        if folder.resolve() not in file.parents:
            raise CheckpointError(f"{folder}: entry {fqn} points outside the checkpoint folder")
        try:
            with open(file, "rb") as f:
                f.seek(info.offset)
                data = f.read(info.length)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"refusing to load {folder}: entry {fqn} contains Python objects that could run code"
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {fqn} from {folder}: truncated or corrupt ({exc})") from exc

    def get(self, key: str) -> torch.Tensor:
        return self._load(self._fqns[key])


def _set_nested(root: dict, path: list, value: Any) -> None:
    node = root
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _lists_back(node: dict) -> None:
    """DCP flattens lists to integer-indexed paths; turn ``{0: a, 1: b}`` back into ``[a, b]``."""
    for key, value in list(node.items()):
        if isinstance(value, dict):
            _lists_back(value)
            if value and all(isinstance(k, int) for k in value) and sorted(value) == list(range(len(value))):
                node[key] = [value[i] for i in range(len(value))]


# --------------------------------------------------------------------------- public entry points


def open_checkpoint(path: Path) -> TrainingCheckpoint:
    """Open a training checkpoint for reading without loading its tensors.

    Args:
        path: A ``torch.save`` file (training dict or bare state dict) or a ``torch.distributed.checkpoint``
            folder.

    Raises:
        CheckpointError: The path is missing, unreadable, truncated or corrupt, holds a pickle that would run
            code, or is not a checkpoint of this model.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise CheckpointError(
                f"{path} is a folder but not a torch.distributed.checkpoint (no .metadata file)"
            )
        return DistributedCheckpoint(path)
    try:
        return _open_torch_save(path)
    except PermissionError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied") from exc


def reference_config(ckpt: TrainingCheckpoint) -> ReferenceConfig:
    """The training module's config for ``ckpt`` (architecture from the tensors), without loading a tensor.

    Raises:
        CheckpointError, ConversionError: As ``TrainingCheckpoint.architecture``.
    """
    from modeling.reference import ReferenceConfig

    dims = attrs_dict(
        ckpt.architecture, "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "ffn_type"
    )
    return ReferenceConfig(**dims, dropout=ckpt.dropout)


@contextmanager
def _values_skipped_on_meta() -> Iterator[None]:
    """Within: ``torch.tril`` and the init functions' in-place fills return their input unchanged.

    On the meta device they compute nothing, yet torch's meta kernels for them are Python and their first
    use imports about 800 modules (~70 MB that stay resident: 0.2x the weights at 85M) for values that
    ``load_state_dict(assign=True)`` replaces anyway. torch has no switch for this, hence the mode.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    fills = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "zeros_", "ones_")
    skipped = {torch.tril, *(getattr(torch.nn.init, name) for name in fills)}

    class ValuesSkipped(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in skipped:  # the tensor to fill (init's keyword ``tensor``), or tril's input unchanged
                return args[0] if args else kwargs.get("tensor", kwargs.get("input"))
            return func(*args, **(kwargs or {}))

    with ValuesSkipped():
        yield


def load_reference_model(path: Path) -> tuple[GPTLanguageModel, TrainingCheckpoint]:
    """Build the training module from a checkpoint: architecture from the tensors, strict load, eval, float32.

    Tensors of a ``torch.save`` file that are already float32 stay backed by the file (no copy).

    Raises:
        CheckpointError: See ``open_checkpoint``.
        ConversionError: The tensors do not fit the model, or the training config disagrees with them.
    """
    import torch

    from modeling.mapping import expected_source_shapes
    from modeling.reference import GPTLanguageModel

    ckpt = open_checkpoint(path)
    arch = ckpt.architecture
    config = reference_config(ckpt)
    with torch.device("meta"), _values_skipped_on_meta():
        model = GPTLanguageModel(config)
    state_dict = {key: ckpt.get(key) for key in expected_source_shapes(arch)}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.float().eval(), ckpt
