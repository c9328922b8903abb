"""Tests for release/fetch.py and release/hashing.py: real files, real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from release._io import sha256_file
from release.cli import main
from release.errors import FetchError, UsageError
from release.fetch.artifact import FetchResult, HfLocation, fetch_artifact, parse_hf_uri

PAYLOAD = bytes(range(256)) * 1200 + b"tail"  # ~300 KB: several reads, fast to serve
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64
FAST = {"backoff": 0.001, "timeout": 5, "progress": False}


# --- a tiny HTTP server that supports Range and misbehaves on request ------------------------------


@dataclass
class ServerState:
    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[dict[str, str | None]] = field(default_factory=list)
    fail_503: int = 0  # answer this many requests with 503 first
    drop_after: int | None = None  # send this many body bytes of the next response, then hang up
    drop_always: bool = False  # ...and keep doing so for every response
    drop_with_reset: bool = False  # hang up with a TCP reset instead of a clean close
    ignore_range: bool = False  # answer Range requests with the whole file (200)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer  # carries .state

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        state.requests.append({"path": self.path, "range": range_header})
        if state.fail_503 > 0:
            state.fail_503 -= 1
            self.send_error(503)
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if state.drop_after is not None:
            self.wfile.write(body[start : start + state.drop_after])
            self.wfile.flush()
            if not state.drop_always:
                state.drop_after = None
            if state.drop_with_reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server() -> Iterator[ServerState]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = ServerState(base_url=f"http://127.0.0.1:{httpd.server_port}")
    state.files["/ckpt.pt"] = PAYLOAD
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh cache per test, no Hub token, and no proxy between us and 127.0.0.1."""
    monkeypatch.setenv("RELEASE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def leftovers(folder: Path, keep: set[str] = frozenset()) -> list[str]:
    """Everything in ``folder`` except ``keep``: temp files, .part files, staging dirs."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep) if folder.exists() else []


# --- hashing and arguments -------------------------------------------------------------------------


def test_sha256_file_streams_the_same_digest_as_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one 1 MiB chunk, not a multiple of it
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "0" * 63, "0" * 65, "sha256:" + "0" * 64])
def test_invalid_sha256_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="64 hex digits"):
        fetch_artifact(str(tmp_path / "x"), sha256=bad, out=tmp_path / "out")


def test_uppercase_sha256_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "src.pt").write_bytes(PAYLOAD)
    result = fetch_artifact(str(tmp_path / "src.pt"), sha256=PAYLOAD_SHA.upper(), out=tmp_path / "o.pt")
    assert result.sha256 == PAYLOAD_SHA


@pytest.mark.parametrize("uri", ["ftp://example.com/ckpt.pt", "memory://ckpt.pt", "azure://c/ckpt.pt"])
def test_unsupported_scheme_names_the_supported_ones(tmp_path: Path, uri: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        fetch_artifact(uri, sha256=PAYLOAD_SHA, out=tmp_path / "out.pt")
    message = str(excinfo.value)
    for scheme in ("file://", "http://", "https://", "hf://", "s3://", "gs://"):
        assert scheme in message
    assert not (tmp_path / "out.pt").exists()


def test_out_that_is_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "src.pt").write_bytes(PAYLOAD)
    with pytest.raises(UsageError, match="is a directory"):
        fetch_artifact(str(tmp_path / "src.pt"), sha256=PAYLOAD_SHA, out=tmp_path)


# --- local files -----------------------------------------------------------------------------------


def test_local_path_is_copied_and_verified(tmp_path: Path) -> None:
    src = tmp_path / "src" / "ckpt.pt"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    out = tmp_path / "dist" / "nested" / "ckpt.pt"
    result = fetch_artifact(str(src), sha256=PAYLOAD_SHA, out=out)
    assert result == FetchResult(path=out, sha256=PAYLOAD_SHA, size=len(PAYLOAD), source="local")
    assert out.read_bytes() == PAYLOAD
    assert leftovers(out.parent, {"ckpt.pt"}) == []


def test_file_uri_with_escaped_characters(tmp_path: Path) -> None:
    src = tmp_path / "my ckpt.pt"
    src.write_bytes(PAYLOAD)
    uri = src.as_uri()  # file:///.../my%20ckpt.pt
    assert "%20" in uri
    result = fetch_artifact(uri, sha256=PAYLOAD_SHA, out=tmp_path / "out.pt")
    assert result.source == "local"
    assert (tmp_path / "out.pt").read_bytes() == PAYLOAD


def test_file_uri_with_a_remote_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="local file"):
        fetch_artifact("file://server/share/ckpt.pt", sha256=PAYLOAD_SHA, out=tmp_path / "out.pt")


def test_missing_local_file(tmp_path: Path) -> None:
    out = tmp_path / "dist" / "out.pt"
    with pytest.raises(FetchError, match="no such file"):
        fetch_artifact(str(tmp_path / "missing.pt"), sha256=PAYLOAD_SHA, out=out)
    assert leftovers(out.parent) == []


def test_local_hash_mismatch_keeps_the_source_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    src.write_bytes(PAYLOAD)
    out_dir = tmp_path / "dist"
    with pytest.raises(FetchError) as excinfo:
        fetch_artifact(str(src), sha256=WRONG_SHA, out=out_dir / "out.pt")
    assert WRONG_SHA in str(excinfo.value) and PAYLOAD_SHA in str(excinfo.value)
    assert src.read_bytes() == PAYLOAD
    assert leftovers(out_dir) == []


def test_existing_out_with_the_right_hash_is_kept(tmp_path: Path, server: ServerState) -> None:
    out = tmp_path / "out.pt"
    out.write_bytes(PAYLOAD)
    before = out.stat().st_mtime_ns
    result = fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, **FAST)
    assert result.source == "existing"
    assert server.requests == []
    assert out.stat().st_mtime_ns == before


def test_existing_out_with_another_hash_is_replaced(tmp_path: Path, server: ServerState) -> None:
    out = tmp_path / "out.pt"
    out.write_bytes(b"an older checkpoint")
    result = fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, **FAST)
    assert result.source == "download"
    assert out.read_bytes() == PAYLOAD


# --- HTTP ------------------------------------------------------------------------------------------


def test_http_download(tmp_path: Path, server: ServerState) -> None:
    out = tmp_path / "dist" / "ckpt.pt"
    result = fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, **FAST)
    assert result == FetchResult(path=out, sha256=PAYLOAD_SHA, size=len(PAYLOAD), source="download")
    assert out.read_bytes() == PAYLOAD
    assert server.requests == [{"path": "/ckpt.pt", "range": None}]
    assert leftovers(out.parent, {"ckpt.pt"}) == []


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_http_interrupted_transfer_resumes_with_range(
    tmp_path: Path, server: ServerState, reset: bool
) -> None:
    server.drop_after, server.drop_with_reset = 100_000, reset
    out = tmp_path / "ckpt.pt"
    result = fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, **FAST)
    assert result.source == "download"
    assert out.read_bytes() == PAYLOAD
    first, second = server.requests
    assert first["range"] is None
    if reset:  # the kernel may drop some in-flight bytes with the reset; what arrived is kept
        assert re.fullmatch(r"bytes=[1-9]\d*-", second["range"] or "")
    else:
        assert second["range"] == "bytes=100000-"
    assert leftovers(tmp_path, {"ckpt.pt", "cache"}) == []


def test_http_server_that_ignores_range_is_downloaded_whole(tmp_path: Path, server: ServerState) -> None:
    server.drop_after = 100_000
    server.ignore_range = True
    out = tmp_path / "ckpt.pt"
    fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_http_retries_on_503(tmp_path: Path, server: ServerState) -> None:
    server.fail_503 = 2
    out = tmp_path / "ckpt.pt"
    fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, retries=2, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert len(server.requests) == 3


def test_http_gives_up_after_bounded_attempts(tmp_path: Path, server: ServerState) -> None:
    server.fail_503 = 100
    out = tmp_path / "ckpt.pt"
    with pytest.raises(FetchError, match="503") as excinfo:
        fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, retries=3, **FAST)
    assert "4 attempts" in str(excinfo.value)
    assert len(server.requests) == 4
    assert leftovers(tmp_path, {"cache"}) == []


def test_http_partial_download_is_kept_and_resumed_by_the_next_run(
    tmp_path: Path, server: ServerState
) -> None:
    # Every response breaks off before any byte: no progress, so the retries run out.
    server.drop_after, server.drop_always = 0, True
    out = tmp_path / "ckpt.pt"
    part = tmp_path / "ckpt.pt.part"
    part.write_bytes(PAYLOAD[:50_000])  # what an earlier, interrupted run left
    with pytest.raises(FetchError, match="next run resumes"):
        fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, retries=1, **FAST)
    assert part.read_bytes() == PAYLOAD[:50_000]
    assert not out.exists()

    server.drop_after, server.drop_always = None, False
    server.requests.clear()
    result = fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, **FAST)
    assert result.source == "download"
    assert out.read_bytes() == PAYLOAD
    assert server.requests == [{"path": "/ckpt.pt", "range": "bytes=50000-"}]
    assert not part.exists()


def test_http_complete_part_file_is_verified_without_a_body(tmp_path: Path, server: ServerState) -> None:
    (tmp_path / "ckpt.pt.part").write_bytes(PAYLOAD)
    out = tmp_path / "ckpt.pt"
    fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [f"bytes={len(PAYLOAD)}-"]  # answered with 416


def test_http_stale_part_file_restarts_from_zero(tmp_path: Path, server: ServerState) -> None:
    (tmp_path / "ckpt.pt.part").write_bytes(b"x" * 1000)  # a prefix of some other file
    out = tmp_path / "ckpt.pt"
    fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == ["bytes=1000-", None]


def test_http_wrong_hash_deletes_the_download(tmp_path: Path, server: ServerState) -> None:
    out = tmp_path / "dist" / "ckpt.pt"
    with pytest.raises(FetchError) as excinfo:
        fetch_artifact(server.url("/ckpt.pt"), sha256=WRONG_SHA, out=out, **FAST)
    message = str(excinfo.value)
    assert f"expected {WRONG_SHA}" in message and f"got {PAYLOAD_SHA}" in message
    assert "\n" not in message
    assert leftovers(out.parent) == []
    assert leftovers(tmp_path / "cache") == []


def test_http_404_is_not_retried(tmp_path: Path, server: ServerState) -> None:
    out = tmp_path / "dist" / "ckpt.pt"
    with pytest.raises(FetchError, match=r"not found \(HTTP 404\)"):
        fetch_artifact(server.url("/missing.pt"), sha256=PAYLOAD_SHA, out=out, retries=5, **FAST)
    assert len(server.requests) == 1
    assert leftovers(out.parent) == []


def test_http_error_message_hides_credentials(tmp_path: Path, server: ServerState) -> None:
    url = server.url("/missing.pt?X-Amz-Signature=secret123")
    with pytest.raises(FetchError) as excinfo:
        fetch_artifact(url, sha256=PAYLOAD_SHA, out=tmp_path / "o.pt", **FAST)
    assert "secret123" not in str(excinfo.value)


@pytest.fixture
def hub_progress_bars(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """huggingface_hub's bars on: the Hub fixtures set HF_HUB_DISABLE_PROGRESS_BARS=1, which the library
    reads once at import and which wins over enable_progress_bars(); both are restored afterwards."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    monkeypatch.setattr(sys.modules["huggingface_hub.utils.tqdm"], "HF_HUB_DISABLE_PROGRESS_BARS", None)
    was_disabled = are_progress_bars_disabled()
    enable_progress_bars()
    yield
    if was_disabled:
        disable_progress_bars()


def test_http_progress_bar_goes_to_stderr(
    tmp_path: Path, server: ServerState, capsys: pytest.CaptureFixture[str], hub_progress_bars: None
) -> None:
    fetch_artifact(
        server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=tmp_path / "o.pt", backoff=0, progress=True
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ckpt.pt" in captured.err and "100%" in captured.err


def test_http_progress_bar_honours_hf_hub_disable_progress_bars(
    tmp_path: Path, server: ServerState, capsys: pytest.CaptureFixture[str], hub_progress_bars: None
) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=tmp_path / "o.pt", backoff=0, progress=True)
    finally:
        if not was_disabled:
            enable_progress_bars()
    assert "100%" not in capsys.readouterr().err


# --- the cache -------------------------------------------------------------------------------------


def test_cache_serves_a_known_hash_without_network(tmp_path: Path, server: ServerState) -> None:
    cache = tmp_path / "my-cache"
    first = fetch_artifact(
        server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=tmp_path / "a.pt", cache_dir=cache, **FAST
    )
    assert first.source == "download"
    assert (cache / "sha256" / PAYLOAD_SHA).read_bytes() == PAYLOAD

    server.requests.clear()
    second = fetch_artifact(
        server.url("/moved.pt"), sha256=PAYLOAD_SHA, out=tmp_path / "b" / "b.pt", cache_dir=cache, **FAST
    )
    assert second == FetchResult(
        path=tmp_path / "b" / "b.pt", sha256=PAYLOAD_SHA, size=len(PAYLOAD), source="cache"
    )
    assert (tmp_path / "b" / "b.pt").read_bytes() == PAYLOAD
    assert server.requests == []


def test_cache_dir_defaults_to_release_cache_dir(tmp_path: Path, server: ServerState) -> None:
    fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=tmp_path / "a.pt", **FAST)
    assert (tmp_path / "cache" / "sha256" / PAYLOAD_SHA).is_file()


def test_corrupt_cache_entry_is_dropped_and_refetched(tmp_path: Path, server: ServerState) -> None:
    entry = tmp_path / "cache" / "sha256" / PAYLOAD_SHA
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"bit rot")
    out = tmp_path / "a.pt"
    result = fetch_artifact(server.url("/ckpt.pt"), sha256=PAYLOAD_SHA, out=out, **FAST)
    assert result.source == "download"
    assert out.read_bytes() == PAYLOAD
    assert entry.read_bytes() == PAYLOAD


# --- object stores (fsspec) ------------------------------------------------------------------------


@pytest.fixture
def s3_in_memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """fsspec's in-memory filesystem standing in for s3fs, through fsspec's real lookup."""
    pytest.importorskip("fsspec")
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import _registry

    monkeypatch.setitem(_registry, "s3", MemoryFileSystem)
    fs = MemoryFileSystem()
    yield fs
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")


def test_s3_through_fsspec(tmp_path: Path, s3_in_memory: object) -> None:
    import fsspec

    with fsspec.open("s3://bucket/run-7/ckpt.pt", "wb") as f:
        f.write(PAYLOAD)
    out = tmp_path / "ckpt.pt"
    result = fetch_artifact("s3://bucket/run-7/ckpt.pt", sha256=PAYLOAD_SHA, out=out, progress=False)
    assert result.source == "download"
    assert out.read_bytes() == PAYLOAD
    assert (tmp_path / "cache" / "sha256" / PAYLOAD_SHA).is_file()


def test_s3_missing_object(tmp_path: Path, s3_in_memory: object) -> None:
    with pytest.raises(FetchError, match="s3://bucket/nope.pt: not found"):
        fetch_artifact("s3://bucket/nope.pt", sha256=PAYLOAD_SHA, out=tmp_path / "o.pt", progress=False)
    assert leftovers(tmp_path, {"cache"}) == []


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_missing_fsspec_backend_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    pytest.importorskip("fsspec")
    from fsspec.registry import _registry, known_implementations

    # Make the backend unimportable even where s3fs/gcsfs happen to be installed.
    monkeypatch.delitem(_registry, scheme, raising=False)
    monkeypatch.setitem(
        known_implementations, scheme, {"class": "no_such_backend_module.FS", "err": "missing"}
    )
    with pytest.raises(FetchError) as excinfo:
        fetch_artifact(f"{scheme}://bucket/ckpt.pt", sha256=PAYLOAD_SHA, out=tmp_path / "o.pt")
    message = str(excinfo.value)
    assert "pip install 'custom-transformer-release[cloud]'" in message
    assert ("s3fs" if scheme == "s3" else "gcsfs") in message
    assert "\n" not in message


def test_missing_fsspec_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # `import fsspec` now raises ImportError
    with pytest.raises(FetchError, match=re.escape("pip install 'custom-transformer-release[cloud]'")):
        fetch_artifact("s3://bucket/ckpt.pt", sha256=PAYLOAD_SHA, out=tmp_path / "o.pt")


# --- the Hugging Face Hub --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://org/ckpts/model.pt", HfLocation("org/ckpts", "model.pt", None, "model")),
        (
            "hf://org/ckpts/runs/7/step-100/model.pt",
            HfLocation("org/ckpts", "runs/7/step-100/model.pt", None, "model"),
        ),
        ("hf://org/ckpts/runs/7/model.pt@v1.2", HfLocation("org/ckpts", "runs/7/model.pt", "v1.2", "model")),
        ("hf://org/ckpts/model.pt@refs/pr/3", HfLocation("org/ckpts", "model.pt", "refs/pr/3", "model")),
        ("hf://org/ckpts/a@b/model.pt@main", HfLocation("org/ckpts", "a@b/model.pt", "main", "model")),
        (
            "hf://datasets/org/ckpts/x/model.pt@0123abc",
            HfLocation("org/ckpts", "x/model.pt", "0123abc", "dataset"),
        ),
        ("hf://spaces/org/demo/model.pt", HfLocation("org/demo", "model.pt", None, "space")),
        ("hf://models/org/ckpts/model.pt", HfLocation("org/ckpts", "model.pt", None, "model")),
        # huggingface_hub's own form, OWNER/REPO@REV/PATH; an '@' in PATH is then part of the name.
        ("hf://org/ckpts@v1/runs/model.pt", HfLocation("org/ckpts", "runs/model.pt", "v1", "model")),
        ("hf://org/ckpts@refs/pr/3/model.pt", HfLocation("org/ckpts", "model.pt", "refs/pr/3", "model")),
        (
            "hf://org/ckpts@feature%2Fx/model@2x.pt",
            HfLocation("org/ckpts", "model@2x.pt", "feature/x", "model"),
        ),
    ],
)
def test_parse_hf_uri(uri: str, expected: HfLocation) -> None:
    assert parse_hf_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "hf://org/ckpts",  # no file
        "hf://org/ckpts/",  # empty file path
        "hf://org",
        "hf://org/ckpts/model.pt@",  # empty revision
        "hf://org/ckpts@/model.pt",
        "hf://org/ckpts@v1",  # revision but no file
        "hf://org/ckpts/dir//model.pt",
        "hf://dataset/org/ckpts/model.pt",  # singular type
        "hf:///ckpts/model.pt",
    ],
)
def test_parse_hf_uri_rejects_malformed(uri: str) -> None:
    with pytest.raises(UsageError):
        parse_hf_uri(uri)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Replace hf_hub_download with one that writes PAYLOAD and records its arguments."""
    import huggingface_hub

    calls: list[dict[str, object]] = []

    def hf_hub_download(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        path = Path(kwargs["local_dir"]) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PAYLOAD)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def test_hf_download_uses_hf_token_from_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hub: list[dict[str, object]]
) -> None:
    out = tmp_path / "dist" / "ckpt.pt"
    result = fetch_artifact(
        "hf://datasets/org/ckpts/runs/model.pt@v1", sha256=PAYLOAD_SHA, out=out, progress=False
    )
    assert result.source == "download"
    assert out.read_bytes() == PAYLOAD
    call = fake_hub[0]
    assert (call["repo_id"], call["filename"], call["revision"], call["repo_type"]) == (
        "org/ckpts",
        "runs/model.pt",
        "v1",
        "dataset",
    )
    assert call["token"] is False  # no fallback to a token saved on disk
    assert leftovers(out.parent, {"ckpt.pt"}) == []  # the staging folder is gone

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    fetch_artifact(
        "hf://org/ckpts/model.pt", sha256=PAYLOAD_SHA, out=tmp_path / "b.pt", cache_dir=tmp_path / "c2"
    )
    assert fake_hub[1]["token"] == "hf_secret"


def test_hf_hash_mismatch_leaves_nothing(tmp_path: Path, fake_hub: list[dict[str, object]]) -> None:
    out = tmp_path / "dist" / "ckpt.pt"
    with pytest.raises(FetchError, match="SHA-256 mismatch"):
        fetch_artifact("hf://org/ckpts/model.pt", sha256=WRONG_SHA, out=out, progress=False)
    assert leftovers(out.parent) == []


def test_hf_private_repo_error_is_one_line_without_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def hf_hub_download(repo_id: str, filename: str, **kwargs: object) -> str:
        response = SimpleNamespace(headers={}, request=None, status_code=401)
        raise RepositoryNotFoundError(f"401 Client Error\nRepository Not Found: {repo_id}", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    out = tmp_path / "dist" / "ckpt.pt"
    with pytest.raises(FetchError) as excinfo:
        fetch_artifact("hf://org/private/model.pt", sha256=PAYLOAD_SHA, out=out, progress=False)
    message = str(excinfo.value)
    assert "org/private" in message and "HF_TOKEN" in message
    assert "hf_secret" not in message and "\n" not in message
    assert leftovers(out.parent) == []


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_fetch_prints_path_and_source(tmp_path: Path, server: ServerState) -> None:
    out = tmp_path / "ckpt.pt"
    args = ["fetch", server.url("/ckpt.pt"), "--sha256", PAYLOAD_SHA, "--out", str(out), "--no-progress"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == f"{out} (download)\n"
    second = CliRunner().invoke(main, args)
    assert second.stdout == f"{out} (existing)\n"


@pytest.mark.parametrize(
    ("uri", "sha", "code", "pattern"),
    [
        ("/definitely/missing.pt", PAYLOAD_SHA, 1, "no such file"),
        ("SERVER/ckpt.pt", WRONG_SHA, 1, "SHA-256 mismatch"),
        ("SERVER/missing.pt", PAYLOAD_SHA, 1, "not found"),
        ("SERVER/ckpt.pt", "abc", 2, "64 hex digits"),
        ("ftp://example.com/ckpt.pt", PAYLOAD_SHA, 2, "unsupported URI scheme"),
    ],
)
def test_cli_fetch_errors_are_one_line(
    tmp_path: Path, server: ServerState, uri: str, sha: str, code: int, pattern: str
) -> None:
    uri = uri.replace("SERVER", server.base_url)
    result = CliRunner().invoke(
        main, ["fetch", uri, "--sha256", sha, "--out", str(tmp_path / "dist" / "o.pt"), "--no-progress"]
    )
    assert result.exit_code == code
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and re.search(pattern, lines[0])
    assert not (tmp_path / "dist").exists()  # not even the folder it created


def test_cli_fetch_has_help_with_an_example() -> None:
    result = CliRunner().invoke(main, ["fetch", "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "--sha256" in result.output
