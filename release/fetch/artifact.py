"""Fetch a whole file from a URI (``release fetch``, and the fallback for non-streamable checkpoints).

Guarantees:

- The SHA-256 is computed while the bytes arrive and checked before the file reaches ``out``; on a mismatch
  the fetched bytes are deleted and :class:`FetchError` names both digests.
- ``out`` is replaced atomically: bytes go to ``<out>.part`` in the same folder, are fsynced, then renamed.
- An ``out`` that already has the expected hash is kept as is (source ``existing``).
- Downloads are kept in a content-addressed cache (``<cache>/sha256/<hex>``); a later fetch of the same hash
  hardlinks or copies from there without touching the network (source ``cache``). Cache entries are re-hashed
  before use, and a cache that cannot be written only logs a warning.

Resumption: when the HTTP retries run out, ``<out>.part`` is kept and the next run resumes from it with a
Range request; any other failure (HTTP 4xx, hash mismatch) deletes it. If a resumed file does not match the
hash (the remote file changed since the ``.part`` was written), the download restarts from zero once. Two
processes must not fetch to the same ``out`` at once. ``hf://`` files go through ``hf_hub_download`` (the
Hub's own transfer, Xet included), which does not resume across runs here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from release._io import first_line, fsync_dir, fsync_file, sha256_file
from release.auth import read_token, redact
from release.errors import FetchError, UsageError
from release.fetch.source import (
    GaveUp,
    HubFile,
    LocalFile,
    Source,
    default_cache_dir,
    normalize_sha256,
    open_source,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Downloaded:
    """Where the verified file is and how it got there."""

    path: Path  # the ``out`` path, now holding the verified file
    sha256: str  # 64 lowercase hex digits, checked against the file's bytes
    size: int  # bytes
    source: Literal["cache", "existing", "download", "local"]


def fetch_artifact(
    uri: str,
    *,
    sha256: str,
    out: Path,
    cache_dir: Path | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    progress: bool | None = None,
    timeout: float = 60,
) -> Downloaded:
    """Fetch the file at ``uri`` to ``out`` and check that its SHA-256 is ``sha256``.

    Args:
        uri: A local path, or a ``file://``, ``http(s)://``, ``hf://``, ``s3://`` or ``gs://`` URI.
        sha256: The expected SHA-256 as 64 hex digits (either case).
        out: Where the file ends up. Its folder is created if needed; a file already there with the
            expected hash is kept, one with another hash is replaced.
        cache_dir: The content-addressed artifact cache (default: :func:`default_cache_dir`).
        retries, backoff, timeout: HTTP: see :func:`release.fetch.source.open_source`.
        progress: Show a progress bar on stderr; None means only when stderr is a terminal.

    Raises:
        UsageError: ``sha256`` is not 64 hex digits, the URI scheme is not supported, the URI is
            malformed, or ``out`` is a directory.
        FetchError: The file cannot be fetched (not found, access denied, retries exhausted, offline, the
            ``cloud`` extra is missing), or its hash is not ``sha256``.
    """
    expected = normalize_sha256(sha256)
    source = open_source(uri, retries=retries, backoff=backoff, timeout=timeout)
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give the path of the file to write")
    show_progress = sys.stderr.isatty() if progress is None else progress

    if out.is_file():
        if sha256_file(out) == expected:
            return Downloaded(path=out, sha256=expected, size=out.stat().st_size, source="existing")
        log.warning("%s exists with another SHA-256; replacing it with %s", out, source.display)

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    new_folders = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if _place_from_cache(cache, expected=expected, out=out):
            return Downloaded(path=out, sha256=expected, size=out.stat().st_size, source="cache")
        if isinstance(source, HubFile):
            size = _download_from_hub(source, expected=expected, out=out, progress=show_progress)
        else:
            size = download(source, expected=expected, out=out, progress=show_progress)
    except BaseException:
        for folder in new_folders:  # deepest first; one still holding a resumable .part stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    if isinstance(source, LocalFile):
        return Downloaded(path=out, sha256=expected, size=size, source="local")
    _store_in_cache(cache, expected=expected, path=out)
    return Downloaded(path=out, sha256=expected, size=size, source="download")


def download(source: Source, *, expected: str, out: Path, progress: bool) -> int:
    """Stream ``source`` into ``<out>.part`` (resuming what an earlier run left), check the hash, rename.

    Returns the file's size. Raises ``GaveUp`` (``.part`` kept, when it holds bytes) or ``FetchError``.
    """
    part = out.with_name(out.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    if start:
        log.info("resuming %s from %d bytes in %s", source.display, start, part)
    try:
        digest = _append(part, source.read(start, progress=progress))
    except GaveUp as exc:
        kept = part.stat().st_size if part.is_file() else 0
        if not kept:
            part.unlink(missing_ok=True)
            raise
        raise GaveUp(
            f"{exc}; the {kept} bytes received are kept in {part} and the next run resumes"
        ) from None
    except KeyboardInterrupt:  # an interrupted download stays resumable
        raise
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if actual != expected:
        part.unlink()
        if start:  # the remote file changed since the .part was written: once more, from zero
            log.warning("%s: the resumed download does not match the SHA-256; starting again", source.display)
            return download(source, expected=expected, out=out, progress=progress)
        raise FetchError(
            f"SHA-256 mismatch for {source.display}: expected {expected}, got {actual}; "
            "the fetched bytes were deleted"
        )
    size = part.stat().st_size
    _commit(part, out)
    return size


def _append(part: Path, chunks: Iterator[bytes]) -> hashlib._Hash:
    """Append ``chunks`` to ``part``; the SHA-256 of the whole file. A local write failure is final."""
    try:
        with open(part, "rb") as f:
            digest = hashlib.file_digest(f, "sha256")
    except FileNotFoundError:
        digest = hashlib.sha256()
    with contextlib.closing(chunks):
        try:
            with open(part, "ab") as f:
                try:
                    for chunk in chunks:
                        f.write(chunk)
                        digest.update(chunk)
                finally:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:  # disk full, permissions: the sources turn their own errors into FetchError
            raise FetchError(f"cannot write {part}: {exc.strerror or exc}") from exc
    return digest


def _commit(tmp: Path, out: Path) -> None:
    """Rename a complete, fsynced ``tmp`` onto ``out`` and make the rename itself durable."""
    os.replace(tmp, out)
    fsync_dir(out.parent)


# --- the Hugging Face Hub --------------------------------------------------------------------------


def _download_from_hub(source: HubFile, *, expected: str, out: Path, progress: bool) -> int:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    source.check_online()
    location, display = source.location, source.display
    token = read_token()
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.hf-"))
    try:
        try:
            with _hub_progress_bars(progress):
                downloaded = hf_hub_download(
                    location.repo_id,
                    location.filename,
                    repo_type=location.repo_type,
                    revision=location.revision,
                    local_dir=staging,
                    token=token,
                )
        except GatedRepoError as exc:
            raise FetchError(f"{display}: {location.repo_id} is gated and HF_TOKEN has no access") from exc
        except RepositoryNotFoundError as exc:
            hint = "check that HF_TOKEN can read it" if token else "set HF_TOKEN for a private repository"
            raise FetchError(
                f"{display}: repository {location.repo_id} not found or not accessible; {hint}"
            ) from exc
        except RevisionNotFoundError as exc:
            raise FetchError(
                f"{display}: revision {location.revision!r} not found in {location.repo_id}"
            ) from exc
        except LocalEntryNotFoundError as exc:  # raised when the Hub cannot be reached
            raise FetchError(f"{display}: cannot reach the Hub ({redact(first_line(exc))})") from exc
        except EntryNotFoundError as exc:
            raise FetchError(f"{display}: {location.filename} not found in {location.repo_id}") from exc
        except HFValidationError as exc:
            raise UsageError(f"{display}: {redact(first_line(exc))}") from exc
        except (HfHubHTTPError, OSError) as exc:
            raise FetchError(f"{display}: {redact(first_line(exc))}") from exc
        size = Path(downloaded).stat().st_size
        actual = sha256_file(Path(downloaded))
        if actual != expected:
            raise FetchError(
                f"SHA-256 mismatch for {display}: expected {expected}, got {actual}; the fetched bytes were deleted"
            )
        fsync_file(Path(downloaded))
        _commit(Path(downloaded), out)
        return size
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _hub_progress_bars(enabled: bool) -> Iterator[None]:
    """Silence huggingface_hub's own progress bars unless progress was asked for, then restore them."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    silence = not enabled and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        yield
    finally:
        if silence:
            enable_progress_bars()


# --- the cache -------------------------------------------------------------------------------------


def _place_from_cache(cache: Path, *, expected: str, out: Path) -> bool:
    """Put the cached file for ``expected`` at ``out``; False when the cache does not hold it."""
    entry = cache / "sha256" / expected
    if not entry.is_file():
        return False
    try:
        if sha256_file(entry) != expected:
            # Someone changed it in place (e.g. through a hardlinked output); never hand it out.
            log.warning("artifact cache entry %s is corrupt; removing it", entry)
            entry.unlink(missing_ok=True)
            return False
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.link(entry, tmp)
            _commit(tmp, out)
        except OSError:  # another filesystem, or links not supported: copy, re-checking as we go
            tmp.unlink(missing_ok=True)
            download(open_source(str(entry)), expected=expected, out=out, progress=False)
        return True
    except (OSError, FetchError) as exc:
        log.warning("cannot use artifact cache entry %s (%s); fetching instead", entry, exc)
        return False


def _store_in_cache(cache: Path, *, expected: str, path: Path) -> None:
    """Hardlink (else copy) a verified file into the cache. Best effort: a failure only logs a warning."""
    entry = cache / "sha256" / expected
    if entry.is_file():
        return
    tmp = entry.with_name(f".{entry.name}.{secrets.token_hex(6)}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, entry)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("could not store %s in the artifact cache %s: %s", path, cache, exc)
