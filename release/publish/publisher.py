"""Publish a verified release folder to the Hub as one commit and a tag that points at verified content.

``publish_release`` is the library function behind ``release publish`` and the last step of ``release run``.
Where a release lands: see ``target_branch`` (``main`` always holds the newest stable release). The steps:

1. Offline checks: the version parses, and the folder is exactly what ``verification.json`` passed on.
2. Tag check: an existing tag is judged by its commit's tree: same content is success with nothing written
   (``created=False``), different content a ``VersionConflictError``.
3. Plan against the target branch head ``B`` (for a new branch: ``main`` for a prerelease, the newest lower
   stable tag for an older line): add / replace / unchanged, every other remote file deleted (never
   ``.gitattributes``).
4. Staging: ``release-staging/<tag>`` is created at ``B`` and the plan committed there in one ``create_commit``
   with ``parent_commit=B`` (the LFS upload); the staged commit ``S`` must hold exactly the folder's files.
5. Checking: ``S`` is downloaded into a fresh cache and loaded with ``trust_remote_code=True``, as users load
   it, and must reproduce the report's generations (else ``VerificationError``; an unreachable Hub is a
   ``HubUnavailableError``); nothing is tagged and the target branch is untouched until then.
6. Landing: the Hub has no fast-forward, so the target branch gets the same operations with ``parent_commit=B``,
   large files copied on the Hub from ``S``; the landed tree is re-read and compared before tagging. A new
   target branch is simply created at ``S``.
7. Tagging, then the staging branch is deleted (also on failure), then a requested visibility change is
   applied, so a failed release never makes a repo public.

Both commits name their parent: a branch that moved (HTTP 412, or a head that is not ours after a lost response)
is a ``ConcurrentPushError``. Every Hub call is retried on transient failures within one wait budget per run
(``release.publish.retry``); a commit is not retried blindly: the head is re-read (unchanged: retry; our tree:
the response was lost; else: a concurrent push). Running out of retries is a ``HubUnavailableError`` carrying
the command that completes the release; a re-run after a death between steps 6 and 7 checks and tags the
landed commit without a new commit. A staging branch that cannot be deleted is reported as "cleanup pending"
and removed by the next publish to the repo.

Content is pinned: every commit sends the bytes hashed when the folder was checked (small files from memory,
LFS files by their measured sha256, refused if their size or mtime changed), so a folder touched mid-release
cannot put anything but the checked tree on the target branch. A dry run needs no token and writes nothing;
it plans against an empty repo, with the reason, when the remote cannot be read. Every message built from an
exception is redacted (``release.auth``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from release._io import attrs_dict, write_text_atomic
from release.auth import check_oidc_resource, read_token, redact, resolve_token
from release.errors import (
    ConcurrentPushError,
    CredentialsError,
    HubUnavailableError,
    PublishError,
    ReleaseError,
    UsageError,
    VerificationError,
    VersionConflictError,
)
from release.publish.plan import (
    LocalFile,
    PlannedFile,
    ReleaseFolder,
    ReleasePlan,
    RemoteFile,
    compute_plan,
    describe_difference,
    is_written_after_verification,
    read_release_folder,
    tree_matches,
)
from release.publish.retry import RetryPolicy, backoff, call_with_retry, describe, http_status, is_transient
from release.versions import PRERELEASE_BRANCH_PREFIX, STAGING_BRANCH_PREFIX, Version, parse_version

logger = logging.getLogger("release.publish")

# Files up to this size are sent from memory (the Hub's regular-file limit).
IN_MEMORY_LIMIT = 10 * 1024 * 1024

# (repo_id, commit sha) -> failure lines, empty when the commit loads from the Hub and generates as recorded;
# the HubUnavailableError or PublishError of a failed download is not a verification failure.
PostUploadCheck = Callable[[str, str], list[str]]
Echo = Callable[[str], None]  # receives the progress lines (staging, checking, landing, tagging, warnings)


@dataclass(frozen=True)
class CleanupPending:
    """A staging branch this run could not delete; the next publish to the repo removes it."""

    branch: str
    error: str  # why the delete failed (redacted)

    def warning(self, repo_id: str) -> str:
        return (
            f"cleanup pending: branch {self.branch} of {repo_id} could not be deleted ({self.error}); the next "
            f"`release publish` to {repo_id} removes it (or delete it on the Hub)"
        )


@dataclass(frozen=True)
class PublishResult:
    """What ``publish_release`` did (or, for a dry run, would do)."""

    repo_id: str
    version: str
    tag: str
    branch: str  # main, release/vX.Y for a patch to an older line, or release/<tag> for a prerelease
    commit: str | None  # the commit the tag points to; None for a dry run
    revision_url: str  # the tag's tree on the Hub, e.g. https://huggingface.co/org/model/tree/v1.2.0
    created: bool  # False for an idempotent re-run (tag already there with this content) and for a dry run
    plan: ReleasePlan
    dry_run: bool = False
    cleaned_up: tuple[str, ...] = ()  # leftover staging branches of tagged releases this run deleted
    cleanup_pending: tuple[CleanupPending, ...] = ()  # staging branches it could not delete

    @property
    def warnings(self) -> list[str]:
        """One line per thing left undone that the user should know about (printed as warnings)."""
        return [item.warning(self.repo_id) for item in self.cleanup_pending]

    def to_dict(self) -> dict:
        return {
            **attrs_dict(
                self, "repo_id", "version", "tag", "branch", "commit", "revision_url", "created", "dry_run"
            ),
            "plan": self.plan.to_dict(),
            "cleaned_up": list(self.cleaned_up),
            "cleanup_pending": [{"branch": c.branch, "error": c.error} for c in self.cleanup_pending],
            "warnings": self.warnings,
        }

    def write_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON atomically (temp file, then rename); redacted like every output."""
        return write_text_atomic(
            Path(path), redact(json.dumps(self.to_dict(), indent=2, sort_keys=True)) + "\n"
        )


def publish_release(
    folder: str | Path,
    *,
    repo_id: str,
    version: str | Version,
    private: bool | None = None,
    dry_run: bool = False,
    commit_message: str | None = None,
    verification=None,
    post_upload_check: PostUploadCheck | None = None,
    retry: RetryPolicy | None = None,
    echo: Echo | None = None,
) -> PublishResult:
    """Publish ``folder`` to ``repo_id`` as ``version``: one commit, checked from the Hub, then tagged.

    Args:
        folder: The release folder (converted model, tokenizer, card, ``release.json``).
        repo_id: ``OWNER/NAME``; the model repo is created if missing.
        version: ``vX.Y.Z`` (``main``, or ``release/vX.Y`` when lower than the newest stable tag) or
            ``vX.Y.Z-PRERELEASE`` (own branch ``release/<tag>``).
        private: Visibility: True/False sets it (a new repo is created that way; an existing one is changed
            after the tag is in place); None leaves it as it is (a new repo gets the Hub's default).
        dry_run: Compute and return the plan only; needs no token, writes nothing, works offline.
        commit_message: Summary of the release commit (default ``Release <tag>``).
        verification: The ``VerificationReport``, or the path of its ``verification.json``; default: the
            report beside ``folder``.
        post_upload_check: Replaces the generation check of the uploaded commit (tests); by default the
            commit is downloaded under ``retry`` and checked with ``release.verify.check_generation_against_report``.
        retry: Retry policy for Hub calls.
        echo: Receives one line per step as it starts (staging, checking, landing, tagging) and warnings.

    Raises:
        UsageError: Bad version or repo id, missing folder or report (before any network call).
        CredentialsError: ``HF_OIDC_RESOURCE`` names another repo than ``repo_id`` (before any network call).
        PublishError: The folder is not what was verified, no credentials, or a Hub call failed for good.
        HubUnavailableError: The Hub could not be reached even after the retries; ``rerun`` is the command
            that completes the release.
        VersionConflictError: The tag exists and points at different content.
        ConcurrentPushError: The target branch moved while the release was being committed.
        VerificationError: The uploaded commit does not reproduce the recorded generations; nothing was tagged.
    """
    parsed = version if isinstance(version, Version) else parse_version(version)
    _validate_repo_id(repo_id)
    release = read_release_folder(folder, verification)
    check_oidc_resource(repo_id)
    policy = retry or RetryPolicy()
    if dry_run:
        return _Publisher(repo_id, parsed, release, policy, token=read_token(), echo=echo).dry_run()
    resolve_token()  # fail early and clearly without credentials; the client re-resolves (OIDC refresh)
    check = post_upload_check or generation_check(release, policy)
    publisher = _Publisher(repo_id, parsed, release, policy, token=None, echo=echo)
    try:
        return publisher.publish(private=private, commit_message=commit_message, check=check)
    except HubUnavailableError as exc:  # carries the `release publish` command that completes the release
        args = ["release", "publish", str(folder), "--repo-id", repo_id, "--version", parsed.tag]
        if private is not None:
            args.append("--private" if private else "--public")
        if commit_message is not None:
            args += ["--commit-message", commit_message]
        if isinstance(verification, (str, Path)):
            args += ["--verification", str(verification)]
        exc.rerun = shlex.join(args)
        raise


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"invalid --repo-id {repo_id!r}: {exc}") from None
    if repo_id.count("/") != 1:
        raise UsageError(f"invalid --repo-id {repo_id!r}: expected OWNER/NAME")


def hub_call(what: str, func: Callable, *, policy: RetryPolicy, consequence: str = "nothing was tagged"):
    """``func`` under ``policy``; a failure for good is one line naming ``what`` and ``consequence``, raised
    from the Hub's error: ``HubUnavailableError`` if only the Hub was unreachable, else ``PublishError``."""
    try:
        return call_with_retry(func, what=what, policy=policy)
    except ReleaseError:  # a retry budget that ran out: already one line
        raise
    except Exception as exc:
        if is_transient(exc):
            raise HubUnavailableError(
                f"{what} failed: {describe(exc)} ({policy.attempts} attempts; the Hub could not be reached, "
                f"nothing is wrong with the release); {consequence}"
            ) from exc
        raise PublishError(f"{what} failed: {describe(exc)}; {consequence}") from exc


def download_commit(repo_id: str, commit: str, *, cache_dir: Path, policy: RetryPolicy) -> Path:
    """``snapshot_download`` of ``repo_id`` at ``commit`` into ``cache_dir``, retried under ``policy``.

    A retry resumes: files already in ``cache_dir`` are not fetched again.

    Raises:
        HubUnavailableError: The Hub could not be reached, even after the retries.
        PublishError: The download failed for another reason (e.g. the commit or the repo is not readable).
    """
    from huggingface_hub import snapshot_download

    return Path(
        hub_call(
            f"downloading {repo_id}@{commit[:12]}",
            lambda: snapshot_download(repo_id, revision=commit, cache_dir=cache_dir, token=read_token()),
            policy=policy,
        )
    )


def generation_check(release: ReleaseFolder, policy: RetryPolicy) -> PostUploadCheck:
    """The gate of ``release verify`` repeated on the uploaded commit, from the Hub, with the recorded tokens."""
    # Card files are written after verification: the report cannot vouch for them, but they are uploaded too.
    card_files = tuple(path for path in release.files if is_written_after_verification(path))
    files = release.report.model.files
    kept = {path: sha for path, sha in files.items() if not is_written_after_verification(path)}
    report = dataclasses.replace(release.report, model=dataclasses.replace(release.report.model, files=kept))

    def check(repo_id: str, commit: str) -> list[str]:
        from release.verify.runner import ALLOWED_EXTRA_FILES, check_generation_against_report

        extra = (*ALLOWED_EXTRA_FILES, *card_files)
        # Download first, with retries, so a flaky network is never mistaken for a broken model; then load the
        # snapshot (a local folder: no further Hub requests) the way users load it, in a fresh modules cache.
        with tempfile.TemporaryDirectory(prefix="release-publish-check-") as cache:
            snapshot = download_commit(repo_id, commit, cache_dir=Path(cache), policy=policy)
            failures = check_generation_against_report(
                snapshot, revision=None, report=report, allowed_extra_files=extra
            )
            return failures or _card_snippet_failures(snapshot, report=report.to_dict(), commit=commit)

    return check


def _card_snippet_failures(snapshot: Path, *, report: Mapping, commit: str) -> list[str]:
    """The uploaded card's own code, run verbatim against the uploaded files: what a user runs first."""
    from release.verify.snippet import card_has_code, check_card_snippet

    if not (snapshot / "README.md").is_file() or not card_has_code(snapshot):
        # A card of the user's own template with no code: nothing for a user to run verbatim.
        logger.info("the uploaded card has no python block calling from_pretrained; no card code to run")
        return []
    try:
        result = check_card_snippet(snapshot, report=report, commit=commit)
    except VerificationError as exc:
        return [f"card_snippet: {exc}"]
    return [f"card_snippet: {line}" for line in result.failures]


def _stable_key(version: Version) -> tuple[int, int, int]:
    return (version.major, version.minor, version.patch)


def _stable_tags(tags: Mapping[str, str]) -> dict[str, tuple[int, int, int]]:
    """The ``_stable_key`` of each stable release tag; other tags (prereleases, anything else) are ignored."""
    parsed = {}
    for name in tags:
        try:
            version = parse_version(name)
        except UsageError:
            continue
        if not version.is_prerelease:
            parsed[name] = _stable_key(version)
    return parsed


def target_branch(version: Version, tags: Mapping[str, str]) -> str:
    """Where ``version`` lands: its prerelease branch ``release/<tag>``, ``main``, or, for a stable version lower
    than the newest stable tag, its line's ``release/vX.Y``, so that ``main`` holds the newest stable release."""
    if version.is_prerelease:
        return version.branch
    if any(_stable_key(version) < other for other in _stable_tags(tags).values()):
        return f"{PRERELEASE_BRANCH_PREFIX}v{version.major}.{version.minor}"
    return "main"


class _Publisher:
    """One release of one folder to one repo; every Hub call goes through ``_call`` (retry + redaction)."""

    def __init__(
        self,
        repo_id: str,
        version: Version,
        release: ReleaseFolder,
        policy: RetryPolicy,
        *,
        token: str | bool | None,
        echo: Echo | None = None,
    ):
        from huggingface_hub import HfApi

        self.repo_id = repo_id
        self.version = version
        self.release = release
        self.local: dict[str, LocalFile] = release.files
        self.policy = policy
        self.api = HfApi(token=token)
        self.echo = echo
        self.target = version.branch  # decided from the tags once they are read
        self.cleaned_up: list[str] = []
        self.cleanup_pending: list[CleanupPending] = []

    def _say(self, line: str) -> None:
        logger.info(line)
        if self.echo is not None:
            self.echo(redact(line))

    # -- the two entry points ----------------------------------------------------------------------

    def dry_run(self) -> PublishResult:
        """The plan against what can be read; an unreadable remote is planned as empty, with the reason."""
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        v = self.version
        try:  # one attempt: offline, a dry run should answer at once rather than back off for a minute
            branches, tags = self._refs(policy=RetryPolicy(attempts=1))
        except PublishError as exc:
            cause = exc.__cause__
            if isinstance(cause, RepositoryNotFoundError):
                state = "the repo does not exist yet (or is private and no token is configured)"
            elif isinstance(cause, HfHubHTTPError):
                state = f"the Hub answered {describe(cause)}"
            else:  # refused or dropped connection, timeout, HF_HUB_OFFLINE=1
                state = "offline"
            plan = self._plan(
                remote={}, base_ref="main" if v.is_prerelease else v.branch, base=None, state=state
            )
            return self._result(plan, commit=None, created=False, dry_run=True)
        self.target = target_branch(v, tags)
        cleanup = self._stale_staging(branches, tags)
        if v.tag in tags:
            published, plan = self._published(tags, cleanup)
            return self._result(plan, commit=published, created=False, dry_run=True)
        base_ref, base = self._base(branches, tags)
        plan = self._plan(self._tree(base) if base else {}, base_ref=base_ref, base=base, cleanup=cleanup)
        return self._result(plan, commit=None, created=False, dry_run=True)

    def publish(
        self, *, private: bool | None, commit_message: str | None, check: PostUploadCheck
    ) -> PublishResult:
        v = self.version
        existed = self._ensure_repo(private)
        branches, tags = self._refs()
        self.target = target = target_branch(v, tags)
        cleanup = self._stale_staging(branches, tags)
        for branch in cleanup:  # leftovers of earlier runs whose release is tagged: never needed again
            self._say(f"cleanup: deleting {branch} (its release is already tagged)")
            if self._cleanup(branch):
                self.cleaned_up.append(branch)
        if v.tag in tags:
            published, plan = self._published(tags, cleanup)
            self._say(f"{v.tag} is already published at {published[:12]} with this content; nothing to do")
            self._apply_visibility(private, existed)
            return self._result(plan, commit=published, created=False)

        target_exists = target in branches
        base_ref, base = self._base(branches, tags)
        if base is None:  # only for a repo without main, which the Hub never creates
            raise PublishError(f"{self.repo_id} has no branch {base_ref} to release onto")
        plan = self._plan(self._tree(base), base_ref=base_ref, base=base, cleanup=cleanup)
        message = commit_message or f"Release {v.tag}"
        c = plan.counts()
        description = (
            f"Release {v.tag}: {len(self.local)} files ({c['add']} added, {c['replace']} replaced, "
            f"{c['delete']} deleted, {c['unchanged']} unchanged). Published by `release publish` after the "
            "verification gates passed."
        )
        staging = v.staging_branch
        staged = False  # True once this run created the staging branch: it must be gone when the run ends

        try:
            if not plan.changes:
                # The branch already holds exactly this release but it is not tagged (e.g. a run that died
                # after landing): check that commit from the Hub, then tag it. No new commit.
                self._run_check(check, base, where=f"{base_ref} at {base[:12]}", untouched=target)
                if not target_exists:
                    self._say(f"landing: creating branch {target} at {base[:12]}")
                    self._create_branch(target, base)
                final = base
                if staging in branches:  # a leftover of an interrupted run
                    self._cleanup(staging)
            else:
                if staging in branches:  # a leftover of an interrupted run, possibly at an older base
                    self._delete_branch(staging)
                self._say(
                    f"staging: committing {len(plan.changes)} change(s) to {staging} (base {base_ref} at "
                    f"{base[:12]})"
                )
                staged = True  # before the call: a lost response may leave the branch created
                self._create_branch(staging, base)
                commit = self._commit(staging, base, plan.files, message, description)
                self._expect_release_tree(commit, where=f"staged commit {commit[:12]}")
                self._run_check(check, commit, where=f"staged commit {commit[:12]}", untouched=target)
                if target_exists:
                    self._say(f"landing: committing to {target} (parent {base[:12]})")
                    final = self._commit(target, base, plan.files, message, description, copy_from=commit)
                    # Same parent and same operations give the same tree; confirm before anything is tagged.
                    self._expect_release_tree(final, where=f"{target} at {final[:12]}")
                else:
                    self._say(f"landing: creating branch {target} at {commit[:12]}")
                    self._create_branch(target, commit)
                    final = commit
            self._say(f"tagging: {v.tag} at {final[:12]}")
            self._create_tag(v.tag, final)
        except BaseException as exc:  # also KeyboardInterrupt: the CLI promises nothing is left behind
            if staged:
                self._cleanup(staging)
            if isinstance(exc, ReleaseError):
                self._note_cleanup(exc)
            raise
        if staged:
            self._cleanup(staging)
        self._apply_visibility(private, existed)
        return self._result(plan, commit=final, created=True)

    # -- the release steps -------------------------------------------------------------------------

    def _published(self, tags: Mapping[str, str], cleanup: tuple[str, ...]) -> tuple[str, ReleasePlan]:
        """The commit the tag already points to (checked to hold this release) and the plan against it."""
        tag = self.version.tag
        published = self._existing_tag(tags[tag])
        plan = self._plan(
            self._tree(published), base_ref=tag, base=published, published=published, cleanup=cleanup
        )
        return published, plan

    def _base(self, branches: Mapping[str, str], tags: Mapping[str, str]) -> tuple[str, str | None]:
        """The ref the release is planned against, and its commit: the target branch if it exists, else where
        a new target branch starts (``main`` for a prerelease; for an older line, its newest lower stable tag)."""
        if self.target in branches:
            return self.target, branches[self.target]
        if self.target != "main" and not self.version.is_prerelease:
            lower = [
                (key, name) for name, key in _stable_tags(tags).items() if key < _stable_key(self.version)
            ]
            if lower:
                name = max(lower)[1]
                return name, tags[name]
        return "main", branches.get("main")

    def _stale_staging(self, branches: Mapping[str, str], tags: Mapping[str, str]) -> tuple[str, ...]:
        """Staging branches whose release is tagged: leftovers of runs that could not delete them."""
        return tuple(
            branch
            for branch in sorted(branches)
            if branch.startswith(STAGING_BRANCH_PREFIX) and branch.removeprefix(STAGING_BRANCH_PREFIX) in tags
        )

    def _cleanup(self, branch: str) -> bool:
        """Delete a staging branch, patiently; True if it is gone, else "cleanup pending" is recorded."""
        try:
            self._delete_branch(branch, policy=self.policy.patient())
            return True
        except PublishError as exc:
            pending = CleanupPending(branch=branch, error=describe(exc.__cause__ or exc))
            self.cleanup_pending.append(pending)
            self._say(f"warning: {pending.warning(self.repo_id)}")
            return False

    def _note_cleanup(self, exc: ReleaseError) -> None:
        """Add the cleanup that is still pending to the error the run ends with (its one line says it all)."""
        if self.cleanup_pending and exc.args and isinstance(exc.args[0], str):
            pending = ", ".join(item.branch for item in self.cleanup_pending)
            exc.args = (
                f"{exc.args[0]}; cleanup pending: {pending} (the next publish removes it)",
                *exc.args[1:],
            )

    def _run_check(self, check: PostUploadCheck, commit: str, *, where: str, untouched: str) -> None:
        self._say(f"checking: {where} from the Hub (download, then load with trust_remote_code and generate)")
        try:
            failures = list(check(self.repo_id, commit))
        except (PublishError, CredentialsError) as exc:  # the Hub or the credentials failed, not the model
            if isinstance(exc, HubUnavailableError):
                exc.args = (f"could not check {where} from the Hub: {exc}; {untouched} was not changed",)
            raise
        except ReleaseError as exc:
            failures = [redact(str(exc)), *(redact(f) for f in getattr(exc, "failures", []))]
        except Exception as exc:  # a model that cannot even load is a failed check, not a crash
            failures = [f"loading {self.repo_id}@{commit[:12]} failed: {describe(exc)}"]
        if failures:
            raise VerificationError(
                f"{where} does not reproduce the recorded generations: it failed the post-upload check; nothing "
                f"was tagged and {untouched} was not changed",
                [redact(line) for line in failures],
            )

    def _commit(
        self,
        branch: str,
        parent: str,
        files: tuple[PlannedFile, ...],
        message: str,
        description: str,
        *,
        copy_from: str | None = None,
    ) -> str:
        """One guarded commit of ``files`` onto ``branch``, which must still be at ``parent``. Returns its sha.

        With ``copy_from`` (the checked staged commit), large files are copied from it on the Hub. Not retried
        blindly: a dropped response may hide a commit that landed, so after each failure the head is re-read.
        """
        what = f"commit to {branch} of {self.repo_id}"
        for attempt in range(1, self.policy.attempts + 1):
            try:
                info = self.api.create_commit(
                    self.repo_id,
                    self._operations(files, copy_from=copy_from),
                    commit_message=message,
                    commit_description=description,
                    revision=branch,
                    parent_commit=parent,
                )
                return info.oid
            except Exception as exc:
                status = http_status(exc)
                if not is_transient(exc) and status != 412:
                    raise PublishError(f"{what} failed: {describe(exc)}; nothing was tagged") from exc
                head = self._refs()[0].get(branch)
                if head != parent:
                    if head is not None and tree_matches(self.local, self._tree(head)):
                        logger.warning(
                            "%s: the response was lost but the commit landed (%s)", what, head[:12]
                        )
                        return head
                    raise ConcurrentPushError(
                        f"{branch} of {self.repo_id} moved from {parent[:12]} to {(head or 'nothing')[:12]} while "
                        "this release was being committed (someone else pushed); nothing was tagged. Check that "
                        "push, then re-run: the release is planned afresh against the new head"
                    ) from exc
                if status == 412:  # stale parent although the head did not move: report it, don't loop
                    raise ConcurrentPushError(
                        f"{what} was refused: {describe(exc)}; nothing was tagged"
                    ) from exc
                if attempt == self.policy.attempts:
                    raise HubUnavailableError(
                        f"{what} failed after {attempt} attempts: {describe(exc)}; the Hub could not be reached: "
                        f"nothing was tagged and {branch} is unchanged; re-run to complete the release"
                    ) from exc
                backoff(self.policy, exc, attempt, what=what)
        raise AssertionError("unreachable")

    def _operations(self, files: tuple[PlannedFile, ...], *, copy_from: str | None = None) -> list:
        """Fresh operation objects for one commit attempt (huggingface_hub mutates and refuses to reuse them),
        pinned to the hashes the plan was made from (see "Content is pinned" in the module docstring)."""
        from huggingface_hub import CommitOperationAdd, CommitOperationCopy, CommitOperationDelete

        operations: list = []
        for item in files:
            if item.action in ("add", "replace"):
                local, local_path = self.local[item.path], self.release.path / item.path
                changed = PublishError(
                    f"{item.path} changed since the release folder was checked; nothing was tagged. "
                    "Re-run `release verify` on the finished folder, then publish"
                )
                if local.size <= IN_MEMORY_LIMIT:  # hashed from the very bytes that are sent
                    operation = CommitOperationAdd(
                        path_in_repo=item.path, path_or_fileobj=local_path.read_bytes()
                    )
                    if operation.upload_info.sha256.hex() != local.sha256:
                        raise changed
                elif copy_from is not None:  # the object the post-upload check passed, copied on the Hub
                    operation = CommitOperationCopy(
                        src_path_in_repo=item.path, path_in_repo=item.path, src_revision=copy_from
                    )
                else:
                    # huggingface_hub is handed the hash measured when the folder was read instead of reading
                    # the weights again; content swapped without a size or mtime change is caught by the
                    # post-upload check, which hashes what the Hub serves against the report.
                    stat = local_path.stat()
                    if (stat.st_size, stat.st_mtime_ns) != (local.size, local.mtime_ns):
                        raise changed
                    operation = CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=str(local_path))
                    operation.upload_info.sha256 = bytes.fromhex(local.sha256)
                operations.append(operation)
            elif item.action == "delete":
                operations.append(CommitOperationDelete(path_in_repo=item.path))
        return operations

    def _expect_release_tree(self, commit: str, *, where: str) -> None:
        remote = self._tree(commit)
        if not tree_matches(self.local, remote):
            raise PublishError(
                f"{where} does not hold exactly the release ({describe_difference(self.local, remote)}); "
                "nothing was tagged. Was the folder modified during the upload?"
            )

    def _existing_tag(self, commit: str) -> str:
        remote = self._tree(commit)
        if not tree_matches(self.local, remote):
            raise VersionConflictError(
                f"{self.version.tag} is already published in {self.repo_id} at commit {commit} with different "
                f"content ({describe_difference(self.local, remote)}); publish a new version instead"
            )
        return commit

    # -- Hub calls ---------------------------------------------------------------------------------

    def _call(
        self, what: str, func, *, policy: RetryPolicy | None = None, consequence: str = "nothing was tagged"
    ):
        return hub_call(what, func, policy=policy or self.policy, consequence=consequence)

    def _ensure_repo(self, private: bool | None) -> bool:
        """Create the model repo if missing; True if it existed already."""
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            self._call(
                f"reading {self.repo_id}",
                lambda: self.api.repo_info(self.repo_id),
                consequence="nothing was changed",
            )
            return True
        except PublishError as exc:
            if not isinstance(exc.__cause__, RepositoryNotFoundError):
                raise
        self._call(
            f"create repo {self.repo_id}",
            lambda: self.api.create_repo(self.repo_id, repo_type="model", private=private, exist_ok=True),
        )
        logger.info("created %s", self.repo_id)
        return False

    def _apply_visibility(self, private: bool | None, existed: bool) -> None:
        if private is None or not existed:
            return
        info = self._call(f"read {self.repo_id}", lambda: self.api.repo_info(self.repo_id))
        if bool(info.private) != private:
            self._call(
                f"make {self.repo_id} {'private' if private else 'public'}",
                lambda: self.api.update_repo_settings(self.repo_id, private=private),
            )

    def _refs(self, *, policy: RetryPolicy | None = None) -> tuple[dict[str, str], dict[str, str]]:
        refs = self._call(
            f"list refs of {self.repo_id}", lambda: self.api.list_repo_refs(self.repo_id), policy=policy
        )
        return (
            {ref.name: ref.target_commit for ref in refs.branches},
            {ref.name: ref.target_commit for ref in refs.tags},
        )

    def _tree(self, commit: str) -> dict[str, RemoteFile]:
        from huggingface_hub.hf_api import RepoFile

        entries = self._call(
            f"list files of {self.repo_id}@{commit[:12]}",
            lambda: list(self.api.list_repo_tree(self.repo_id, revision=commit, recursive=True)),
        )
        return {
            e.path: RemoteFile(
                path=e.path, size=e.size, git_oid=e.blob_id, lfs_sha256=e.lfs.sha256 if e.lfs else None
            )
            for e in entries
            if isinstance(e, RepoFile)
        }

    def _create_branch(self, branch: str, commit: str) -> None:
        try:
            self._call(
                f"creating branch {branch}",
                lambda: self.api.create_branch(self.repo_id, branch=branch, revision=commit),
            )
        except PublishError as exc:
            # 409 after a retry: our first attempt may have landed. Fine if the branch is where we wanted it.
            if http_status(exc.__cause__) != 409 or self._refs()[0].get(branch) != commit:
                raise

    def _delete_branch(self, branch: str, *, policy: RetryPolicy | None = None) -> None:
        from huggingface_hub.errors import RevisionNotFoundError

        try:
            self._call(
                f"deleting branch {branch}",
                lambda: self.api.delete_branch(self.repo_id, branch=branch),
                policy=policy,
                consequence="the branch is still there",
            )
        except PublishError as exc:  # a retry after a lost response finds the branch gone (404): success
            cause = exc.__cause__
            if not (isinstance(cause, RevisionNotFoundError) or http_status(cause) == 404):
                raise

    def _create_tag(self, tag: str, commit: str) -> None:
        try:
            self._call(
                f"creating tag {tag} at {commit[:12]}",
                lambda: self.api.create_tag(
                    self.repo_id, tag=tag, revision=commit, tag_message=f"Release {tag}"
                ),
                consequence=f"{self.target} holds the release, re-run to check and tag it",
            )
        except PublishError as exc:
            if http_status(exc.__cause__) != 409:
                raise
            # A retry after a lost response, or another run of the same release.
            existing = self._refs()[1].get(tag)
            if existing is None:
                raise
            if existing != commit:
                self._existing_tag(existing)  # raises VersionConflictError if the content differs

    # -- results -----------------------------------------------------------------------------------

    def _plan(
        self,
        remote: dict[str, RemoteFile],
        *,
        base_ref: str,
        base: str | None,
        state: str = "known",
        published: str | None = None,
        cleanup: tuple[str, ...] = (),
    ) -> ReleasePlan:
        return ReleasePlan(
            repo_id=self.repo_id,
            tag=self.version.tag,
            branch=self.target,
            base_ref=base_ref,
            base_commit=base,
            remote_state=state,
            files=tuple(compute_plan(self.local, remote)),
            published_commit=published,
            cleanup=cleanup,
        )

    def _result(
        self, plan: ReleasePlan, *, commit: str | None, created: bool, dry_run: bool = False
    ) -> PublishResult:
        return PublishResult(
            repo_id=self.repo_id,
            version=str(self.version),
            tag=self.version.tag,
            branch=self.target,
            commit=commit,
            revision_url=f"{self.api.endpoint}/{self.repo_id}/tree/{self.version.tag}",
            created=created,
            plan=plan,
            dry_run=dry_run,
            cleaned_up=tuple(self.cleaned_up),
            cleanup_pending=tuple(self.cleanup_pending),
        )
