"""What a release uploads, and how it differs from a Hub revision. Pure: no network.

Content is compared by hash, never by size or date: an LFS file by its sha256, a regular file by its git
blob id (``git hash-object``), whichever form the Hub reports for the remote file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from release._io import CHUNK_SIZE, attrs_dict, folder_files
from release.errors import PublishError, UsageError

if TYPE_CHECKING:
    from release.verify.report import VerificationReport

KEEP_REMOTE = frozenset({".gitattributes"})  # the Hub's LFS rules: never deleted, never compared

# Written into the folder after verification (the card, SHA256SUMS and the signature over the finished folder),
# so the report's file map cannot vouch for them: neither required nor compared. Every other file must match
# the map exactly, both ways.
WRITTEN_AFTER_VERIFICATION = ("README.md", ".eval_results/", "SHA256SUMS", "model.sig")

FileAction = Literal["add", "replace", "unchanged", "delete"]


@dataclass(frozen=True)
class LocalFile:
    """One file of the release folder."""

    path: str  # relative, with "/" separators: the path in the repo
    size: int
    sha256: str  # what the Hub reports for an LFS file
    git_oid: str  # git blob sha1: what the Hub reports for a regular file
    mtime_ns: int | None = None  # when it was hashed: a later change shows without hashing it again


@dataclass(frozen=True)
class RemoteFile:
    """One file of a Hub revision, as the tree listing reports it."""

    path: str
    size: int
    git_oid: str  # blob id of the content (regular file) or of the pointer file (LFS)
    lfs_sha256: str | None = None  # set for LFS files

    def same_content(self, local: LocalFile) -> bool:
        if self.lfs_sha256 is not None:
            return self.lfs_sha256 == local.sha256
        return self.git_oid == local.git_oid


@dataclass(frozen=True)
class PlannedFile:
    path: str
    action: FileAction
    size: int  # bytes of the local file; of the remote file for a delete


@dataclass(frozen=True)
class ReleaseFolder:
    """A complete, verified release folder and the verification report it passed."""

    path: Path
    files: dict[str, LocalFile]  # sorted by path
    report: VerificationReport


def hash_file(path: Path, rel: str) -> LocalFile:
    """Size, sha256 and git blob id (``git hash-object``: sha1 of ``blob <size>\\0`` + content), in one read."""
    stat = path.stat()
    sha256, size = hashlib.sha256(), stat.st_size
    sha1 = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            sha256.update(chunk)
            sha1.update(chunk)
    return LocalFile(
        path=rel, size=size, sha256=sha256.hexdigest(), git_oid=sha1.hexdigest(), mtime_ns=stat.st_mtime_ns
    )


def is_written_after_verification(path: str) -> bool:
    """True for the card's files, which the verification report cannot list."""
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in WRITTEN_AFTER_VERIFICATION)


def _expected_sha256(entry: object) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    return None


def read_release_folder(folder: str | Path, verification=None) -> ReleaseFolder:
    """Check that ``folder`` is complete and is what verification passed on; hash every file.

    Args:
        folder: The converted model folder (weights, config, modeling code, tokenizer, card, release.json).
        verification: The ``VerificationReport`` (``release run`` hands it over), or the path of its
            ``verification.json``; default: the report beside ``folder``.

    Raises:
        UsageError: The folder or the report is missing or unreadable.
        PublishError: The report did not pass, or the folder's files differ from the ones it verified
            (each difference is named).
    """
    from release.verify.report import VerificationReport, read_report, report_path

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"release folder {folder} does not exist or is not a directory")
    if isinstance(verification, VerificationReport):
        report, source = verification, "the verification report"
    else:
        path = Path(verification) if verification is not None else report_path(folder)
        if not path.is_file():
            raise UsageError(
                f"no verification report at {path}: run `release verify` first (or pass --verification)"
            )
        report, source = read_report(path), f"verification report {path}"
    if not report.verified:
        raise PublishError(f"{source} did not pass; refusing to publish")
    verified = report.model.files
    if not verified:
        raise PublishError(f"{source} has no model.files map of sha256 hashes")

    files = {rel: hash_file(path, rel) for rel, path in folder_files(folder)}  # .cache/ skipped, as in verify
    problems = []
    for path, entry in sorted(verified.items()):
        expected = _expected_sha256(entry)
        if is_written_after_verification(path):
            continue  # a card present when verify ran may have been re-rendered since: neither required nor compared
        if path not in files:
            problems.append(f"missing: {path}")
        elif expected is None:
            problems.append(f"no sha256 recorded for {path}")
        elif files[path].sha256 != expected:
            problems.append(f"changed since verification: {path}")
    problems += [
        f"not verified: {path}"
        for path in files
        if path not in verified and not is_written_after_verification(path)
    ]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise PublishError(
            f"{folder} is not the folder its verification report verified ({shown}); re-run `release verify`"
        )
    if "SHA256SUMS" in files:  # the files are hashed already: no second read
        from release.sign.checksums import check_checksums

        check_checksums(folder, {path: file.sha256 for path, file in files.items()})
    return ReleaseFolder(path=folder, files=files, report=report)


def compute_plan(local: Mapping[str, LocalFile], remote: Mapping[str, RemoteFile]) -> list[PlannedFile]:
    """Each release file as add / replace / unchanged, then each remote file not in the release as delete.

    ``.gitattributes`` on the remote is never deleted; one in the release is uploaded like any file.
    """
    plan = []
    for path, file in local.items():
        theirs = remote.get(path)
        if theirs is None:
            action: FileAction = "add"
        else:
            action = "unchanged" if theirs.same_content(file) else "replace"
        plan.append(PlannedFile(path=path, action=action, size=file.size))
    for path in sorted(set(remote) - set(local) - KEEP_REMOTE):
        plan.append(PlannedFile(path=path, action="delete", size=remote[path].size))
    return plan


def tree_matches(local: Mapping[str, LocalFile], remote: Mapping[str, RemoteFile]) -> bool:
    """True if the remote revision holds exactly the release: same paths, same content (``.gitattributes`` aside)."""
    return all(item.action == "unchanged" for item in compute_plan(local, remote))


def describe_difference(
    local: Mapping[str, LocalFile], remote: Mapping[str, RemoteFile], limit: int = 4
) -> str:
    """A short human list of how a remote revision differs from the release, e.g. for a version conflict."""
    changed = [
        f"{item.action} {item.path}" for item in compute_plan(local, remote) if item.action != "unchanged"
    ]
    if not changed:
        return "no difference"
    more = f", and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


@dataclass(frozen=True)
class ReleasePlan:
    """Where a release goes and what changes there. Printed by ``--dry-run``; returned with every result."""

    repo_id: str
    tag: str
    branch: str  # where the release lands: main, release/vX.Y (an older line) or release/<tag> (a prerelease)
    base_ref: str  # the ref the plan was computed against (for a new branch: main, or the line's newest tag)
    base_commit: str | None  # that head; None if the remote state is unknown
    remote_state: str  # "known", or why the remote could not be read (the plan then assumes an empty repo)
    files: tuple[PlannedFile, ...]
    published_commit: str | None = None  # the commit the tag already points to (an idempotent re-run)
    cleanup: tuple[str, ...] = ()  # leftover staging branches of tagged releases, removed by publishing

    @property
    def changes(self) -> list[PlannedFile]:
        return [item for item in self.files if item.action != "unchanged"]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("add", "replace", "unchanged", "delete"), 0)
        for item in self.files:
            counts[item.action] += 1
        return counts

    def to_dict(self) -> dict:
        return {
            **attrs_dict(
                self,
                "repo_id",
                "tag",
                "branch",
                "base_ref",
                "base_commit",
                "remote_state",
                "published_commit",
            ),
            "cleanup": list(self.cleanup),
            "files": [{"path": f.path, "action": f.action, "size": f.size} for f in self.files],
        }

    def format_lines(self) -> list[str]:
        """The human plan: destination, then one line per file with its action and size."""
        lines = [f"repo:   {self.repo_id}", f"branch: {self.branch}", f"tag:    {self.tag}"]
        if self.remote_state != "known":
            lines.append(f"remote state unknown: {self.remote_state}; planned against an empty repo")
        elif self.base_commit:
            lines.append(f"base:   {self.base_ref} at {self.base_commit[:12]}")
        lines += [f"cleanup: delete {branch} (its release is tagged)" for branch in self.cleanup]
        if self.published_commit:
            lines.append(f"already published at {self.published_commit[:12]}: nothing to do")
            return lines
        width = max((len(f.path) for f in self.files), default=0)
        lines += [f"  {f.action:<9} {f.path:<{width}}  {format_size(f.size)}" for f in self.files]
        c = self.counts()
        lines.append(
            f"{c['add']} to add, {c['replace']} to replace, {c['delete']} to delete, {c['unchanged']} unchanged"
        )
        return lines


def format_size(size: int) -> str:
    """Bytes, plus a human form from 1 kB up: ``1234567 B (1.2 MB)``."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size} B ({size / factor:.1f} {unit})"
    return f"{size} B"
