"""Where a checkpoint's bytes come from: a local path or a ``file://``, ``http(s)://``, ``hf://``, ``s3://`` or
``gs://`` URI, opened as a stream of chunks (:func:`open_source`; HTTP through huggingface_hub's client).

Over HTTP, a body that breaks off is asked for again from the first byte not received (``Range: bytes=N-``): this
is the package's one retry/resume loop. ``http_stream_backoff`` cannot do it (it has handed the response over
by then); a server that ignores Range is read from the start and the bytes already had are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit

from release._io import CHUNK_SIZE, first_line
from release.auth import read_token, redact
from release.errors import FetchError, UsageError

log = logging.getLogger(__name__)

SUPPORTED_SCHEMES = ("file", "http", "https", "hf", "s3", "gs", "gcs")
CLOUD_EXTRA_INSTALL = "pip install 'custom-transformer-release[cloud]'"
_OBJECT_STORE_BACKENDS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
_HF_TYPE_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_HF_SPECIAL_REF = re.compile(r"^refs/(?:convert/[\w.-]+|pr/\d+)")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_MAX_BACKOFF = 30.0  # seconds; caps our exponential delay and huggingface_hub's
_USER_AGENT = "custom-transformer-release (release fetch)"


class GaveUp(FetchError):
    """The retries ran out without progress; the bytes received so far are good and may be resumed from."""


@dataclass(frozen=True)
class HfLocation:
    """A file in a Hugging Face Hub repository, as named by an ``hf://`` URI."""

    repo_id: str  # 'OWNER/REPO'
    filename: str  # path inside the repo, e.g. 'checkpoints/step-1000/model.pt'
    revision: str | None  # branch, tag, commit or 'refs/pr/N'; None means the default branch
    repo_type: str  # 'model' | 'dataset' | 'space'


def default_cache_dir() -> Path:
    """The artifact cache (``release.settings.cache_dir``)."""
    from release.settings import cache_dir

    return cache_dir("artifacts")


def normalize_sha256(value: str) -> str:
    """64 lowercase hex digits; anything else is a ``UsageError``."""
    if not _SHA256_HEX.fullmatch(value.strip()):
        raise UsageError(f"--sha256 must be 64 hex digits (a SHA-256), got {value!r}")
    return value.strip().lower()


def parse_hf_uri(uri: str) -> HfLocation:
    """Split ``hf://[TYPE/]OWNER/REPO/PATH[@REV]`` into repo id, file path, revision and repo type.

    ``TYPE`` is ``datasets``, ``spaces`` or ``models`` (the default). ``PATH`` may be nested. The revision
    is everything after the last ``@`` in ``PATH`` and may contain slashes (``@refs/pr/3``). The form that
    huggingface_hub itself uses, ``hf://OWNER/REPO@REV/PATH``, is accepted too; there an ``@`` inside
    ``PATH`` is part of the file name, which is how to name such a file.

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


def open_source(uri: str, *, retries: int = 5, backoff: float = 0.5, timeout: float = 60) -> Source:
    """The source of ``uri``; nothing is read or requested until :meth:`Source.read`.

    Args:
        uri: A local path, or a ``file://``, ``http(s)://``, ``hf://``, ``s3://`` or ``gs://`` URI.
        retries: HTTP: how many consecutive failed attempts that made no progress are retried.
        backoff: HTTP: the first retry delay in seconds; each further retry doubles it (capped at 30 s).
        timeout: HTTP: seconds to wait for the server to connect or send more bytes.

    Raises:
        UsageError: The scheme is not supported or the URI is malformed.
    """
    if "://" not in uri:
        return LocalFile(uri, Path(uri).expanduser())
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in SUPPORTED_SCHEMES:
        supported = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        raise UsageError(f"unsupported URI scheme '{scheme}://'; use a local path or one of {supported}")
    parts = urlsplit(uri)
    if scheme not in ("file", "hf") and not parts.netloc:
        raise UsageError(f"{uri}: no host or bucket after '{scheme}://'")
    http = {"retries": retries, "backoff": backoff, "timeout": timeout}
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(
                f"{uri}: file:// URIs must name a local file (file:///path), not host {parts.netloc!r}"
            )
        return LocalFile(uri, Path(unquote(parts.path)))
    if scheme in ("http", "https"):
        return HttpFile(uri, uri, **http)
    if scheme == "hf":
        return HubFile(uri, parse_hf_uri(uri), **http)
    return ObjectStoreFile(uri, scheme)


class Source:
    """A file's bytes, read front to back as chunks."""

    def __init__(self, uri: str):
        self.uri = uri
        # Without user info, query or fragment, which may carry credentials (e.g. presigned URLs).
        parts = urlsplit(uri)
        self.display = (
            urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
            if "://" in uri
            else uri
        )
        self.name = Path(uri.split("?")[0].rstrip("/").split("@")[0]).name or "checkpoint.pt"
        self.size: int | None = None  # the whole file's bytes, once known

    def read(self, start: int = 0, *, progress: bool = False) -> Iterator[bytes]:
        """The bytes from offset ``start`` to the end, in order, with a progress bar on stderr if asked.

        Raises:
            GaveUp: HTTP retries ran out without progress (the chunks yielded so far are good).
            FetchError: The file cannot be read (not found, access denied, offline, a bad range).
        """
        from huggingface_hub.utils import tqdm  # honours HF_HUB_DISABLE_PROGRESS_BARS

        bar = tqdm(
            total=self.size,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=self.name,
            disable=not progress,
        )
        with bar:
            for chunk in self._chunks(start):
                if bar.total is None and self.size is not None:
                    bar.total = self.size
                bar.update(len(chunk))
                yield chunk

    def _chunks(self, start: int) -> Iterator[bytes]:
        raise NotImplementedError


class LocalFile(Source):
    """A local file, read in place."""

    def __init__(self, uri: str, path: Path):
        super().__init__(uri)
        self.path = path
        self.size = path.stat().st_size if path.is_file() else None

    def _chunks(self, start: int) -> Iterator[bytes]:
        if not self.path.is_file():
            raise FetchError(
                f"{self.display}: {'not a regular file' if self.path.exists() else 'no such file'}"
            )
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except PermissionError as exc:
            raise FetchError(f"{self.display}: permission denied ({exc.filename})") from exc
        with f:
            f.seek(start)
            yield from iter(lambda: f.read(CHUNK_SIZE), b"")


class ObjectStoreFile(Source):
    """An object in a bucket, through fsspec (``s3fs``, ``gcsfs``)."""

    def __init__(self, uri: str, scheme: str):
        super().__init__(uri)
        self.scheme = scheme

    def _chunks(self, start: int) -> Iterator[bytes]:
        backend = _OBJECT_STORE_BACKENDS[self.scheme]
        missing = f"{self.scheme}:// URIs need fsspec with {backend}, which is not installed; run: {CLOUD_EXTRA_INSTALL}"
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.uri)
        except ImportError:
            raise FetchError(missing) from None
        try:
            with fs.open(path, "rb") as f:
                self.size = getattr(f, "size", None)
                f.seek(start)
                yield from iter(lambda: f.read(CHUNK_SIZE), b"")
        except FileNotFoundError:
            raise FetchError(f"{self.display}: not found") from None
        # Each backend raises its own exception types (botocore, google-auth...): report them as one line.
        except Exception as exc:
            raise FetchError(f"{self.display}: {type(exc).__name__}: {first_line(exc)}") from exc


class _BodyBroke(Exception):
    """The body broke off: worth another request from the first byte not received."""


class HttpFile(Source):
    """A file at an HTTP(S) URL, read with Range requests where a body breaks off."""

    offline_hint = (
        "HF_HUB_OFFLINE is set, and fetch's HTTP client (huggingface_hub's) refuses every URL while it is; "
        "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) for the fetch, or give the checkpoint's local path"
    )

    def __init__(self, uri: str, url: str, *, retries: int, backoff: float, timeout: float):
        super().__init__(uri)
        self.url, self.retries, self.backoff, self.timeout = url, retries, backoff, timeout

    def _headers(self) -> dict[str, str]:
        return {}

    def check_online(self) -> None:
        """huggingface_hub's client refuses every URL in offline mode and has no per-request way round it."""
        from huggingface_hub.constants import is_offline_mode

        if is_offline_mode():
            raise FetchError(f"{self.display}: {self.offline_hint}")

    def _chunks(self, start: int) -> Iterator[bytes]:
        self.check_online()
        received, failures = start, 0
        while True:
            at_start = received
            try:
                with self._get({"Range": f"bytes={received}-"} if received else {}) as response:
                    if response.status_code == 416 and received:
                        return  # nothing after ``received``: the file may be complete, the hash decides
                    header = response.headers.get("Content-Range")
                    begin = content_range_start(header) if response.status_code == 206 else 0
                    if begin is None or begin > received:
                        raise FetchError(
                            f"{self.display}: asked for bytes from {received}, got range {header!r}"
                        )
                    declared = response.headers.get("Content-Length", "")
                    length = int(declared) if declared.strip().isdigit() else None
                    if length is not None:
                        self.size = begin + length
                    skip, got = received - begin, 0  # a server that ignores Range resends what we have
                    for chunk in self._body(response):
                        got += len(chunk)
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                        if chunk:
                            received += len(chunk)
                            yield chunk
                    # A peer that closes early can end a body silently; compare with the header.
                    if length is None or got >= length:
                        return
                    reason = f"connection dropped after {received} of {self.size} bytes"
            except _BodyBroke as exc:
                reason = str(exc)
            failures = 1 if received > at_start else failures + 1
            if failures > self.retries:
                raise GaveUp(
                    f"{self.display}: giving up after {failures} attempts without progress ({reason})"
                )
            delay = min(self.backoff * 2 ** (failures - 1), _MAX_BACKOFF)
            log.warning(
                "%s: %s; retry %d of %d from byte %d in %.1f s",
                self.display,
                reason,
                failures,
                self.retries,
                received,
                delay,
            )
            time.sleep(delay)

    @staticmethod
    def _body(response) -> Iterator[bytes]:
        """The body as it arrives; a break is ``_BodyBroke``, which ``http_stream_backoff`` lets through (it
        would otherwise retry a response it has already handed over)."""
        import httpx2

        try:
            yield from response.iter_raw()
        except httpx2.HTTPError as exc:  # reset, timeout, a body cut short
            raise _BodyBroke(
                f"connection dropped ({type(exc).__name__}: {redact(first_line(exc))})"
            ) from None

    @contextlib.contextmanager
    def _get(self, headers: dict[str, str]) -> Iterator:
        """One streamed GET whose response has status < 400 or 416; a final status is a one-line error."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError
        from huggingface_hub.utils import http_stream_backoff

        gave_up = f"{self.display}: giving up after {self.retries + 1} attempts without progress"
        try:
            with http_stream_backoff(
                "GET",
                self.url,
                headers={
                    "User-Agent": _USER_AGENT,
                    "Accept-Encoding": "identity",
                    **self._headers(),
                    **headers,
                },
                max_retries=self.retries,
                base_wait_time=self.backoff,
                max_wait_time=_MAX_BACKOFF,
                timeout=self.timeout,
                follow_redirects=True,
            ) as response:
                status = response.status_code
                if status >= 400 and not (status == 416 and "Range" in headers):
                    raise self._status_error(status, response.reason_phrase)
                yield response
        except HfHubHTTPError as exc:  # a retryable status, retries used up
            raise GaveUp(
                f"{gave_up} (HTTP {exc.response.status_code if exc.response is not None else '?'})"
            ) from None
        except httpx2.HTTPError as exc:  # connection errors before any response, retries used up
            raise GaveUp(f"{gave_up} ({type(exc).__name__}: {redact(first_line(exc))})") from None

    def _status_error(self, status: int, reason: str) -> FetchError:
        what = {401: "access denied", 403: "access denied", 404: "not found", 410: "not found"}.get(status)
        return FetchError(
            f"{self.display}: {what} (HTTP {status})" if what else f"{self.display}: HTTP {status} {reason}"
        )


class HubFile(HttpFile):
    """A file in a Hub repository, read at its ``resolve`` URL with ``HF_TOKEN`` (never a token saved on disk)."""

    offline_hint = "HF_HUB_OFFLINE is set; unset it (and TRANSFORMERS_OFFLINE) to read from the Hub"

    def __init__(self, uri: str, location: HfLocation, **http):
        from huggingface_hub import hf_hub_url

        url = hf_hub_url(
            location.repo_id, location.filename, repo_type=location.repo_type, revision=location.revision
        )
        super().__init__(uri, url, **http)
        self.location = location
        self.name = PurePosixPath(location.filename).name

    def _headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        return build_hf_headers(token=read_token() or False)

    def _status_error(self, status: int, reason: str) -> FetchError:
        if status in (401, 403, 404) and not read_token():
            return FetchError(
                f"{self.display}: not found or not accessible (HTTP {status}); set HF_TOKEN for a private repository"
            )
        return super()._status_error(status, reason)


def content_range_start(value: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes A-B/N`` header, or None."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    return int(match.group(1)) if match else None
