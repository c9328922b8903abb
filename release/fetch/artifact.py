"""Fetch the training checkpoint artifact from a URI, pinned by its SHA-256.

Sources:

- a local path or ``file://`` URI (copied);
- ``http://`` / ``https://`` (streamed; retried with exponential backoff on 5xx, 408/425/429 and dropped
  connections; resumed with HTTP Range requests);
- ``hf://[datasets/|spaces/|models/]OWNER/REPO/PATH[@REV]`` - a file in a Hub repository, read with
  ``hf_hub_download`` and the ``HF_TOKEN`` environment variable only (see :func:`parse_hf_uri`);
- ``s3://`` and ``gs://`` (``gcs://``) through fsspec, with the ``cloud`` extra installed.

Guarantees:

- The SHA-256 is computed while the bytes arrive and checked before the file reaches ``out``; on a mismatch
  the fetched bytes are deleted and :class:`FetchError` names both digests.
- ``out`` is replaced atomically: bytes go to a file in the same folder, are fsynced, then renamed.
- An ``out`` that already has the expected hash is kept as is (source ``existing``).
- Network downloads are kept in a content-addressed cache (``<cache>/sha256/<hex>``); a later fetch of the
  same hash hardlinks or copies from there without touching the network (source ``cache``). Cache entries
  are re-hashed before use, and a cache that cannot be written only logs a warning.

Resumption: an HTTP download streams into ``<out>.part``. If the transfer drops, the next attempt asks for
the rest with a Range request. When the retries run out the ``.part`` file is kept and the next run (of
``release fetch`` or :func:`fetch_artifact`) resumes from it; any other failure (HTTP 4xx, hash mismatch)
deletes it. If a resumed file does not match the hash (the remote file changed since the ``.part`` was
written), the download restarts from zero once. Two processes must not fetch to the same ``out`` at once.
``hf://`` and object-store downloads do not resume across runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from release._io import CHUNK_SIZE, first_line, fsync_dir, sha256_file
from release.auth import read_token, redact
from release.errors import FetchError, UsageError

log = logging.getLogger(__name__)

FetchSource = Literal["cache", "existing", "download", "local"]

SUPPORTED_SCHEMES = ("file", "http", "https", "hf", "s3", "gs", "gcs")
CLOUD_EXTRA_INSTALL = "pip install 'custom-transformer-release[cloud]'"
_OBJECT_STORE_BACKENDS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
_HF_TYPE_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_HF_SPECIAL_REF = re.compile(r"^refs/(?:convert/[\w.-]+|pr/\d+)")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_RETRYABLE_STATUS = frozenset({408, 425, 429})  # plus every 5xx
_MAX_BACKOFF = 30.0  # seconds; caps both our exponential delay and a server's Retry-After
_USER_AGENT = "custom-transformer-release (release fetch)"


@dataclass(frozen=True)
class FetchResult:
    """Where the verified artifact is and how it got there."""

    path: Path  # the ``out`` path, now holding the verified file
    sha256: str  # 64 lowercase hex digits, checked against the file's bytes
    size: int  # bytes
    source: FetchSource  # 'cache' | 'existing' | 'download' | 'local'


@dataclass(frozen=True)
class HfLocation:
    """A file in a Hugging Face Hub repository, as named by an ``hf://`` URI."""

    repo_id: str  # 'OWNER/REPO'
    filename: str  # path inside the repo, e.g. 'checkpoints/step-1000/model.pt'
    revision: str | None  # branch, tag, commit or 'refs/pr/N'; None means the default branch
    repo_type: str  # 'model' | 'dataset' | 'space'


def default_cache_dir() -> Path:
    """The artifact cache: ``$RELEASE_CACHE_DIR``, else ``~/.cache/custom-transformer-release/artifacts``."""
    configured = os.environ.get("RELEASE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "custom-transformer-release" / "artifacts"


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
) -> FetchResult:
    """Fetch the file at ``uri`` to ``out`` and check that its SHA-256 is ``sha256``.

    Args:
        uri: A local path, or a ``file://``, ``http(s)://``, ``hf://``, ``s3://`` or ``gs://`` URI.
        sha256: The expected SHA-256 as 64 hex digits (either case).
        out: Where the file ends up. Its folder is created if needed; a file already there with the
            expected hash is kept, one with another hash is replaced.
        cache_dir: The content-addressed artifact cache (default: :func:`default_cache_dir`).
        retries: HTTP only: how many consecutive failed attempts that made no progress are retried.
        backoff: HTTP only: the first retry delay in seconds; each further retry doubles it (capped at 30 s).
        progress: Show a progress bar on stderr; None means only when stderr is a terminal.
        timeout: HTTP only: seconds to wait for the server to connect or send more bytes.

    Raises:
        UsageError: ``sha256`` is not 64 hex digits, the URI scheme is not supported, the URI is
            malformed, or ``out`` is a directory.
        FetchError: The file cannot be fetched (not found, access denied, retries exhausted, the
            ``cloud`` extra is missing), or its hash is not ``sha256``.
    """
    expected = _normalize_sha256(sha256)
    scheme = _scheme_of(uri)
    hf_location = parse_hf_uri(uri) if scheme == "hf" else None
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give the path of the file to write")
    show_progress = sys.stderr.isatty() if progress is None else progress
    display = _display(uri)

    if out.is_file():
        if sha256_file(out) == expected:
            return FetchResult(path=out, sha256=expected, size=out.stat().st_size, source="existing")
        log.warning("%s exists with another SHA-256; replacing it with %s", out, display)

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    new_folders = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        cached_size = _place_from_cache(cache, expected=expected, out=out)
        if cached_size is not None:
            return FetchResult(path=out, sha256=expected, size=cached_size, source="cache")
        if scheme in ("", "file"):
            size = _fetch_local(_local_path(uri, scheme), expected=expected, out=out, display=display)
            return FetchResult(path=out, sha256=expected, size=size, source="local")
        if scheme in ("http", "https"):
            size = _fetch_http(
                uri,
                expected=expected,
                out=out,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                progress=show_progress,
                display=display,
            )
        elif hf_location is not None:
            size = _fetch_hf(hf_location, expected=expected, out=out, progress=show_progress, display=display)
        else:
            size = _fetch_object_store(uri, scheme=scheme, expected=expected, out=out, display=display)
    except BaseException:
        for folder in new_folders:  # deepest first; one still holding a resumable .part stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    _store_in_cache(cache, expected=expected, path=out)
    return FetchResult(path=out, sha256=expected, size=size, source="download")


def parse_hf_uri(uri: str) -> HfLocation:
    """Split ``hf://[TYPE/]OWNER/REPO/PATH[@REV]`` into repo id, file path, revision and repo type.

    ``TYPE`` is ``datasets``, ``spaces`` or ``models`` (the default). ``PATH`` may be nested. The revision
    is everything after the last ``@`` in ``PATH`` and may contain slashes (``@refs/pr/3``). The form that
    huggingface_hub itself uses, ``hf://OWNER/REPO@REV/PATH``, is accepted too; there an ``@`` inside
    ``PATH`` is part of the file name, which is how to name such a file.

    Args:
        uri: The ``hf://`` URI.

    Raises:
        UsageError: The URI is not of that shape (no file path, an empty revision or path segment).
    """
    if not uri.startswith("hf://"):
        raise UsageError(f"not an hf:// URI: {uri}")
    shape = "expected hf://[datasets/|spaces/]OWNER/REPO/PATH[@REV]"
    segments = uri[len("hf://") :].split("/")
    repo_type = "model"
    if segments[0] in _HF_TYPE_PREFIXES:
        repo_type = _HF_TYPE_PREFIXES[segments.pop(0)]
    elif segments[0] in _HF_TYPE_PREFIXES.values():
        raise UsageError(f"{uri}: the repo type prefix is plural ('{segments[0]}s/'); {shape}")
    if len(segments) < 3 or not all(segments[:2]):
        raise UsageError(f"{uri}: no file path; {shape}")
    owner, name, rest = segments[0], segments[1], "/".join(segments[2:])

    revision: str | None = None
    if "@" in name:
        # huggingface_hub's own form: OWNER/REPO@REV/PATH (REV may be 'refs/pr/N' or %2F-encoded).
        name, revision = name.split("@", 1)
        rev_and_path = f"{revision}/{rest}"
        special = _HF_SPECIAL_REF.match(rev_and_path)
        revision = special.group() if special else revision
        filename = rev_and_path[len(revision) + 1 :]
        revision = unquote(revision)
    elif "@" in rest:
        filename, _, revision = rest.rpartition("@")
    else:
        filename = rest
    if not name or "@" in owner:
        raise UsageError(f"{uri}: malformed repo id; {shape}")
    if revision is not None and not revision:
        raise UsageError(f"{uri}: empty revision after '@'; {shape}")
    if not filename or filename.endswith("/") or "//" in filename or filename.startswith("/"):
        raise UsageError(f"{uri}: the file path is empty or has an empty segment; {shape}")
    return HfLocation(repo_id=f"{owner}/{name}", filename=filename, revision=revision, repo_type=repo_type)


# --- arguments ---------------------------------------------------------------------------------------


def _normalize_sha256(value: str) -> str:
    if not _SHA256_HEX.fullmatch(value.strip()):
        raise UsageError(f"--sha256 must be 64 hex digits (a SHA-256), got {value!r}")
    return value.strip().lower()


def _scheme_of(uri: str) -> str:
    """The URI's scheme in lower case, or '' for a plain local path."""
    if "://" not in uri:
        return ""
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in SUPPORTED_SCHEMES:
        supported = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        raise UsageError(f"unsupported URI scheme '{scheme}://'; use a local path or one of {supported}")
    if scheme not in ("file", "hf") and not urlsplit(uri).netloc:
        raise UsageError(f"{uri}: no host or bucket after '{scheme}://'")
    return scheme


def _local_path(uri: str, scheme: str) -> Path:
    if not scheme:
        return Path(uri).expanduser()
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(
            f"{uri}: file:// URIs must name a local file (file:///path), not host {parts.netloc!r}"
        )
    return Path(unquote(parts.path))


def _display(uri: str) -> str:
    """The URI without user info, query or fragment, which may carry credentials (e.g. presigned URLs)."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


# --- writing files atomically ----------------------------------------------------------------------


def _copy_hashing(src: BinaryIO, dst: BinaryIO, digest: hashlib._Hash) -> int:
    """Copy ``src`` to ``dst`` in chunks, feeding ``digest``; return the number of bytes copied."""
    size = 0
    while chunk := src.read(CHUNK_SIZE):
        dst.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return size


def _temp_sibling(path: Path) -> Path:
    """A fresh name next to ``path``, so that renaming it onto ``path`` is atomic (same filesystem)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _check_digest(*, expected: str, actual: str, display: str) -> None:
    if actual != expected:
        raise FetchError(
            f"SHA-256 mismatch for {display}: expected {expected}, got {actual}; the fetched bytes were deleted"
        )


def _commit(tmp: Path, out: Path) -> None:
    """Rename a complete, fsynced ``tmp`` onto ``out`` and make the rename itself durable."""
    os.replace(tmp, out)
    fsync_dir(out.parent)


def _write_verified(
    out: Path, *, expected: str, display: str, fill: Callable[[BinaryIO, hashlib._Hash], int]
) -> int:
    """Let ``fill`` write and hash the bytes into a temp file, check the hash, then move it onto ``out``."""
    tmp = _temp_sibling(out)
    try:
        digest = hashlib.sha256()
        with open(tmp, "xb") as dst:
            size = fill(dst, digest)
            dst.flush()
            os.fsync(dst.fileno())
        _check_digest(expected=expected, actual=digest.hexdigest(), display=display)
        _commit(tmp, out)
        return size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _move_verified(path: Path, out: Path, *, expected: str, display: str) -> int:
    """Hash a file another library downloaded next to ``out``, then fsync and rename it onto ``out``."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        os.fsync(f.fileno())
    size = path.stat().st_size
    _check_digest(expected=expected, actual=digest.hexdigest(), display=display)
    _commit(path, out)
    return size


# --- the cache -------------------------------------------------------------------------------------


def _place_from_cache(cache: Path, *, expected: str, out: Path) -> int | None:
    """Put the cached file for ``expected`` at ``out``; None when the cache does not hold it."""
    entry = cache / "sha256" / expected
    if not entry.is_file():
        return None
    try:
        if sha256_file(entry) != expected:
            # Someone changed it in place (e.g. through a hardlinked output); never hand it out.
            log.warning("artifact cache entry %s is corrupt; removing it", entry)
            entry.unlink(missing_ok=True)
            return None
        tmp = _temp_sibling(out)
        try:
            os.link(entry, tmp)
        except OSError:  # another filesystem, or links not supported: copy, re-checking as we go
            return _write_verified(
                out, expected=expected, display=str(entry), fill=lambda dst, d: _copy_file(entry, dst, d)
            )
        try:
            _commit(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return out.stat().st_size
    except (OSError, FetchError) as exc:
        log.warning("cannot use artifact cache entry %s (%s); fetching instead", entry, exc)
        return None


def _store_in_cache(cache: Path, *, expected: str, path: Path) -> None:
    """Hardlink (else copy) a verified file into the cache. Best effort: a failure only logs a warning."""
    entry = cache / "sha256" / expected
    if entry.is_file():
        return
    tmp = _temp_sibling(entry)
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


# --- local files -----------------------------------------------------------------------------------


def _copy_file(path: Path, dst: BinaryIO, digest: hashlib._Hash) -> int:
    with open(path, "rb") as src:
        return _copy_hashing(src, dst, digest)


def _fetch_local(path: Path, *, expected: str, out: Path, display: str) -> int:
    if not path.exists():
        raise FetchError(f"{display}: no such file")
    if not path.is_file():
        raise FetchError(f"{display}: not a regular file")
    try:
        return _write_verified(
            out, expected=expected, display=display, fill=lambda dst, d: _copy_file(path, dst, d)
        )
    except PermissionError as exc:
        raise FetchError(f"{display}: permission denied ({exc.filename})") from exc


# --- HTTP ------------------------------------------------------------------------------------------
# Requests go through huggingface_hub's own client and ``http_stream_backoff`` (retries on 5xx/408/429 and on
# connection errors before the body, honouring Retry-After). What that helper cannot do is resume a body that
# breaks halfway (it has already handed over the response), so the Range loop below is ours.


class _TransientError(Exception):
    """A failure worth another attempt: the body broke off, or a range that does not fit."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _http_failure(display: str, status: int, reason: str) -> FetchError:
    """The one-line error for a final HTTP status."""
    what = {401: "access denied", 403: "access denied", 404: "not found", 410: "not found"}.get(status)
    return FetchError(f"{display}: {what} (HTTP {status})" if what else f"{display}: HTTP {status} {reason}")


class HttpBody:
    """A streamed response whose body errors are ``_TransientError``, so that ``http_stream_backoff`` (which
    would otherwise try to retry a response it has already handed over) lets them through to our Range loop."""

    def __init__(self, response):
        self.status_code = response.status_code
        self.headers = response.headers
        self._response = response

    def iter_raw(self) -> Iterator[bytes]:
        """The body as it arrives (no re-chunking: what arrived before a break is not held back)."""
        import httpx2

        try:
            yield from self._response.iter_raw()
        except httpx2.HTTPError as exc:  # reset, timeout, a body cut short
            reason = f"{type(exc).__name__}: {redact(first_line(exc))}"
            raise _TransientError(f"connection dropped while reading the body ({reason})") from None


@contextlib.contextmanager
def http_get(
    url: str, *, headers: dict[str, str], display: str, retries: int, backoff: float, timeout: float
) -> Iterator[HttpBody]:
    """One streamed GET through huggingface_hub's client; the response has status < 400 or 416.

    Raises:
        FetchError: a final status (4xx), or retries exhausted before a response came.
        _TransientError: (from ``iter_raw``) the body broke off; the caller may resume with Range.
    """
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import http_stream_backoff

    try:
        with http_stream_backoff(
            "GET",
            url,
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", **headers},
            max_retries=retries,
            base_wait_time=backoff,
            max_wait_time=_MAX_BACKOFF,
            timeout=timeout,
            follow_redirects=True,
        ) as response:
            status = response.status_code
            if status >= 400 and status != 416:
                raise _http_failure(display, status, response.reason_phrase)
            yield HttpBody(response)
    except HfHubHTTPError as exc:  # a retryable status, retries used up
        status = exc.response.status_code if exc.response is not None else "?"
        raise FetchError(
            f"{display}: giving up after {retries + 1} attempts without progress (HTTP {status})"
        ) from None
    except httpx2.HTTPError as exc:  # connection errors before any response, retries used up
        reason = f"{type(exc).__name__}: {redact(first_line(exc))}"
        raise FetchError(
            f"{display}: giving up after {retries + 1} attempts without progress ({reason})"
        ) from None


class _PartFile:
    """``<out>.part``: the bytes received so far and their running SHA-256.

    ``spliced`` is True when the bytes come from more than one response (a resumed download); only then
    can a hash mismatch be a stale prefix rather than a wrong file.
    """

    def __init__(self, path: Path):
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self.spliced = False
        if path.is_file():
            self._rehash()

    def _rehash(self) -> None:
        with open(self.path, "rb") as f:
            self.digest = hashlib.file_digest(f, "sha256")
        self.size = self.path.stat().st_size

    def sync(self) -> None:
        """Re-read the file if it no longer matches what was hashed (a write failed halfway)."""
        on_disk = self.path.stat().st_size if self.path.is_file() else 0
        if on_disk != self.size:
            self._rehash()

    def truncate(self) -> None:
        with _writing(self.path), open(self.path, "wb"):
            pass
        self.digest, self.size, self.spliced = hashlib.sha256(), 0, False

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.digest, self.size, self.spliced = hashlib.sha256(), 0, False

    def append(self, response, bar) -> int:
        """Append the response body until it ends or breaks; what arrived stays on disk and hashed."""
        received = 0
        with _writing(self.path), open(self.path, "ab") as f:
            try:
                for chunk in response.iter_raw():
                    f.write(chunk)
                    self.digest.update(chunk)
                    self.size += len(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            finally:
                f.flush()
                os.fsync(f.fileno())
        return received


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Report a local write failure (disk full, permissions) as final, unlike a network failure."""
    try:
        yield
    except OSError as exc:
        raise FetchError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _fetch_http(
    url: str,
    *,
    expected: str,
    out: Path,
    retries: int,
    backoff: float,
    timeout: float,
    progress: bool,
    display: str,
) -> int:
    part = _PartFile(out.with_name(out.name + ".part"))
    if part.size:
        log.info("resuming %s from %d bytes in %s", display, part.size, part.path)
    failures, best_size, restarted = 0, part.size, False
    while True:
        try:
            part.sync()
            _http_transfer(
                url,
                part,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                progress=progress,
                display=display,
            )
        except _TransientError as exc:
            if part.size > best_size:  # this attempt got further: the budget is for attempts without progress
                best_size, failures = part.size, 0
            failures += 1
            if failures > retries:
                if not part.size:
                    part.discard()
                raise FetchError(
                    _give_up_message(display, part, attempts=failures, reason=exc.reason)
                ) from None
            delay = min(backoff * 2 ** (failures - 1), _MAX_BACKOFF)
            log.warning("%s: %s; retry %d of %d in %.1f s", display, exc.reason, failures, retries, delay)
            time.sleep(delay)
            continue
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):  # an interrupted download stays resumable
                part.discard()
            raise
        actual = part.digest.hexdigest()
        if actual != expected and part.spliced and not restarted:
            log.warning(
                "%s: the resumed download does not match the SHA-256; starting again from zero", display
            )
            part.discard()
            restarted = True
            continue
        try:
            _check_digest(expected=expected, actual=actual, display=display)
        except FetchError:
            part.discard()
            raise
        size = part.size
        _commit(part.path, out)
        return size


def _give_up_message(display: str, part: _PartFile, *, attempts: int, reason: str) -> str:
    message = f"{display}: giving up after {attempts} attempts without progress ({reason})"
    if part.size:
        return f"{message}; the {part.size} bytes received are kept in {part.path} and the next run resumes"
    return message


def _http_transfer(
    url: str, part: _PartFile, *, retries: int, backoff: float, timeout: float, progress: bool, display: str
) -> None:
    """One request: append the rest of the body to ``part`` (or all of it, if the server ignores Range)."""
    from huggingface_hub.utils import tqdm

    offset = part.size
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with http_get(
        url, headers=headers, display=display, retries=retries, backoff=backoff, timeout=timeout
    ) as response:
        if response.status_code == 416 and offset:
            part.spliced = True  # nothing left to send: '.part' may already be complete; the hash decides
            return
        if offset and response.status_code == 206:
            start = content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                part.truncate()
                raise _TransientError(f"asked for bytes from {offset}, got a range starting at {start}")
            part.spliced = True
        else:  # the whole body follows
            part.truncate()
        length = int_or_none(response.headers.get("Content-Length"))
        total = part.size + length if length is not None else None
        label = display.rsplit("/", 1)[-1] or display
        with tqdm(
            total=total,
            initial=part.size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            disable=not progress,
        ) as bar:
            received = part.append(response, bar)
        # A peer that closes early can end a body silently; compare with the header.
        if length is not None and received < length:
            raise _TransientError(f"connection dropped after {part.size} of {total} bytes")


def content_range_start(value: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes A-B/N`` header, or None."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    return int(match.group(1)) if match else None


def int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


# --- the Hugging Face Hub --------------------------------------------------------------------------


def _fetch_hf(location: HfLocation, *, expected: str, out: Path, progress: bool, display: str) -> int:
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
        return _move_verified(Path(downloaded), out, expected=expected, display=display)
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


# --- object stores (fsspec) ------------------------------------------------------------------------


def object_store(uri: str, scheme: str, display: str):
    """(fsspec filesystem, path) for an ``s3://``/``gs://`` URI; a missing backend is a one-line FetchError."""
    backend = _OBJECT_STORE_BACKENDS[scheme]
    missing = (
        f"{scheme}:// URIs need fsspec with {backend}, which is not installed; run: {CLOUD_EXTRA_INSTALL}"
    )
    try:
        import fsspec
    except ImportError:
        raise FetchError(missing) from None
    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError:
        raise FetchError(missing) from None


def _fetch_object_store(uri: str, *, scheme: str, expected: str, out: Path, display: str) -> int:
    fs, path = object_store(uri, scheme, display)

    def fill(dst: BinaryIO, digest: hashlib._Hash) -> int:
        with fs.open(path, "rb") as src:
            return _copy_hashing(src, dst, digest)

    try:
        return _write_verified(out, expected=expected, display=display, fill=fill)
    except FetchError:
        raise
    except FileNotFoundError:
        raise FetchError(f"{display}: not found") from None
    # Each backend raises its own exception types (botocore, google-auth...): report them as one line.
    except Exception as exc:
        raise FetchError(f"{display}: {type(exc).__name__}: {first_line(exc)}") from exc
