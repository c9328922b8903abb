"""The small I/O pieces every step shares, written once: streaming SHA-256, atomic writes, fsync, error lines,
and the attribute picking behind the ``to_dict`` methods that JSON outputs are written from.

Imports nothing but the standard library, so any module (and the CLI's start-up path) can use it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK_SIZE = 1024 * 1024  # 1 MiB: large enough to be fast, small enough to never hold a checkpoint in memory


def sha256_file(path: Path) -> str:
    """Return the SHA-256 of a file as 64 lowercase hex digits, streamed (``hashlib.file_digest``).

    Raises:
        OSError: The file cannot be opened or read (e.g. ``FileNotFoundError``).
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry inside ``folder`` durable (a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and a rename: readers see the old or the new file.

    The parent folder is created if needed; on any failure the temporary file is removed and ``path`` is
    untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    """:func:`write_bytes_atomic` for UTF-8 text, newlines written exactly as given (no platform translation)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """Every file below ``folder`` as ``(relative POSIX path, path)``, sorted; symlinks followed (as loaders do)
    and huggingface_hub's ``.cache/`` metadata (a ``--local-dir`` download's) left out."""
    folder = Path(folder)
    files = ((p.relative_to(folder), p) for p in folder.rglob("*") if p.is_file())
    return sorted((rel.as_posix(), p) for rel, p in files if ".cache" not in rel.parts)


def hash_folder(folder: Path, *, keep: Callable[[str], bool] = lambda rel: True) -> dict[str, str]:
    """``{relative POSIX path: sha256}`` of the files of :func:`folder_files` that ``keep`` takes, sorted."""
    return {rel: sha256_file(path) for rel, path in folder_files(folder) if keep(rel)}


def first_line(exc: BaseException, *, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name if it has none), cut to ``limit`` characters.

    Library errors often carry a multi-line message (a traceback, a server's HTML page); a CLI error is one line.
    """
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def attrs_dict(obj: object, *names: str) -> dict[str, Any]:
    """``{name: obj.<name>}`` for ``names``, in that order: the plain part of a ``to_dict`` (JSON output)."""
    return {name: getattr(obj, name) for name in names}
