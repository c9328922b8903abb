"""Publish a verified release folder to the Hub as one commit and a tag that points at verified content.

``publish_release`` is the library function behind ``release publish`` and the last step of ``release run``.

Where a release lands: a stable ``vX.Y.Z`` newer than every stable tag goes to ``main``; a stable version lower
than the newest stable tag (a patch to an older line, e.g. ``v1.0.1`` after ``v1.1.0``) goes to that line's
branch ``release/vX.Y``, so ``main`` always holds the newest stable release; a prerelease ``vX.Y.Z-rc.N``
goes to its own branch ``release/<tag>``. Each is tagged where it lands.

1. Offline checks, before any network call: the version parses, and the folder is exactly what
   ``verification.json`` passed on (``release.publish.plan.read_release_folder``).
2. Tag check: if the tag exists, the tree of the commit it points to is compared with the folder. Same
   content: success, nothing is written (``created=False``). Different content: ``VersionConflictError``
   naming that commit. A tag is judged by its commit, never by its mere existence.
3. Plan against the target branch head ``B`` (for a branch that does not exist yet: ``main``'s head for a
   prerelease, the newest lower stable tag for an older line): every release file is add / replace /
   unchanged, every other remote file is deleted (``.gitattributes`` never).
4. Staging: branch ``release-staging/<tag>`` is created at ``B`` and the whole plan is committed there in one
   ``create_commit`` with ``parent_commit=B`` (this is where the LFS objects are uploaded). The staged commit
   ``S`` must hold exactly the folder's files.
5. Checking: ``S`` is downloaded (``snapshot_download`` at the commit, under the same retry policy as every
   other Hub call) into a fresh cache, then loaded from that snapshot with ``trust_remote_code=True`` in a
   fresh modules cache, exactly as users load it, and must reproduce the reference generations recorded in
   the report (``release.verify.check_generation_against_report``). A model that does not reproduce them is
   a ``VerificationError``; a Hub that cannot be reached is a ``HubUnavailableError``. Either way nothing is
   tagged and the target branch was never touched.
6. Landing: the Hub has no fast-forward, so the target branch gets the same operations in one commit with
   ``parent_commit=B``, its large files copied on the Hub from ``S`` (nothing of the weights is read or sent
   again). Same parent + same operations = same tree, and that tree is re-read and compared with the folder
   before anything is tagged. A branch
   that does not exist yet is simply created at ``S``. Either way the target branch only ever receives the
   exact tree that passed step 5.
7. Tagging: the landed commit is tagged; then the staging branch is deleted (also on every failure), and only
   then is a requested visibility change applied, so a failed release never makes a repo public.

Guarded: both commits name their parent; if the branch moved (HTTP 412, or a head that is not ours after a
lost response), the release stops with ``ConcurrentPushError`` and nothing is tagged.

Resilient: every Hub call is retried with exponential back-off and jitter on 5xx/408/429 and dropped
connections, and on the same failures of the transfer layer (hf_xet) at the upload and the post-upload
download; a wait the Hub asks for (``RateLimit`` or ``Retry-After``) is honoured, all within one budget of waiting
per run (``release.publish.retry``). A commit is not blindly retried: after a failed attempt the branch head
is re-read; unchanged means retry, moved to exactly our tree means the commit landed and only its response
was lost, moved otherwise means a concurrent push. When the retries run out, the error is a
``HubUnavailableError`` carrying the command to re-run. Re-running after any failure completes the release:
if the target branch already holds the release but has no tag (a run died between step 6 and 7), that
commit is checked as in step 5 and tagged without a new commit.

Clean: deleting a staging branch is retried twice as patiently as other calls; if it still fails, the result
says "cleanup pending" (``PublishResult.cleanup_pending``: the CLI prints it as a warning, in the job summary
and in the publish JSON), and every later publish to the repo removes the staging branches of releases that
are already tagged.

Pinned content: every commit sends the bytes that were hashed when the folder was checked (small files from
memory; LFS files by the sha256 measured then, each file read once per release for hashing and once for the
upload, with a size or mtime that changed since refused); the post-upload check hashes what the Hub serves
against the report, and the landing commit names the same LFS objects, so a folder touched mid-release cannot
put anything but the checked tree on the target branch.

Dry run: no token, no writes; the plan is computed against the remote if it can be read (anonymously, or
with a token if one is configured), else against an empty repo with the reason ("offline"). A version conflict
is reported by a dry run exactly as by a real one. Tokens: see ``release.auth``; every message built from an
exception is redacted.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from release._io import attrs_dict
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

IN_MEMORY_LIMIT = (
    10 * 1024 * 1024
)  # files up to this size are sent from memory (the Hub's regular-file limit)

# (repo_id, commit sha) -> failure lines, empty when the commit loads from the Hub and generates as recorded.
# It may raise HubUnavailableError (the Hub could not be reached) or PublishError (the download failed for
# good): those are not verification failures.
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
        import json

        from release._io import write_text_atomic

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
    except HubUnavailableError as exc:
        exc.rerun = rerun_command(
            folder,
            repo_id=repo_id,
            version=parsed,
            private=private,
            commit_message=commit_message,
            verification=verification if isinstance(verification, (str, Path)) else None,
        )
        raise


def rerun_command(
    folder: str | Path,
    *,
    repo_id: str,
    version: Version,
    private: bool | None = None,
    commit_message: str | None = None,
    verification: str | Path | None = None,
) -> str:
    """The ``release publish`` command that completes this release (also after a ``release run``)."""
    args = ["release", "publish", str(folder), "--repo-id", repo_id, "--version", version.tag]
    if private is not None:
        args.append("--private" if private else "--public")
    if commit_message is not None:
        args += ["--commit-message", commit_message]
    if verification is not None:
        args += ["--verification", str(verification)]
    return shlex.join(args)


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"invalid --repo-id {repo_id!r}: {exc}") from None
    if repo_id.count("/") != 1:
        raise UsageError(f"invalid --repo-id {repo_id!r}: expected OWNER/NAME")


def hub_failure(what: str, exc: BaseException, *, attempts: int, consequence: str) -> PublishError:
    """The error for a Hub call that failed for good: ``HubUnavailableError`` if only the Hub was unreachable.

    ``what`` says which call ("commit to main of org/model"), ``consequence`` what that leaves ("nothing was
    tagged").
    """
    if is_transient(exc):
        return HubUnavailableError(
            f"{what} failed: {describe(exc)} ({attempts} attempts; the Hub could not be reached, nothing is "
            f"wrong with the release); {consequence}"
        )
    return PublishError(f"{what} failed: {describe(exc)}; {consequence}")


def download_commit(repo_id: str, commit: str, *, cache_dir: Path, policy: RetryPolicy) -> Path:
    """``snapshot_download`` of ``repo_id`` at ``commit`` into ``cache_dir``, retried under ``policy``.

    A retry resumes: files already in ``cache_dir`` are not fetched again.

    Raises:
        HubUnavailableError: The Hub could not be reached, even after the retries.
        PublishError: The download failed for another reason (e.g. the commit or the repo is not readable).
    """
    from huggingface_hub import snapshot_download

    what = f"downloading {repo_id}@{commit[:12]}"
    try:
        return Path(
            call_with_retry(
                lambda: snapshot_download(repo_id, revision=commit, cache_dir=cache_dir, token=read_token()),
                what=what,
                policy=policy,
            )
        )
    except ReleaseError:
        raise
    except Exception as exc:
        raise hub_failure(what, exc, attempts=policy.attempts, consequence="nothing was tagged") from exc


def generation_check(release: ReleaseFolder, policy: RetryPolicy) -> PostUploadCheck:
    """The gate of ``release verify`` repeated on the uploaded commit, from the Hub, with the recorded tokens."""
    # Card files are written after verification: the report cannot vouch for them, but they are uploaded too.
    card_files = release.written_after_verification
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


def _stable_tags(tags: Mapping[str, str]) -> dict[str, Version]:
    """The repo's stable release tags, parsed; other tags (prereleases, anything else) are ignored."""
    parsed = {}
    for name in tags:
        try:
            version = parse_version(name)
        except UsageError:
            continue
        if not version.is_prerelease:
            parsed[name] = version
    return parsed


def line_branch(version: Version) -> str:
    """The branch of an older release line: ``release/v1.0`` for ``v1.0.3``."""
    return f"{PRERELEASE_BRANCH_PREFIX}v{version.major}.{version.minor}"


def target_branch(version: Version, tags: Mapping[str, str]) -> str:
    """Where ``version`` lands: its prerelease branch, ``main``, or its line's branch if it is older.

    ``main`` always holds the newest stable release: a stable version lower than the newest stable tag goes
    to ``release/vX.Y`` instead.
    """
    if version.is_prerelease:
        return version.branch
    stable = _stable_tags(tags).values()
    if any(_stable_key(version) < _stable_key(other) for other in stable):
        return line_branch(version)
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
            published = self._existing_tag(tags[v.tag])
            plan = self._plan(
                self._tree(published), base_ref=v.tag, base=published, published=published, cleanup=cleanup
            )
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
            published = self._existing_tag(tags[v.tag])
            plan = self._plan(
                self._tree(published), base_ref=v.tag, base=published, published=published, cleanup=cleanup
            )
            self._say(f"{v.tag} is already published at {published[:12]} with this content; nothing to do")
            self._apply_visibility(private, existed)
            return self._result(plan, commit=published, created=False)

        target_exists = target in branches
        base_ref, base = self._base(branches, tags)
        if base is None:  # only for a repo without main, which the Hub never creates
            raise PublishError(f"{self.repo_id} has no branch {base_ref} to release onto")
        plan = self._plan(self._tree(base), base_ref=base_ref, base=base, cleanup=cleanup)
        message = commit_message or f"Release {v.tag}"
        description = self._commit_description(plan)
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
                    self._delete_branch(staging, missing_ok=True)
                self._say(
                    f"staging: committing {len(plan.changes)} change(s) to {staging} (base {base_ref} at "
                    f"{base[:12]})"
                )
                staged = True  # before the call: a lost response may leave the branch created
                self._create_branch(staging, base)
                final = self._check_and_land(plan, base, target, target_exists, message, description, check)
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

    def _check_and_land(
        self,
        plan: ReleasePlan,
        base: str,
        target: str,
        target_exists: bool,
        message: str,
        description: str,
        check: PostUploadCheck,
    ) -> str:
        """Steps 4 (the commit) to 6 of the module docstring; returns the commit to tag."""
        staging = self.version.staging_branch
        staged = self._commit(staging, base, plan.files, message, description)
        self._expect_release_tree(staged, where=f"staged commit {staged[:12]}")
        self._run_check(check, staged, where=f"staged commit {staged[:12]}", untouched=target)
        if target_exists:
            self._say(f"landing: committing to {target} (parent {base[:12]})")
            final = self._commit(target, base, plan.files, message, description, copy_from=staged)
            # Same parent and same operations give the same tree; confirm before anything is tagged.
            self._expect_release_tree(final, where=f"{target} at {final[:12]}")
        else:
            self._say(f"landing: creating branch {target} at {staged[:12]}")
            self._create_branch(target, staged)
            final = staged
        return final

    def _base(self, branches: Mapping[str, str], tags: Mapping[str, str]) -> tuple[str, str | None]:
        """The ref the release is planned against, and its commit: the target branch if it exists, else where
        a new target branch starts (``main`` for a prerelease; for an older line, its newest lower stable tag)."""
        if self.target in branches:
            return self.target, branches[self.target]
        if self.target != "main" and not self.version.is_prerelease:
            lower = [
                (_stable_key(other), name)
                for name, other in _stable_tags(tags).items()
                if _stable_key(other) < _stable_key(self.version)
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
        """Delete a staging branch, patiently; if that fails, record "cleanup pending" instead of failing.

        Returns True if the branch is gone.
        """
        try:
            self._delete_branch(branch, missing_ok=True, policy=self.policy.patient())
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

        With ``copy_from`` (the checked staged commit), large files are copied from that commit on the Hub rather
        than sent again: nothing of the weights is read or uploaded twice.

        Not retried blindly: a dropped response may hide a commit that landed, so after each failure the head
        is re-read (see the module docstring).
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
        """Fresh operation objects for one commit attempt (huggingface_hub mutates and refuses to reuse them).

        Content is pinned to the hashes the plan was made from, so the staged and the landed commit cannot differ
        even if the folder is touched in between: small files are read once into memory (what is hashed is what
        is sent); a large file goes by the sha256 measured when the folder was read (LFS), and on landing is
        copied from the staged commit that passed the check.
        """
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
                    # Hashed once, when the folder was read and SHA256SUMS checked against it: huggingface_hub
                    # is handed that hash instead of reading the weights again. A file rewritten since shows in
                    # its size or mtime; content swapped without either is caught by the post-upload check,
                    # which hashes what the Hub serves against the report.
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

    def _call(self, what: str, func, *, policy: RetryPolicy | None = None):
        policy = policy or self.policy
        try:
            return call_with_retry(func, what=what, policy=policy)
        except ReleaseError:
            raise
        except Exception as exc:
            raise hub_failure(what, exc, attempts=policy.attempts, consequence="nothing was tagged") from exc

    def _ensure_repo(self, private: bool | None) -> bool:
        """Create the model repo if missing; True if it existed already."""
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            call_with_retry(lambda: self.api.repo_info(self.repo_id), what="read repo", policy=self.policy)
            return True
        except RepositoryNotFoundError:
            pass
        except ReleaseError:  # a retry budget that ran out: already one line
            raise
        except Exception as exc:
            raise hub_failure(
                f"reading {self.repo_id}",
                exc,
                attempts=self.policy.attempts,
                consequence="nothing was changed",
            ) from exc
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
            call_with_retry(
                lambda: self.api.create_branch(self.repo_id, branch=branch, revision=commit),
                what=f"create branch {branch}",
                policy=self.policy,
            )
        except ReleaseError:  # a retry budget that ran out: already one line
            raise
        except Exception as exc:
            # 409 after a retry: our first attempt may have landed. Fine if the branch is where we wanted it.
            if http_status(exc) == 409 and self._refs()[0].get(branch) == commit:
                return
            raise hub_failure(
                f"creating branch {branch}",
                exc,
                attempts=self.policy.attempts,
                consequence="nothing was tagged",
            ) from exc

    def _delete_branch(self, branch: str, *, missing_ok: bool, policy: RetryPolicy | None = None) -> None:
        from huggingface_hub.errors import RevisionNotFoundError

        policy = policy or self.policy
        try:  # a retry after a lost response finds the branch gone (404): that is success with missing_ok
            call_with_retry(
                lambda: self.api.delete_branch(self.repo_id, branch=branch),
                what=f"delete branch {branch}",
                policy=policy,
            )
        except RevisionNotFoundError:
            if not missing_ok:
                raise PublishError(f"branch {branch} of {self.repo_id} does not exist") from None
        except ReleaseError:  # a retry budget that ran out: already one line
            raise
        except Exception as exc:
            if http_status(exc) == 404 and missing_ok:
                return
            raise hub_failure(
                f"deleting branch {branch}",
                exc,
                attempts=policy.attempts,
                consequence="the branch is still there",
            ) from exc

    def _create_tag(self, tag: str, commit: str) -> None:
        try:
            call_with_retry(
                lambda: self.api.create_tag(
                    self.repo_id, tag=tag, revision=commit, tag_message=f"Release {tag}"
                ),
                what=f"create tag {tag}",
                policy=self.policy,
            )
        except ReleaseError:  # a retry budget that ran out: already one line
            raise
        except Exception as exc:
            if http_status(exc) == 409:  # a retry after a lost response, or another run of the same release
                existing = self._refs()[1].get(tag)
                if existing == commit:
                    return
                if existing is not None:
                    self._existing_tag(existing)  # raises VersionConflictError if the content differs
                    return
            raise hub_failure(
                f"creating tag {tag} at {commit[:12]}",
                exc,
                attempts=self.policy.attempts,
                consequence=f"{self.target} holds the release, re-run to check and tag it",
            ) from exc

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

    def _commit_description(self, plan: ReleasePlan) -> str:
        c = plan.counts()
        return (
            f"Release {self.version.tag}: {len(self.local)} files "
            f"({c['add']} added, {c['replace']} replaced, {c['delete']} deleted, {c['unchanged']} unchanged). "
            "Published by `release publish` after the verification gates passed."
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
