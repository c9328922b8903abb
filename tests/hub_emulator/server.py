"""An HTTP emulator of the Hugging Face Hub endpoints the `huggingface_hub` client uses to publish and download.

The real client (and `transformers.from_pretrained`) talks to it over HTTP on 127.0.0.1; point it here with
`HF_ENDPOINT=<emulator.url>` and `HF_HUB_DISABLE_XET=1` set before importing those libraries. Storage lives in
memory (`store.py`); this module maps HTTP requests onto it, records every request, and injects faults.

Endpoints (repo types `models`, `datasets`, `spaces`; revisions are URL-encoded branch/tag names or 40-hex shas):

    GET  /api/whoami-v2                                   POST /api/validate-yaml
    POST /api/repos/create                                DELETE /api/repos/delete
    GET  /api/{type}s/{repo}[/revision/{rev}]             PUT  /api/{type}s/{repo}/settings
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]          POST /api/{type}s/{repo}/paths-info/{rev}
    GET  /api/{type}s/{repo}/refs                         GET  /api/{type}s/{repo}/commits/{rev}
    POST /api/{type}s/{repo}/preupload/{rev}              POST /api/{type}s/{repo}/commit/{branch}
    POST|DELETE /api/{type}s/{repo}/branch/{branch}       POST /api/{type}s/{repo}/tag/{rev}
    DELETE /api/{type}s/{repo}/tag/{tag}                  GET|HEAD /[{type}s/]{repo}/resolve/{rev}/{path}
    POST /[{type}s/]{repo}.git/info/lfs/objects/batch     POST /[{type}s/]{repo}.git/info/lfs/objects/verify
    PUT  /_emulator/lfs/{sha256}   (the "basic" transfer upload href handed out by the batch endpoint)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import socket
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from .store import (
    AddFile,
    AddLfsFile,
    Commit,
    CommitOperation,
    DeleteFile,
    DeleteFolder,
    FileEntry,
    HubError,
    HubStore,
    Repo,
    readme_metadata,
    readme_metadata_errors,
    utc_iso,
)

_URL_TYPE_TO_REPO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO_TYPE_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass
class RecordedRequest:
    """One request the emulator received. The Authorization header's value is never stored."""

    index: int
    method: str
    path: str  # URL-decoded path, without the query string
    query: str  # raw query string
    headers: dict[str, str]  # lower-cased names; Authorization, Cookie and Proxy-Authorization are left out
    authorized: bool  # an Authorization header was present
    mutating: (
        bool  # asks to change what the Hub stores (repo, commit, ref, LFS object), even if it then failed
    )
    status: int | None = None  # None while in flight, or when the connection was dropped without a response
    dropped: bool = False  # a fault closed the connection without answering


@dataclass
class Fault:
    """A programmed failure: answer `status` (or drop the connection) on matching requests.

    A request matches when its method equals `method` (any method if None) and `path_regex` is found
    (`re.search`) in its URL-decoded path. The `nth` matching request and the `times - 1` after it fail;
    later ones succeed.
    """

    method: str | None
    path_regex: re.Pattern[str]
    nth: int = 1
    times: int = 1
    status: int = 503
    drop_connection: bool = False  # close the socket without any response instead of answering `status`
    after_handling: bool = False  # with drop_connection: apply the request first, then lose the response
    headers: dict[str, str] = field(default_factory=dict)  # sent with `status`, e.g. a 429's RateLimit
    matched: int = 0  # matching requests seen so far
    fired: int = 0  # requests this fault failed so far

    @property
    def exhausted(self) -> bool:
        return self.fired >= self.times

    def _claims(self, method: str, path: str) -> bool:
        if (self.method is not None and self.method != method) or not self.path_regex.search(path):
            return False
        self.matched += 1
        if self.matched >= self.nth and self.fired < self.times:
            self.fired += 1
            return True
        return False


@dataclass
class ConcurrentPush:
    """A commit another client lands on `branch` right before the next commit request to that branch."""

    repo_type: str
    repo_id: str
    branch: str
    files: dict[str, bytes]
    message: str
    commit_sha: str | None = None  # set once applied


@dataclass(frozen=True)
class Refs:
    branches: dict[str, str]  # name -> commit sha
    tags: dict[str, str]  # name -> commit sha


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Request:
    method: str
    raw_path: str  # as sent, still percent-encoded
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    token: str | None  # the bearer token; only ever compared, never stored

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from error

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[-1].lower() in ("1", "true")


@dataclass
class _Route:
    handler: Callable[..., _Response]
    kwargs: dict[str, Any] = field(default_factory=dict)
    mutating: bool = False  # changes stored state; recorded in the request log
    write: bool = False  # needs a token when the emulator runs with require_token=True


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(status, body, {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


def _error(error: HubError) -> _Response:
    headers = {
        "X-Error-Message": (error.message.splitlines() or [""])[0].encode("ascii", "replace").decode(),
        **error.headers,
    }
    if error.error_code:
        headers["X-Error-Code"] = error.error_code
    return _json({"error": error.message}, error.status, headers)


def _repo_url_path(repo: Repo) -> str:
    return _REPO_TYPE_URL_PREFIX[repo.repo_type] + repo.repo_id


def _bearer_token(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class HubEmulator:
    """A local Hub over HTTP, with inspection helpers and fault injection for tests.

    Args:
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (read it back from `url`).
        require_token: Answer 401 to write requests (commits, refs, repo creation, LFS batch) without a token.
        accepted_tokens: If given, only these tokens are valid; any other token gets 401 on every request.
        username: The user every valid token belongs to (owner of repos created without a namespace).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        require_token: bool = False,
        *,
        accepted_tokens: Iterable[str] | None = None,
        username: str = "emulator-user",
    ) -> None:
        self.host = host
        self.require_token = require_token
        self.accepted_tokens = frozenset(accepted_tokens) if accepted_tokens is not None else None
        self.username = username
        self.tree_page_size = 1000  # the Hub's page size for tree listings (50 with expand=True)
        self.commits_page_size = 50
        self._defaults = (require_token, self.accepted_tokens)
        self._store = HubStore()
        self._lock = threading.Lock()  # guards the request log, faults and pending concurrent pushes
        self._requests: list[RecordedRequest] = []
        self.internal_errors: list[str] = []  # tracebacks of emulator bugs (answered with HTTP 500)
        self._faults: list[Fault] = []
        self._pushes: dict[tuple[str, str, str], ConcurrentPush] = {}
        self._server = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HubEmulator:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="hub-emulator",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all repos, blobs, recorded requests, faults and pending pushes; restore auth settings."""
        with self._lock:
            self._store = HubStore()
            self._requests.clear()
            self.internal_errors.clear()
            self._faults.clear()
            self._pushes.clear()
            self.require_token, self.accepted_tokens = self._defaults

    # -- request log -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def mutating_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if request.mutating]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def secret_locations(self, secret: str) -> list[str]:
        """Everywhere `secret` appears in what the emulator recorded or stores (empty list: nowhere)."""
        needle = secret.encode()
        found = []
        for request in self.requests:
            if secret in request.path or secret in unquote(request.query):
                found.append(f"request #{request.index} URL {request.method} {request.path}")
            found += [
                f"request #{request.index} header {name}"
                for name, value in request.headers.items()
                if secret in value
            ]
        with self._store.lock:
            for repo in self._store.repos():
                names = [*repo.branches, *repo.tags, *(t.message or "" for t in repo.tags.values())]
                if any(secret in name for name in names):
                    found.append(f"refs of {repo.repo_id}")
                for commit in repo.commits.values():
                    if secret in commit.title or secret in commit.description:
                        found.append(f"message of commit {commit.sha} in {repo.repo_id}")
            for sha256, content in self._store.blobs().items():
                if needle in content:
                    found.append(f"blob sha256:{sha256}")
        return found

    # -- fault injection ---------------------------------------------------------------------------

    def inject_fault(
        self,
        method: str | None,
        path_regex: str,
        *,
        status: int = 503,
        nth: int = 1,
        times: int = 1,
        drop_connection: bool = False,
        after_handling: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Fail matching requests; see `Fault`. Returns the fault so tests can read `matched` / `fired`.

        Example: `hub.inject_fault("POST", r"/commit/main$", status=500)` fails the next commit to main once;
        `hub.inject_fault("GET", r"/refs$", status=429, headers={"RateLimit": '"api";r=0;t=60'})` answers the
        next listing of refs the way the Hub answers a client over its rate limit.
        """
        if after_handling and not drop_connection:
            raise ValueError("after_handling only makes sense with drop_connection=True.")
        fault = Fault(
            method=method.upper() if method else None,
            path_regex=re.compile(path_regex),
            nth=nth,
            times=times,
            status=status,
            drop_connection=drop_connection,
            after_handling=after_handling,
            headers=dict(headers or {}),
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def inject_concurrent_push(
        self,
        repo_id: str,
        branch: str = "main",
        *,
        files: Mapping[str, bytes] | None = None,
        message: str = "Concurrent push",
        repo_type: str = "model",
    ) -> ConcurrentPush:
        """Before the next commit request to `branch`, land another commit there (moving the branch head)."""
        push = ConcurrentPush(
            repo_type=repo_type,
            repo_id=repo_id,
            branch=branch,
            files=dict(files if files is not None else {"CONCURRENT_PUSH.md": b"Pushed by someone else.\n"}),
            message=message,
        )
        with self._lock:
            self._pushes[(repo_type, repo_id, branch)] = push
        return push

    # -- inspection and seeding --------------------------------------------------------------------

    def _repo(self, repo_id: str, repo_type: str) -> Repo:
        return self._store.get_repo(repo_type, repo_id, authorized=True)

    def repo_ids(self, repo_type: str = "model") -> list[str]:
        return sorted(repo.repo_id for repo in self._store.repos() if repo.repo_type == repo_type)

    def is_private(self, repo_id: str, *, repo_type: str = "model") -> bool:
        return self._repo(repo_id, repo_type).private

    def resolve(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The commit sha a branch, tag or sha points to."""
        return self._store.resolve(self._repo(repo_id, repo_type), revision).sha

    def file_entries(
        self, repo_id: str, revision: str = "main", *, repo_type: str = "model"
    ) -> dict[str, FileEntry]:
        return dict(self._store.resolve(self._repo(repo_id, repo_type), revision).files)

    def repo_files(
        self, repo_id: str, revision: str = "main", *, repo_type: str = "model"
    ) -> dict[str, bytes]:
        """Exact content of every file at `revision` (including the `.gitattributes` the Hub creates)."""
        entries = self.file_entries(repo_id, revision, repo_type=repo_type)
        return {path: self._store.blob(entry.sha256) for path, entry in sorted(entries.items())}

    def refs(self, repo_id: str, *, repo_type: str = "model") -> Refs:
        repo = self._repo(repo_id, repo_type)
        with self._store.lock:
            return Refs(
                branches=dict(repo.branches), tags={name: tag.target for name, tag in repo.tags.items()}
            )

    def commits(self, repo_id: str, branch: str = "main", *, repo_type: str = "model") -> list[Commit]:
        """First-parent history of `branch` (or any revision), newest first; the last one is "initial commit"."""
        return self._store.history(self._repo(repo_id, repo_type), branch)

    def create_repo(self, repo_id: str, *, private: bool = False, repo_type: str = "model") -> None:
        self._store.create_repo(repo_type, repo_id, private=private, now=_now())

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | None = None,
        *,
        delete: Iterable[str] = (),
        branch: str = "main",
        message: str = "Seed commit",
        repo_type: str = "model",
    ) -> str:
        """Commit directly (no HTTP); files go to LFS when the Hub would put them there. Returns the sha."""
        repo = self._repo(repo_id, repo_type)
        operations: list[CommitOperation] = [DeleteFile(path) for path in delete]
        for path, content in (files or {}).items():
            mode = self._store.upload_mode(repo, branch, path=path, size=len(content), sample=content[:512])
            if mode == "lfs":
                operations.append(AddLfsFile(path, self._store.put_blob(content), len(content)))
            else:
                operations.append(AddFile(path, content))
        commit = self._store.commit(
            repo, branch, operations, title=message, description="", author=self.username, now=_now()
        )
        return commit.sha

    def create_branch(
        self, repo_id: str, branch: str, *, revision: str = "main", repo_type: str = "model"
    ) -> None:
        self._store.create_branch(self._repo(repo_id, repo_type), branch, starting_point=revision)

    def create_tag(self, repo_id: str, tag: str, *, revision: str = "main", repo_type: str = "model") -> None:
        self._store.create_tag(self._repo(repo_id, repo_type), tag, revision=revision, message=None)

    # -- request handling (called from the server threads) ------------------------------------------

    def _record(
        self, method: str, path: str, query: str, headers: Mapping[str, str], *, route: _Route
    ) -> RecordedRequest:
        with self._lock:
            record = RecordedRequest(
                index=len(self._requests),
                method=method,
                path=path,
                query=query,
                headers={
                    name.lower(): value
                    for name, value in headers.items()
                    if name.lower() not in _SECRET_HEADERS
                },
                authorized=headers.get("Authorization") is not None,
                mutating=route.mutating,
            )
            self._requests.append(record)
            return record

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            return next((fault for fault in self._faults if fault._claims(method, path)), None)

    def _dispatch(self, route: _Route, request: _Request) -> _Response:
        try:
            if request.token is not None and self.accepted_tokens is not None:
                if request.token not in self.accepted_tokens:
                    raise HubError(401, "Invalid credentials in Authorization header")
            if route.write and self.require_token and request.token is None:
                raise HubError(
                    401, "You must be authenticated to write to the Hub (no Authorization header)."
                )
            return route.handler(request, **route.kwargs)
        except HubError as error:
            return _error(error)
        except Exception as error:  # a bug in the emulator: answer 500 and keep it for the test to report
            with self._lock:
                self.internal_errors.append(traceback.format_exc())
            return _json({"error": f"Hub emulator internal error: {error!r}"}, 500)

    def _route(self, method: str, segments: list[str]) -> _Route:
        """Map a request to its handler. `segments` are the URL-decoded parts of the path."""
        if segments[:1] == ["api"]:
            return self._route_api(method, segments[1:])
        if segments[:2] == ["_emulator", "lfs"] and len(segments) == 3 and method == "PUT":
            return _Route(self._lfs_upload, {"oid": segments[2]}, mutating=True)
        repo_type = "model"
        if segments[:1] in (["datasets"], ["spaces"]):
            repo_type, segments = _URL_TYPE_TO_REPO_TYPE[segments[0]], segments[1:]
        if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{segments[0]}/{segments[1]}"
            kwargs = {
                "repo_type": repo_type,
                "repo_id": repo_id,
                "revision": segments[3],
                "path": "/".join(segments[4:]),
            }
            return _Route(self._resolve_file, kwargs)
        if (
            len(segments) == 6
            and segments[1].endswith(".git")
            and segments[2:5] == ["info", "lfs", "objects"]
        ):
            kwargs = {"repo_type": repo_type, "repo_id": f"{segments[0]}/{segments[1][: -len('.git')]}"}
            if segments[5] == "batch" and method == "POST":
                return _Route(self._lfs_batch, kwargs, write=True)
            if segments[5] == "verify" and method == "POST":
                return _Route(self._lfs_verify, kwargs, write=True)
        return self._unknown_route(method)

    def _route_api(self, method: str, segments: list[str]) -> _Route:
        if segments == ["whoami-v2"] and method == "GET":
            return _Route(self._whoami)
        if segments == ["agent-harnesses"] and method == "GET":
            return _Route(lambda request: _json({"standardEnvVars": [], "harnesses": {}}))
        if segments == ["validate-yaml"] and method == "POST":
            return _Route(self._validate_yaml)
        if segments == ["repos", "create"] and method == "POST":
            return _Route(self._create_repo, mutating=True, write=True)
        if segments == ["repos", "delete"] and method == "DELETE":
            return _Route(self._delete_repo, mutating=True, write=True)
        if len(segments) < 3 or segments[0] not in _URL_TYPE_TO_REPO_TYPE:
            return self._unknown_route(method)
        repo = {"repo_type": _URL_TYPE_TO_REPO_TYPE[segments[0]], "repo_id": f"{segments[1]}/{segments[2]}"}
        action, rest = (segments[3], segments[4:]) if len(segments) > 3 else (None, [])
        tail = "/".join(rest)  # revisions are URL-encoded by the client, but tolerate raw slashes
        routes: dict[tuple[str, str | None], _Route] = {
            ("GET", None): _Route(self._repo_info, {**repo, "revision": None}),
            ("GET", "revision"): _Route(self._repo_info, {**repo, "revision": tail}),
            ("PUT", "settings"): _Route(self._update_settings, repo, mutating=True, write=True),
            ("GET", "refs"): _Route(self._list_refs, repo),
            ("GET", "commits"): _Route(self._list_commits, {**repo, "revision": tail}),
            ("POST", "paths-info"): _Route(self._paths_info, {**repo, "revision": tail}),
            ("POST", "preupload"): _Route(self._preupload, {**repo, "revision": tail}, write=True),
            ("POST", "commit"): _Route(self._commit, {**repo, "branch": tail}, mutating=True, write=True),
            ("POST", "branch"): _Route(
                self._create_branch, {**repo, "branch": tail}, mutating=True, write=True
            ),
            ("DELETE", "branch"): _Route(
                self._delete_branch, {**repo, "branch": tail}, mutating=True, write=True
            ),
            ("POST", "tag"): _Route(self._create_tag, {**repo, "revision": tail}, mutating=True, write=True),
            ("DELETE", "tag"): _Route(self._delete_tag, {**repo, "tag": tail}, mutating=True, write=True),
        }
        if action == "tree" and method == "GET" and rest:
            return _Route(self._list_tree, {**repo, "revision": rest[0], "path": "/".join(rest[1:])})
        takes_tail = action not in (None, "refs", "settings")
        route = routes.get((method, action))
        if route is not None and takes_tail == bool(rest):
            return route
        return self._unknown_route(method)

    def _unknown_route(self, method: str) -> _Route:
        def not_found(request: _Request) -> _Response:
            raise HubError(
                404, f"The Hub emulator does not implement {request.method} {unquote(request.raw_path)}."
            )

        return _Route(not_found, mutating=method not in ("GET", "HEAD", "OPTIONS"))

    # -- endpoint handlers -------------------------------------------------------------------------

    def _get_repo(self, request: _Request, repo_type: str, repo_id: str) -> Repo:
        return self._store.get_repo(repo_type, repo_id, authorized=request.token is not None)

    def _whoami(self, request: _Request) -> _Response:
        if request.token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return _json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.username,
                "fullname": "Hub Emulator User",
                "email": None,
                "emailVerified": False,
                "isPro": False,
                "canPay": False,
                "avatarUrl": "",
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "hub-emulator", "role": "write"},
                },
            }
        )

    def _validate_yaml(self, request: _Request) -> _Response:
        errors = readme_metadata_errors(str(request.json().get("content", "")))
        return _json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)

    def _create_repo(self, request: _Request) -> _Response:
        payload = request.json()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.username}/{payload.get('name')}"
        # Clients since 0.27 send `visibility`; older ones send `private`.
        private = payload.get("visibility") == "private" or payload.get("private") is True
        url = f"{self.url}/{_REPO_TYPE_URL_PREFIX.get(repo_type, '')}{repo_id}"
        try:
            self._store.create_repo(repo_type, repo_id, private=private, now=_now())
        except HubError as error:
            if error.status != 409:
                raise
            # The Hub includes the url in its 409 answer; `create_repo(exist_ok=True)` reads it.
            return _json({"error": error.message, "url": url}, 409)
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, request: _Request) -> _Response:
        payload = request.json()
        repo_id = f"{payload.get('organization') or self.username}/{payload.get('name')}"
        self._store.delete_repo(payload.get("type") or "model", repo_id)
        return _json({})

    def _update_settings(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        payload = request.json()
        if "visibility" in payload:
            repo.private = payload["visibility"] == "private"
        elif "private" in payload:
            repo.private = bool(payload["private"])
        return _json({})

    def _repo_info(self, request: _Request, repo_type: str, repo_id: str, revision: str | None) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        commit = self._store.resolve(repo, revision or "main")
        with_blobs = request.flag("blobs")
        siblings = []
        for path in sorted(commit.files):
            entry = commit.files[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=entry.size, blobId=entry.oid)
                if entry.lfs:
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.sha256,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": repo.repo_id,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": utc_iso(commit.created_at),
            "createdAt": utc_iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(entry.size for entry in commit.files.values()),
        }
        if "README.md" in commit.files:
            card = readme_metadata(
                self._store.blob(commit.files["README.md"].sha256).decode("utf-8", "replace")
            )
            if card:
                info["cardData"] = card
                info["tags"] = [tag for tag in card.get("tags") or [] if isinstance(tag, str)]
                for key in ("library_name", "pipeline_tag"):
                    if isinstance(card.get(key), str):
                        info[key] = card[key]
        if repo_type == "model":
            info["modelId"] = repo.repo_id
        return _json(info)

    def _list_refs(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        with self._store.lock:
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                for name, sha in repo.branches.items()
            ]
            tags = [
                {"name": name, "ref": f"refs/tags/{name}", "targetCommit": tag.target}
                for name, tag in repo.tags.items()
            ]
        payload: dict[str, Any] = {"branches": branches, "converts": [], "tags": tags}
        if request.flag("include_prs"):
            payload["pullRequests"] = []
        return _json(payload)

    def _list_commits(self, request: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        history = self._store.history(repo, revision)
        page = int(request.query.get("p", ["0"])[-1])
        start = page * self.commits_page_size
        items = [
            {
                "id": commit.sha,
                "title": commit.title,
                "message": commit.description,
                "authors": [{"user": commit.author, "avatar": ""}],
                "date": utc_iso(commit.created_at),
            }
            for commit in history[start : start + self.commits_page_size]
        ]
        headers = {}
        if start + self.commits_page_size < len(history):
            headers["Link"] = self._next_link(request, {"p": str(page + 1)})
        return _json(items, headers=headers)

    def _list_tree(
        self, request: _Request, repo_type: str, repo_id: str, revision: str, path: str
    ) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        commit = self._store.resolve(repo, revision)
        path = path.strip("/")
        recursive, expand = request.flag("recursive"), request.flag("expand")
        prefix = f"{path}/" if path else ""
        files, folders = [], set()
        for file_path in commit.files:
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            if recursive:
                files.append(file_path)
                folders.update(prefix + "/".join(parts[:depth]) for depth in range(1, len(parts)))
            elif len(parts) == 1:
                files.append(file_path)
            else:
                folders.add(prefix + parts[0])
        if path and not files and not folders:
            raise HubError(404, f"{path} does not exist on {revision}", error_code="EntryNotFound")
        entries = sorted([(p, True) for p in files] + [(p, False) for p in folders])
        page_size = 50 if expand else self.tree_page_size
        cursor = int(request.query.get("cursor", ["0"])[-1])
        page = [
            self._path_info(repo, commit, entry_path, is_file=is_file, expand=expand)
            for entry_path, is_file in entries[cursor : cursor + page_size]
        ]
        headers = {}
        if cursor + page_size < len(entries):
            headers["Link"] = self._next_link(request, {"cursor": str(cursor + page_size)})
        return _json(page, headers=headers)

    def _paths_info(self, request: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        commit = self._store.resolve(repo, revision)
        if "json" in request.headers.get("Content-Type", ""):
            payload = request.json()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:  # the client sends a form: paths=a&paths=b&expand=false
            form = parse_qs(request.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), form.get("expand", [""])[-1].lower() in ("1", "true")
        results = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in commit.files:
                results.append(self._path_info(repo, commit, path, is_file=True, expand=expand))
            elif any(file_path.startswith(path + "/") for file_path in commit.files):
                results.append(self._path_info(repo, commit, path, is_file=False, expand=expand))
        return _json(results)

    def _path_info(
        self, repo: Repo, commit: Commit, path: str, *, is_file: bool, expand: bool
    ) -> dict[str, Any]:
        if is_file:
            entry = commit.files[path]
            info: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
            if entry.lfs:
                info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        else:
            info = {"type": "directory", "oid": _folder_oid(commit, path), "size": 0, "path": path}
        if expand:
            last = _last_commit_touching(repo, commit, path, is_file=is_file)
            info["lastCommit"] = {"id": last.sha, "title": last.title, "date": utc_iso(last.created_at)}
        return info

    def _preupload(self, request: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        if request.flag("create_pr"):
            raise HubError(400, "The Hub emulator does not support create_pr.")
        files = self._store.resolve(repo, revision).files
        answers = []
        for item in request.json().get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample", ""))
            mode = self._store.upload_mode(repo, revision, path=path, size=int(item["size"]), sample=sample)
            existing = files.get(path)
            # The client compares this to its own oid to skip unchanged files: sha256 for LFS, git sha1 otherwise.
            oid = None if existing is None else existing.sha256 if existing.lfs else existing.oid
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return _json({"files": answers, "commitOid": self._store.resolve(repo, revision).sha})

    def _lfs_batch(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "The Hub emulator's LFS batch endpoint only supports the 'upload' operation.")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "The Hub emulator only supports the 'basic' LFS transfer.")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid")), obj.get("size")
            if not _SHA256_HEX.fullmatch(oid) or not isinstance(size, int):
                objects.append(
                    {"oid": oid, "size": size or 0, "error": {"code": 422, "message": "Invalid object"}}
                )
            elif self._store.has_blob(oid):
                objects.append({"oid": oid, "size": size})  # already stored: no actions, the client skips it
            else:
                upload = f"{self.url}/_emulator/lfs/{oid}?{urlencode({'size': size})}"
                verify = f"{self.url}/{_repo_url_path(repo)}.git/info/lfs/objects/verify"
                actions = {"upload": {"href": upload}, "verify": {"href": verify}}
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return _json(body, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, request: _Request, oid: str) -> _Response:
        expected_size = int(request.query.get("size", ["-1"])[-1])
        if len(request.body) != expected_size or self._store.put_blob(request.body) != oid:
            raise HubError(400, f"Uploaded content does not match LFS object {oid} (size {expected_size}).")
        return _Response(200)

    def _lfs_verify(self, request: _Request, repo_type: str, repo_id: str) -> _Response:
        self._get_repo(request, repo_type, repo_id)
        payload = request.json()
        oid = str(payload.get("oid"))
        if not self._store.has_blob(oid) or len(self._store.blob(oid)) != payload.get("size"):
            raise HubError(404, f"LFS object {oid} was not uploaded.")
        return _json({})

    def _commit(self, request: _Request, repo_type: str, repo_id: str, branch: str) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        if request.flag("create_pr"):
            raise HubError(400, "The Hub emulator does not support create_pr.")
        header, operations = _parse_commit_payload(request.body)
        author = self.username if request.token is not None else "anonymous"
        with self._store.lock:  # the concurrent push and this commit land atomically, in that order
            with self._lock:
                push = self._pushes.pop((repo_type, repo_id, branch), None)
            if push is not None:
                adds = [AddFile(path, content) for path, content in push.files.items()]
                landed = self._store.commit(
                    repo,
                    branch,
                    adds,
                    title=push.message,
                    description="",
                    author="concurrent-pusher",
                    now=_now(),
                )
                push.commit_sha = landed.sha
            commit = self._store.commit(
                repo,
                branch,
                operations,
                title=str(header.get("summary") or ""),
                description=str(header.get("description") or ""),
                author=author,
                now=_now(),
                parent_commit=header.get("parentCommit"),
            )
        return _json(
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{self.url}/{_repo_url_path(repo)}/commit/{commit.sha}",
                "pullRequestUrl": None,
                "hookOutput": "",
            }
        )

    def _create_branch(self, request: _Request, repo_type: str, repo_id: str, branch: str) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        payload = request.json()
        if payload.get("emptyBranch"):
            raise HubError(400, "The Hub emulator does not support empty branches.")
        self._store.create_branch(repo, branch, starting_point=payload.get("startingPoint"))
        return _json({})

    def _delete_branch(self, request: _Request, repo_type: str, repo_id: str, branch: str) -> _Response:
        self._store.delete_branch(self._get_repo(request, repo_type, repo_id), branch)
        return _json({})

    def _create_tag(self, request: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        payload = request.json()
        self._store.create_tag(
            repo, str(payload.get("tag", "")), revision=revision, message=payload.get("message")
        )
        return _json({})

    def _delete_tag(self, request: _Request, repo_type: str, repo_id: str, tag: str) -> _Response:
        self._store.delete_tag(self._get_repo(request, repo_type, repo_id), tag)
        return _json({})

    def _resolve_file(
        self, request: _Request, repo_type: str, repo_id: str, revision: str, path: str
    ) -> _Response:
        repo = self._get_repo(request, repo_type, repo_id)
        commit = self._store.resolve(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(
                404,
                f"Entry not found: {path}",
                error_code="EntryNotFound",
                headers={"X-Repo-Commit": commit.sha},
            )
        content = self._store.blob(entry.sha256)
        etag = entry.sha256 if entry.lfs else entry.oid
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            # On the Hub these come with a 302 to the CDN; serving the bytes directly works for every client.
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        range_header = request.headers.get("Range")
        match = _RANGE.fullmatch(range_header.strip()) if range_header and request.method == "GET" else None
        if match is None or not any(match.groups()):
            return _Response(200, content, headers)
        start_text, end_text = match.groups()
        size = len(content)
        if start_text:
            start, end = int(start_text), min(int(end_text) if end_text else size - 1, size - 1)
        else:
            start, end = max(size - int(end_text), 0), size - 1
        if start >= size or start > end:
            return _Response(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        return _Response(
            206, content[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        )

    def _next_link(self, request: _Request, update: Mapping[str, str]) -> str:
        query = {key: values[-1] for key, values in request.query.items()}
        return f'<{self.url}{request.raw_path}?{urlencode({**query, **update})}>; rel="next"'


def _now() -> datetime:
    return datetime.now(UTC)


def _folder_oid(commit: Commit, folder: str) -> str:
    digest = hashlib.sha1()
    for path in sorted(p for p in commit.files if p.startswith(folder + "/")):
        digest.update(f"{path}\0{commit.files[path].oid}\0".encode())
    return digest.hexdigest()


def _last_commit_touching(repo: Repo, commit: Commit, path: str, *, is_file: bool) -> Commit:
    def state(c: Commit) -> object:
        return c.files.get(path) if is_file else _folder_oid(c, path)

    current = state(commit)
    while commit.parent is not None and state(repo.commits[commit.parent]) == current:
        commit = repo.commits[commit.parent]
    return commit


def _parse_commit_payload(body: bytes) -> tuple[dict[str, Any], list[CommitOperation]]:
    """Decode the NDJSON commit payload: one header line, then one line per operation."""
    header: dict[str, Any] | None = None
    operations: list[CommitOperation] = []
    for line_number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = value["content"]
                raw = (
                    base64.b64decode(content, validate=True)
                    if value.get("encoding") == "base64"
                    else content.encode()
                )
                operations.append(AddFile(value["path"], raw))
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256":
                    raise HubError(
                        400, f"Unsupported LFS hash algorithm on line {line_number}: {value['algo']}."
                    )
                operations.append(AddLfsFile(value["path"], value["oid"], value.get("size")))
            elif key == "deletedFile":
                operations.append(DeleteFile(value["path"]))
            elif key == "deletedFolder":
                operations.append(DeleteFolder(value["path"]))
            else:
                raise HubError(400, f"Unknown commit operation {key!r} on line {line_number}.")
        except (json.JSONDecodeError, KeyError, TypeError, binascii.Error) as error:
            raise HubError(400, f"Malformed commit payload on line {line_number}: {error!r}") from error
    if header is None:
        raise HubError(400, "Commit payload has no header line.")
    if not header.get("summary"):
        raise HubError(400, "Commit summary is required.")
    return header, operations


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # don't wait for idle keep-alive connections on shutdown

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], emulator: HubEmulator
    ):
        self.emulator = emulator
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response carries a Content-Length
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK add ~40 ms per request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; `HubEmulator.requests` is the log."""

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _handle(self) -> None:
        emulator = self.server.emulator
        body = self._read_body()
        split = urlsplit(self.path)
        segments = [unquote(segment) for segment in split.path.split("/")[1:]]
        decoded_path = unquote(split.path)
        request = _Request(
            method=self.command,
            raw_path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
            token=_bearer_token(self.headers.get("Authorization")),
        )
        route = emulator._route(self.command, segments)
        record = emulator._record(self.command, decoded_path, split.query, self.headers, route=route)
        fault = emulator._take_fault(self.command, decoded_path)
        if fault is not None and not fault.after_handling:
            if fault.drop_connection:
                return self._drop(record)
            response = _error(
                HubError(fault.status, f"Injected fault: HTTP {fault.status}.", headers=fault.headers)
            )
        else:
            response = emulator._dispatch(route, request)
            if fault is not None:
                return self._drop(record)
        record.status = response.status
        self.send_response(response.status)
        for name, value in {**response.headers, "Content-Length": str(len(response.body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self, record: RecordedRequest) -> None:
        record.dropped = True
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
