"""In-memory git-like storage behind the Hub emulator: repos, immutable commits, refs and blobs.

Nothing here knows about HTTP. Operations raise `HubError`, which carries the status code and the
`X-Error-Code` the real Hub would answer with; the server turns it into a response.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

import yaml

REPO_TYPES = ("model", "dataset", "space")

# The Hub refuses regular (non-LFS) files above 10 MiB and tells the client to use LFS for them.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# The `.gitattributes` the Hub writes in the initial commit of every new model repo.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z",
        "*.arrow",
        "*.bin",
        "*.bz2",
        "*.ckpt",
        "*.ftz",
        "*.gz",
        "*.h5",
        "*.joblib",
        "*.lfs.*",
        "*.mlmodel",
        "*.model",
        "*.msgpack",
        "*.npy",
        "*.npz",
        "*.onnx",
        "*.ot",
        "*.parquet",
        "*.pb",
        "*.pickle",
        "*.pkl",
        "*.pt",
        "*.pth",
        "*.rar",
        "*.safetensors",
        "saved_model/**/*",
        "*.tar.*",
        "*.tar",
        "*.tflite",
        "*.tgz",
        "*.wasm",
        "*.xz",
        "*.zip",
        "*.zst",
        "*tfevents*",
    )
)

# Same pattern huggingface_hub's repocard module uses to find the metadata block of a README.
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
_REF_NAME_FORBIDDEN = re.compile(r"[\x00-\x20~^:?*\[\\\x7f]")


class HubError(Exception):
    """An error the emulated Hub answers with: HTTP status, message and optional `X-Error-Code`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = dict(headers or {})


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob, as the Hub reports it in `blobId` / tree `oid` / the `ETag` of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree."""

    sha256: str  # hash of the content; key into the blob store
    size: int  # size of the content in bytes
    lfs: bool  # stored as an LFS object (the git tree then holds a pointer file)
    oid: str  # git blob id: of the content for regular files, of the pointer file for LFS files

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot: the full tree, not a diff."""

    sha: str
    parent: str | None
    title: str
    description: str
    author: str
    created_at: datetime
    files: Mapping[str, FileEntry]  # path -> entry; read-only


@dataclass(frozen=True)
class Tag:
    target: str  # commit sha
    message: str | None


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    tags: dict[str, Tag] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)  # sha -> commit (every commit ever made)


# Commit operations, as decoded from the NDJSON payload of `POST /api/{type}s/{repo}/commit/{rev}`.
@dataclass(frozen=True)
class AddFile:
    path: str
    content: bytes


@dataclass(frozen=True)
class AddLfsFile:
    path: str
    sha256: str
    size: int | None  # absent when the client copies an LFS file


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


CommitOperation = AddFile | AddLfsFile | DeleteFile | DeleteFolder


def readme_metadata_errors(readme: str) -> list[str]:
    """Why the Hub would reject this README's YAML front matter; empty if it is acceptable."""
    if not readme.lstrip().startswith("---"):
        return []
    match = _YAML_BLOCK.search(readme)
    if match is None:
        return ["The YAML metadata block of README.md is not closed by a '---' line."]
    try:
        metadata = yaml.safe_load(match.group(2))
    except yaml.YAMLError as error:
        return [f"Invalid YAML in README.md metadata: {error}"]
    if metadata is not None and not isinstance(metadata, dict):
        return [f"README.md metadata must be a YAML mapping, got {type(metadata).__name__}."]
    return []


def readme_metadata(readme: str) -> dict | None:
    match = _YAML_BLOCK.search(readme)
    if match is None or readme_metadata_errors(readme):
        return None
    metadata = yaml.safe_load(match.group(2))
    return metadata if isinstance(metadata, dict) else None


def validate_ref_name(name: str, kind: str) -> None:
    """Reject names git (and so the Hub) would refuse for a branch or a tag."""
    bad = (
        not name
        or name.startswith(("/", "-", "refs/"))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "//" in name
        or "@{" in name
        or name == "@"
        or _REF_NAME_FORBIDDEN.search(name) is not None
        or any(part.startswith(".") for part in name.split("/"))
    )
    if bad:
        raise HubError(400, f"Invalid {kind} name: {name!r}.")


def _validate_path_in_repo(path: str) -> str:
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or parts[0] == ".git"
    ):
        raise HubError(400, f"Invalid path in repo: {path!r}.")
    return path


def _lfs_patterns(gitattributes: bytes | None) -> list[str]:
    if gitattributes is None:
        return []
    patterns = []
    for line in gitattributes.decode(errors="replace").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _matches_gitattributes(path: str, pattern: str) -> bool:
    # gitattributes: a pattern without a slash matches the file name at any depth.
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern.lstrip("/"))


class HubStore:
    """All repos and blobs of one emulator. Every public method is atomic (one re-entrant lock)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._blobs: dict[str, bytes] = {}  # sha256 hex -> content
        self._commit_counter = 0

    # -- blobs -------------------------------------------------------------------------------------

    def put_blob(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        with self.lock:
            self._blobs.setdefault(sha256, content)
        return sha256

    def has_blob(self, sha256: str) -> bool:
        with self.lock:
            return sha256 in self._blobs

    def blob(self, sha256: str) -> bytes:
        with self.lock:
            return self._blobs[sha256]

    def blobs(self) -> dict[str, bytes]:
        with self.lock:
            return dict(self._blobs)

    # -- repos -------------------------------------------------------------------------------------

    def repos(self) -> list[Repo]:
        with self.lock:
            return list(self._repos.values())

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, now: datetime) -> Repo:
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type!r}.")
        namespace, _, name = repo_id.partition("/")
        if not namespace or not name or "/" in name or not re.fullmatch(r"[\w.\-]+", namespace + name):
            raise HubError(400, f"Invalid repo id: {repo_id!r}. Expected 'namespace/name'.")
        with self.lock:
            if (repo_type, repo_id) in self._repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}.")
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=now)
            attributes = DEFAULT_GITATTRIBUTES.encode()
            initial_files = {".gitattributes": self._regular_entry(attributes)}
            initial = self._new_commit(repo, None, initial_files, "initial commit", "", "system", now)
            repo.branches["main"] = initial.sha
            self._repos[(repo_type, repo_id)] = repo
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            if self._repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, f"Repository {repo_id} not found.", error_code="RepoNotFound")

    def get_repo(self, repo_type: str, repo_id: str, *, authorized: bool) -> Repo:
        """The repo, or the error the Hub gives for a missing repo (also for a private repo without a token)."""
        with self.lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            status = 401 if not authorized else 404
            raise HubError(status, "Repository not found", error_code="RepoNotFound")
        return repo

    # -- revisions ---------------------------------------------------------------------------------

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch, then a tag, then a full 40-hex commit sha, like the Hub."""
        with self.lock:
            if revision in repo.branches:
                return repo.commits[repo.branches[revision]]
            if revision in repo.tags:
                return repo.commits[repo.tags[revision].target]
            if revision in repo.commits:
                return repo.commits[revision]
        raise HubError(404, f"Invalid rev id: {revision}", error_code="RevisionNotFound")

    def history(self, repo: Repo, revision: str) -> list[Commit]:
        """First-parent history from `revision`, newest first."""
        with self.lock:
            commit: Commit | None = self.resolve(repo, revision)
            chain = []
            while commit is not None:
                chain.append(commit)
                commit = repo.commits[commit.parent] if commit.parent else None
            return chain

    def create_branch(self, repo: Repo, branch: str, *, starting_point: str | None) -> None:
        validate_ref_name(branch, "branch")
        with self.lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            if branch in repo.tags:
                raise HubError(
                    400, f"A tag named {branch!r} already exists; refusing an ambiguous branch name."
                )
            repo.branches[branch] = self.resolve(repo, starting_point or "main").sha

    def delete_branch(self, repo: Repo, branch: str) -> None:
        with self.lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", error_code="RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch.")
            del repo.branches[branch]

    def create_tag(self, repo: Repo, tag: str, *, revision: str, message: str | None) -> None:
        validate_ref_name(tag, "tag")
        with self.lock:
            target = self.resolve(repo, revision).sha
            if tag in repo.tags:
                raise HubError(409, f"Tag {tag!r} already exists.")
            if tag in repo.branches:
                raise HubError(400, f"A branch named {tag!r} already exists; refusing an ambiguous tag name.")
            repo.tags[tag] = Tag(target=target, message=message)

    def delete_tag(self, repo: Repo, tag: str) -> None:
        with self.lock:
            if tag not in repo.tags:
                raise HubError(404, f"Invalid rev id: {tag}", error_code="RevisionNotFound")
            del repo.tags[tag]

    # -- uploads and commits -----------------------------------------------------------------------

    def upload_mode(self, repo: Repo, revision: str, *, path: str, size: int, sample: bytes) -> str:
        """Whether the Hub wants a file as an LFS object or as a regular git blob."""
        files = self.resolve(repo, revision).files
        attributes = files.get(".gitattributes")
        patterns = _lfs_patterns(self.blob(attributes.sha256) if attributes else None)
        if size > LFS_SIZE_THRESHOLD or b"\x00" in sample:
            return "lfs"
        return "lfs" if any(_matches_gitattributes(path, pattern) for pattern in patterns) else "regular"

    def commit(
        self,
        repo: Repo,
        branch: str,
        operations: Iterable[CommitOperation],
        *,
        title: str,
        description: str,
        author: str,
        now: datetime,
        parent_commit: str | None = None,
    ) -> Commit:
        """Apply `operations` on top of `branch` and move the branch to the new commit."""
        with self.lock:
            if branch not in repo.branches:
                if branch in repo.tags or branch in repo.commits:
                    raise HubError(400, f"Can only commit to a branch, not to {branch!r}.")
                raise HubError(404, f"Invalid rev id: {branch}", error_code="RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            if parent_commit is not None and not head.sha.startswith(parent_commit.lower()):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            readme_changed = False
            for operation in operations:
                path = _validate_path_in_repo(operation.path.rstrip("/") or operation.path)
                if isinstance(operation, AddFile):
                    if len(operation.content) > LFS_SIZE_THRESHOLD:
                        raise HubError(
                            400,
                            f"Your push was rejected because it contains files larger than 10 MiB: {path}."
                            " Please use https://git-lfs.github.com/ to store large files.",
                        )
                    self.put_blob(operation.content)
                    files[path] = self._regular_entry(operation.content)
                    readme_changed |= path == "README.md"
                elif isinstance(operation, AddLfsFile):
                    if operation.sha256 not in self._blobs:
                        raise HubError(
                            400,
                            "Your push was rejected because an LFS pointer pointed to a file that does not exist."
                            f" Offending file: {path}",
                        )
                    size = len(self._blobs[operation.sha256])
                    if operation.size is not None and operation.size != size:
                        raise HubError(
                            400, f"LFS object size mismatch for {path}: {operation.size} != {size}."
                        )
                    oid = git_blob_oid(lfs_pointer(operation.sha256, size))
                    files[path] = FileEntry(sha256=operation.sha256, size=size, lfs=True, oid=oid)
                    readme_changed |= path == "README.md"
                elif isinstance(operation, DeleteFile):
                    if files.pop(path, None) is None:
                        raise HubError(
                            404, f"A file with this name doesn't exist: {path}", error_code="EntryNotFound"
                        )
                elif isinstance(operation, DeleteFolder):
                    doomed = [existing for existing in files if existing.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"No folder with this name: {path}", error_code="EntryNotFound")
                    for existing in doomed:
                        del files[existing]
            if readme_changed:
                readme = self._blobs[files["README.md"].sha256].decode("utf-8", errors="replace")
                if errors := readme_metadata_errors(readme):
                    raise HubError(
                        400, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors)
                    )
            commit = self._new_commit(repo, head.sha, files, title, description, author, now)
            repo.branches[branch] = commit.sha
            return commit

    def _regular_entry(self, content: bytes) -> FileEntry:
        sha256 = self.put_blob(content)
        return FileEntry(sha256=sha256, size=len(content), lfs=False, oid=git_blob_oid(content))

    def _new_commit(
        self,
        repo: Repo,
        parent: str | None,
        files: dict[str, FileEntry],
        title: str,
        description: str,
        author: str,
        now: datetime,
    ) -> Commit:
        self._commit_counter += 1
        digest = hashlib.sha1()
        for part in (parent or "", title, description, str(self._commit_counter)):
            digest.update(part.encode() + b"\0")
        for path in sorted(files):
            digest.update(f"{path}\0{files[path].oid}\0".encode())
        commit = Commit(
            sha=digest.hexdigest(),
            parent=parent,
            title=title,
            description=description,
            author=author,
            created_at=now,
            files=MappingProxyType(dict(files)),
        )
        repo.commits[commit.sha] = commit
        return commit
