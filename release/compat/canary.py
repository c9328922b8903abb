"""The compatibility canary: re-check a published Hub revision when transformers moves, say so in ONE issue.

The revision is checked with no checkpoint, against the tokens its ``verification.json`` recorded, on what
users get next: the newest transformers release and its latest pre-release. ``upsert_canary_issue`` updates
the open issue (found by a label and a marker) rather than open another: weekly failures never pile up.
"""

from __future__ import annotations

import fnmatch
import json
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from release.compat.index import available_versions, fetch_project_page, newest_prerelease
from release.compat.matrix import CompatReport, SnippetCheck, VersionResult, run_compat_matrix
from release.errors import CompatError, UsageError

MARKER = "<!-- release-compat-canary -->"
LABEL = "compat-canary"
TEMPLATE = "compat_canary_issue.md.j2"
MAX_BODY = 65_000  # GitHub refuses issue bodies over 65,536 characters
GITHUB_TIMEOUT = 30.0


# --------------------------------------------------------------------------- what to check


def newest_release_tag(repo_id: str) -> str:
    """The newest published release tag of ``repo_id`` (``vX.Y.Z``; pre-releases only if nothing else).

    Raises:
        CompatError: The repo cannot be read or has no release tag.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from release.auth import read_token
    from release.versions import parse_version

    try:
        refs = HfApi().list_repo_refs(repo_id, token=read_token())
    except (HfHubHTTPError, OSError) as exc:
        raise CompatError(f"cannot list the tags of {repo_id}: {str(exc).strip().splitlines()[0]}") from exc
    parsed = []
    for ref in refs.tags:
        try:
            version = parse_version(ref.name)
        except UsageError:
            continue  # not a release tag
        parsed.append(((not version.is_prerelease, version.major, version.minor, version.patch), ref.name))
    if not parsed:
        raise CompatError(f"{repo_id} has no release tag (vX.Y.Z) to check")
    return max(parsed)[1]


def canary_versions(page: Mapping[str, Any] | None = None, *, python: str | None = None) -> list[str]:
    """The newest transformers release on the index and, if newer, its latest pre-release.

    Raises:
        CompatError: The index cannot be read or lists no release.
    """
    page = page if page is not None else fetch_project_page("transformers")
    finals = available_versions(page, python=python)
    if not finals:
        raise CompatError("the package index lists no transformers release")
    pre = newest_prerelease(available_versions(page, python=python, include_pre=True))
    return [finals[-1]] if pre is None else [finals[-1], pre]


def check_hub_revision(
    repo_id: str,
    *,
    revision: str,
    report: dict[str, Any],
    versions: Sequence[str],
    cache_dir: Path | None = None,
    snippet_check: SnippetCheck | None = None,
    on_result: Callable[[VersionResult], None] | None = None,
    device: str = "cpu",
) -> CompatReport:
    """Download ``repo_id@revision`` (fresh cache) and run the matrix on it against ``report``'s tokens; its
    files must be the ones the report verified (a report of another release proves nothing about this one).

    Raises:
        CompatError: The report does not describe this revision, or see ``run_compat_matrix``.
        VerificationError, UsageError: The revision cannot be downloaded.
    """
    from release._io import hash_folder
    from release.verify.loading import candidate_source
    from release.verify.runner import ALLOWED_EXTRA_FILES

    verified = report.get("model", {}).get("files") if isinstance(report.get("model"), dict) else None
    if not isinstance(verified, dict) or not verified:
        raise CompatError("the verification report has no model.files map; it cannot vouch for a revision")
    with candidate_source(repo_id, revision) as source:
        files = hash_folder(source.folder)
        extra = {
            p
            for p in set(files) - set(verified)
            if not any(fnmatch.fnmatchcase(p, a) for a in ALLOWED_EXTRA_FILES)
        }
        changed = sorted(p for p, sha in verified.items() if files.get(p) != sha)
        if changed or extra:
            listed = ", ".join((changed + sorted(extra))[:5])
            raise CompatError(
                f"{repo_id}@{revision} is not what the verification report verified ({listed}); "
                "pass the report of that release"
            )
        return run_compat_matrix(
            source.folder,
            report=report,
            versions=versions,
            canary=True,
            cache_dir=cache_dir,
            snippet_check=snippet_check,
            on_result=on_result,
            device=device,
        )


# --------------------------------------------------------------------------- the issue


def render_canary_issue(
    compat: Mapping[str, Any], *, repo_id: str, revision: str, run_url: str | None = None
) -> tuple[str, str]:
    """(title, body) of the canary's issue for a failed ``CompatReport.to_dict()``; the same input, the same text.

    Raises:
        UsageError: ``compat`` passed (there is nothing to report) or is not a compat report.
    """
    from release.errors import CardError
    from release.render import render_template

    try:
        versions, failures = list(compat["versions"]), list(compat["failures"])
    except (KeyError, TypeError):
        raise UsageError("not a compatibility report: no 'versions' and 'failures'") from None
    failed = [v for v in versions if not v.get("passed")]
    if not failed:
        raise UsageError("the compatibility report passed; there is no issue to write")
    names = ", ".join(f"{v['transformers']} ({v.get('stage') or 'unknown stage'})" for v in failed)
    title = f"Compatibility canary: {repo_id} {revision} fails on transformers {names}"
    context = {
        "marker": MARKER,
        "repo_id": repo_id,
        "revision": revision,
        "hub_url": f"https://huggingface.co/{repo_id}/tree/{revision}",
        "versions": versions,
        "failed": failed,
        "failures": failures,
        "run_url": run_url,
    }
    try:
        body = render_template(TEMPLATE, context)
    except CardError as exc:
        raise UsageError(f"cannot render the canary issue: {exc}") from None
    if len(body) > MAX_BODY:
        body = (
            body[: MAX_BODY - 200] + "\n\n… (cut to fit in an issue; the workflow run has the whole report)\n"
        )
    return title[:250], body


class IssueTracker(Protocol):
    """What the canary needs of an issue tracker (GitHub's REST API; a fake in tests)."""

    def open_issues(self, label: str) -> list[dict[str, Any]]: ...  # each {"number", "title", "body"}

    def create_issue(self, *, title: str, body: str, labels: Sequence[str]) -> int: ...

    def update_issue(
        self, number: int, *, title: str | None = None, body: str | None = None, state: str | None = None
    ) -> None: ...


Action = Literal["created", "updated", "unchanged", "closed", "none"]


@dataclass(frozen=True)
class IssueOutcome:
    action: Action
    number: int | None


def _ours(issues: IssueTracker) -> list[dict[str, Any]]:
    found = [i for i in issues.open_issues(LABEL) if (i.get("body") or "").startswith(MARKER)]
    return sorted(found, key=lambda i: int(i["number"]))


def upsert_canary_issue(issues: IssueTracker, *, title: str, body: str) -> IssueOutcome:
    """Open the canary's issue, or update the open one (the oldest, if a human duplicated it); never two.

    Raises:
        UsageError: ``body`` does not start with the marker (it would not be found next time).
    """
    if not body.startswith(MARKER):
        raise UsageError(f"the canary issue body must start with {MARKER}")
    existing = _ours(issues)
    if not existing:
        return IssueOutcome("created", issues.create_issue(title=title, body=body, labels=[LABEL]))
    issue = existing[0]
    number = int(issue["number"])
    if issue.get("title") == title and issue.get("body") == body:
        return IssueOutcome("unchanged", number)
    issues.update_issue(number, title=title, body=body)
    return IssueOutcome("updated", number)


def close_canary_issue(
    issues: IssueTracker, *, repo_id: str, revision: str, versions: Sequence[str]
) -> IssueOutcome:
    """The canary passed: close its open issue (if any), saying on which versions it passes now."""
    existing = _ours(issues)
    if not existing:
        return IssueOutcome("none", None)
    number = int(existing[0]["number"])
    body = (
        f"{MARKER}\n{repo_id} {revision} passes again on transformers {', '.join(versions)}; closed by the "
        "compatibility canary.\n"
    )
    issues.update_issue(number, body=body, state="closed")
    return IssueOutcome("closed", number)


class GitHubIssues:
    """``IssueTracker`` over GitHub's REST API with the workflow's token (``issues: write``; never logged):
    three calls, since the project has no GitHub client."""

    def __init__(self, repository: str, *, token: str, api_url: str = "https://api.github.com") -> None:
        if repository.count("/") != 1 or not all(repository.split("/")):
            raise UsageError(f"{repository!r} is not an owner/name GitHub repository")
        self._base = f"{api_url.rstrip('/')}/repos/{repository}"
        self._token = token

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> GitHubIssues:
        """From ``GITHUB_REPOSITORY``, ``GH_TOKEN``/``GITHUB_TOKEN`` and ``GITHUB_API_URL`` (set in Actions).

        Raises:
            UsageError: One of them is missing.
        """
        env = os.environ if env is None else env
        token = env.get("GH_TOKEN") or env.get("GITHUB_TOKEN")
        repository = env.get("GITHUB_REPOSITORY")
        if not token or not repository:
            raise UsageError(
                "set GITHUB_REPOSITORY and GH_TOKEN (the workflow's token) to file the canary issue"
            )
        return cls(repository, token=token, api_url=env.get("GITHUB_API_URL") or "https://api.github.com")

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        from huggingface_hub.utils import http_backoff

        try:  # huggingface_hub's HTTP client, with its retries on 5xx, 429 and dropped connections
            response = http_backoff(
                method,
                self._base + path,
                json=payload,
                headers={
                    "Accept": "application/vnd.github+json",
                    "Authorization": f"Bearer {self._token}",
                    "X-GitHub-Api-Version": "2022-11-28",
                },
                timeout=GITHUB_TIMEOUT,
                max_retries=3,
            )
        except Exception as exc:  # httpx's transport errors, after the retries
            raise CompatError(f"cannot reach GitHub's API: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise CompatError(f"GitHub answered {response.status_code} to {method} {path.split('?')[0]}")
        return response.json() if response.content else None

    def open_issues(self, label: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"state": "open", "labels": label, "per_page": 100})
        items = self._call("GET", f"/issues?{query}") or []
        return [i for i in items if "pull_request" not in i]

    def create_issue(self, *, title: str, body: str, labels: Sequence[str]) -> int:
        return int(
            self._call("POST", "/issues", {"title": title, "body": body, "labels": list(labels)})["number"]
        )

    def update_issue(
        self, number: int, *, title: str | None = None, body: str | None = None, state: str | None = None
    ) -> None:
        payload = {k: v for k, v in {"title": title, "body": body, "state": state}.items() if v is not None}
        self._call("PATCH", f"/issues/{int(number)}", payload)


def sync_canary_issue(issues: IssueTracker, *, results: Path, run_url: str | None = None) -> IssueOutcome:
    """Bring the canary issue in line with ``results`` (``release compat --out``): upsert on failure, else close.

    Raises:
        UsageError: ``results`` is not what ``release compat`` wrote for a Hub revision.
    """
    try:
        data = json.loads(Path(results).read_text(encoding="utf-8"))
        compat, repo_id, revision = data["compat"], str(data["repo_id"]), str(data["revision"])
        versions = [str(v["transformers"]) for v in compat["versions"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UsageError(f"{results} is not the output of `release compat REPO_ID --out`: {exc}") from None
    if compat.get("passed") is True:
        return close_canary_issue(issues, repo_id=repo_id, revision=revision, versions=versions)
    title, body = render_canary_issue(compat, repo_id=repo_id, revision=revision, run_url=run_url)
    return upsert_canary_issue(issues, title=title, body=body)
