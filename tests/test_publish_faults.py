"""Fault injection: one failing request at a time, at every request a publish makes, against the local Hub.

One clean publish is recorded first (from an empty Hub: create the repo, stage, check from the Hub, land, tag,
clean up; about 50 requests, most of them the post-upload check's download). Then each case starts again from an
empty Hub with one fault armed:

- ``test_one_transient_fault_at_any_request_is_absorbed``: request *n* of the run fails once, as an HTTP 503,
  a dropped connection, or (for requests that write) a response lost after the write was applied. The first
  attempt must succeed (the goal of issue #18: at least 95% of cases; all of them today).
- ``test_a_call_failing_past_its_retries_leaves_a_clean_state_and_a_rerun_completes``: the call behind request
  *n* fails on every one of its attempts (503), so its retries run out. The run must then fail cleanly (or
  ride it out through huggingface_hub's own retries), and a re-run must complete the release.

After every first attempt: no tag on content that did not pass the post-upload check, no staging branch left,
``main`` either untouched or holding exactly the release. After the release is complete, one more run must
make no commit. The counts are printed (``pytest -s``) and asserted.

Faults are armed through the emulator's own fault injection (``HubEmulator.inject_fault``); the real
huggingface_hub client, the real post-upload check and the real retry policy run, with instant back-off.
One shortcut keeps the suite to a couple of minutes: the check's second half (load the downloaded snapshot
with remote code and generate, then run the card's code; no network) is computed once per distinct snapshot content (the sha256
of every downloaded file) and reused, because the same bytes give the same answer. The download, where every
one of the check's requests and so every injected fault is, always runs for real.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from release.errors import HubUnavailableError, ReleaseError
from release.publish.retry import RetryPolicy
from release.versions import STAGING_BRANCH_PREFIX
from tests.test_publish import REPO, builds, publish, release_dir  # noqa: F401  (fixtures)

VERSION = "v1.0.0"
ATTEMPTS = 3  # the retry policy's attempts in these tests (the default is 5)
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass
class Case:
    """One publish with one armed fault, and what came of it."""

    request: str  # "METHOD path" of the request the fault was aimed at, as recorded in the clean run
    fault: str
    fired: int = 0
    first_ok: bool = False
    first_error: str = ""
    violations: list[str] = field(default_factory=list)
    rerun_ok: bool | None = None  # None: no re-run was needed


class Harness:
    """Publishes the v1 folder with the real post-upload check, recording which commits passed it."""

    def __init__(self, hub, folder: Path, monkeypatch: pytest.MonkeyPatch):
        import release.verify.runner
        import release.verify.snippet
        from release._io import hash_folder as folder_file_hashes
        from release.publish.plan import read_release_folder

        real_check = release.verify.runner.check_generation_against_report
        answers: dict[tuple, list[str]] = {}

        def check_once_per_content(model, **kwargs) -> list[str]:  # see the module docstring
            key = (tuple(sorted(folder_file_hashes(Path(model)).items())), repr(sorted(kwargs.items())))
            if key not in answers:
                answers[key] = list(real_check(model, **kwargs))
            return list(answers[key])

        monkeypatch.setattr(release.verify.runner, "check_generation_against_report", check_once_per_content)
        self.loads = answers

        real_snippet = release.verify.snippet.check_card_snippet
        snippet_answers: dict[tuple, object] = {}

        def snippet_once_per_content(folder, *, report, **kwargs):  # the card's code: the same shortcut
            key = (tuple(sorted(folder_file_hashes(Path(folder)).items())), repr(report))
            if key not in snippet_answers:
                snippet_answers[key] = real_snippet(folder, report=report, **kwargs)
            return snippet_answers[key]

        monkeypatch.setattr(release.verify.snippet, "check_card_snippet", snippet_once_per_content)

        self.hub = hub
        self.folder = folder
        self.files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }
        self.release = read_release_folder(folder)
        self.passed: list[str] = []  # commits whose post-upload check passed
        self.policy = RetryPolicy(attempts=ATTEMPTS, base_delay=0.0, sleep=lambda _: None)

    def publish(self):
        from release.publish.publisher import generation_check, publish_release

        real = generation_check(self.release, self.policy)

        def check(repo_id: str, commit: str) -> list[str]:
            failures = real(repo_id, commit)
            if not failures:
                self.passed.append(commit)
            return failures

        return publish_release(
            self.folder, repo_id=REPO, version=VERSION, retry=self.policy, post_upload_check=check
        )

    def content(self, revision: str) -> dict[str, bytes]:
        return {k: v for k, v in self.hub.repo_files(REPO, revision).items() if k != ".gitattributes"}

    def violations(self) -> list[str]:
        """The protocol's invariants, read from the emulator's store."""
        if REPO not in self.hub.repo_ids():
            return []  # the run failed before the repo existed: nothing to check
        refs = self.hub.refs(REPO)
        found = []
        checked = [self.content(sha) for sha in self.passed]
        for tag, sha in refs.tags.items():
            content = self.content(sha)
            if content not in checked:
                found.append(
                    f"tag {tag} points at {sha[:12]}, whose content never passed the post-upload check"
                )
            if content != self.files:
                found.append(f"tag {tag} points at content other than the release")
        staging = [b for b in refs.branches if b.startswith(STAGING_BRANCH_PREFIX)]
        if staging:
            found.append(f"staging branch left: {', '.join(staging)}")
        main = self.content(refs.branches["main"])
        if main not in ({}, self.files):
            found.append("main holds neither its initial content nor the release")
        if refs.tags and main != self.files:
            found.append("the release is tagged but main does not hold it")
        return found

    def complete(self) -> bool:
        refs = self.hub.refs(REPO)
        return VERSION in refs.tags and self.content(refs.tags[VERSION]) == self.files


@pytest.fixture
def harness(hub, hub_token, release_dir, hf_backoff_sleeps, monkeypatch):  # noqa: F811
    return Harness(hub, release_dir("v1"), monkeypatch)


@pytest.fixture
def recorded(harness):
    """The requests of one clean publish from an empty Hub (method, path with commit shas as a pattern)."""
    harness.publish()
    requests = [(r.method, r.path, r.mutating) for r in harness.hub.requests]
    assert harness.complete() and not harness.violations()
    assert any("/resolve/" in path for _, path, _ in requests)  # the check's download is part of the run
    return requests


def _run_case(harness: Harness, case: Case, arm) -> Case:
    """Reset the Hub, arm the fault, publish; check the invariants; re-run if needed; then a no-op run."""
    hub = harness.hub
    hub.reset()
    harness.passed.clear()
    fault = arm()
    try:
        harness.publish()
        case.first_ok = True
    except ReleaseError as exc:
        case.first_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, HubUnavailableError) and not (exc.rerun or "").startswith("release publish "):
            case.violations.append("a HubUnavailableError without the command to re-run")
    case.fired = fault.fired
    case.violations += harness.violations()
    if not case.first_ok:
        hub.clear_faults()
        try:
            harness.publish()
            case.rerun_ok = harness.complete()
        except ReleaseError as exc:
            case.rerun_ok = False
            case.violations.append(f"re-run failed: {exc}")
        case.violations += [f"after the re-run: {v}" for v in harness.violations()]
    hub.clear_faults()
    if harness.complete():
        commits = len(hub.commits(REPO))
        hub.clear_requests()
        again = harness.publish()
        made = [r.path for r in hub.mutating_requests() if "/commit/" in r.path]
        if again.created or made or len(hub.commits(REPO)) != commits:
            case.violations.append(f"a run after the release made a commit ({made})")
    elif case.first_ok or case.rerun_ok:
        case.violations.append("the release is not complete although a run succeeded")
    return case


def _summary(title: str, cases: list[Case]) -> str:
    first = sum(c.first_ok for c in cases)
    reruns = [c for c in cases if c.rerun_ok is not None]
    lines = [
        f"{title}: {len(cases)} cases, first-attempt successes {first} ({100 * first / len(cases):.1f}%), "
        f"invariant violations {sum(len(c.violations) for c in cases)}, "
        f"re-runs completed {sum(bool(c.rerun_ok) for c in reruns)} of {len(reruns)}"
    ]
    for c in cases:
        if not c.first_ok or c.violations:
            lines.append(f"  {c.fault:>5} at {c.request}: {c.first_error or 'ok'} {c.violations or ''}")
    return "\n".join(lines)


FAULT_KINDS = {
    "503": {"status": 503},
    "drop": {"drop_connection": True},
    "lost": {"drop_connection": True, "after_handling": True},  # the write happened, its answer never came
}


@pytest.mark.parametrize("kind", list(FAULT_KINDS))
def test_one_transient_fault_at_any_request_is_absorbed(harness, recorded, kind):
    cases = []
    for n, (method, path, mutating) in enumerate(recorded, start=1):
        if kind == "lost" and not mutating:
            continue  # a lost answer only differs from a dropped connection when the request wrote something
        case = Case(request=f"{method} {path}", fault=kind)
        # The n-th request of the run, whatever it is: the check's parallel downloads may come in another order.
        cases.append(
            _run_case(
                harness, case, lambda n=n: harness.hub.inject_fault(None, "", nth=n, **FAULT_KINDS[kind])
            )
        )
    summary = _summary(f"one transient fault ({kind}) per run", cases)
    print("\n" + summary)

    assert all(c.fired == 1 for c in cases), summary  # every case really failed one request
    assert sum(len(c.violations) for c in cases) == 0, summary
    assert all(c.first_ok for c in cases), summary  # issue #18 asks for >= 95%; every case is absorbed today


def test_a_call_failing_past_its_retries_leaves_a_clean_state_and_a_rerun_completes(harness, recorded):
    cases = []
    seen: dict[tuple[str, str], int] = {}
    for method, path, _ in recorded:
        pattern = "^" + _SHA.sub("[0-9a-f]{40}", re.escape(path)) + "$"  # commit shas differ from run to run
        nth = seen[(method, pattern)] = seen.get((method, pattern), 0) + 1
        case = Case(request=f"{method} {path}", fault="503x3")
        cases.append(
            _run_case(
                harness,
                case,
                lambda m=method, p=pattern, k=nth: harness.hub.inject_fault(
                    m, p, nth=k, times=ATTEMPTS, status=503
                ),
            )
        )
    summary = _summary(f"one call failing {ATTEMPTS} times in a row", cases)
    print("\n" + summary)

    assert all(c.fired >= 1 for c in cases), summary
    assert sum(len(c.violations) for c in cases) == 0, summary
    failed = [c for c in cases if not c.first_ok]
    assert failed, summary  # exhausted retries must really fail some runs, or this test proves nothing
    assert all(c.rerun_ok for c in failed), summary
    # a Hub that stays down is a Hub failure with the command to re-run, never a failed verification
    assert all(c.first_error.startswith("HubUnavailableError") for c in failed), summary


# --- the transfer layer, rate limits, the retry budget --------------------------------------------------------
#
# huggingface_hub moves large files through hf_xet, whose failures are RuntimeError / ConnectionError /
# TimeoutError, never HTTP errors. The emulator serves LFS (the tests run with HF_HUB_DISABLE_XET=1), so they
# are raised where hf_xet would raise them: from the upload of the commit's files and from the download of a
# file by the post-upload check.

CAS_ERROR = (
    "Data processing error: CAS service error : ReqwestMiddleware Error: Request failed after 5 retries"
)
TRANSFER_ERRORS = {
    "cas": lambda: RuntimeError(CAS_ERROR),
    "connection": lambda: ConnectionError("Connection reset by peer (os error 104)"),
    "timeout": lambda: TimeoutError("operation timed out"),
}


class TransferFaults:
    """Make the transfer layer's upload or download raise ``exc()`` on its next ``times`` calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: str, exc, times: int):
        import huggingface_hub._commit_api
        import huggingface_hub.file_download

        module, name = {
            "upload": (huggingface_hub._commit_api, "_upload_files"),
            "download": (huggingface_hub.file_download, "http_get"),
        }[where]
        real = getattr(module, name)
        self.fired = 0
        self.times = times

        def failing(*args, **kwargs):
            if self.fired < self.times:
                self.fired += 1
                raise exc()
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize("kind", list(TRANSFER_ERRORS))
@pytest.mark.parametrize("where", ["upload", "download"])
@pytest.mark.usefixtures("hf_backoff_sleeps")
def test_transfer_layer_failure_is_retried_like_http(hub, publish, release_dir, monkeypatch, where, kind):  # noqa: F811
    faults = TransferFaults(monkeypatch, where, TRANSFER_ERRORS[kind], times=1)
    result = publish(release_dir(), VERSION, real_check=where == "download")

    assert faults.fired == 1 and result.created and len(publish.sleeps) == 1
    refs = hub.refs(REPO)
    assert refs.tags[VERSION] == refs.branches["main"] and set(refs.branches) == {"main"}


@pytest.mark.parametrize("where", ["upload", "download"])
@pytest.mark.usefixtures("hf_backoff_sleeps")
def test_transfer_layer_down_for_good_is_hub_unavailable(hub, publish, release_dir, monkeypatch, where):  # noqa: F811
    folder = release_dir()
    faults = TransferFaults(monkeypatch, where, TRANSFER_ERRORS["cas"], times=10**6)
    with pytest.raises(HubUnavailableError) as failure:
        publish(folder, VERSION, real_check=where == "download")

    message = str(failure.value)
    assert "\n" not in message and "CAS service error" in message and "nothing was tagged" in message
    assert failure.value.rerun.startswith(f"release publish {folder} --repo-id {REPO} --version {VERSION}")
    assert len(publish.sleeps) == ATTEMPTS - 1 and faults.fired >= ATTEMPTS  # every attempt, no more
    refs = hub.refs(REPO)
    assert refs.tags == {} and set(refs.branches) == {"main"}  # nothing tagged, staging removed

    faults.times = 0  # the transfer layer is back
    assert publish(folder, VERSION, real_check=where == "download").created
    assert VERSION in hub.refs(REPO).tags


@pytest.mark.usefixtures("hf_backoff_sleeps")
def test_transfer_layer_failure_of_the_data_is_final(hub, publish, release_dir, monkeypatch):  # noqa: F811
    bad = lambda: RuntimeError("Data processing error: Hash mismatch")  # noqa: E731
    faults = TransferFaults(monkeypatch, "upload", bad, times=10**6)
    with pytest.raises(ReleaseError) as failure:
        publish(release_dir(), VERSION, real_check=False)
    assert not isinstance(failure.value, HubUnavailableError) and "Hash mismatch" in str(failure.value)
    assert faults.fired == 1 and publish.sleeps == []


RATE_LIMITED = {"RateLimit": '"api";r=0;t=120', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'}


def test_rate_limit_and_retry_after_are_waited_out_also_by_the_commit(hub, publish, release_dir):  # noqa: F811
    hub.inject_fault("GET", r"/refs$", status=429, headers=RATE_LIMITED)
    hub.inject_fault("POST", r"/commit/release-staging/", status=429, headers={"RateLimit": '"api";r=0;t=45'})
    hub.inject_fault("POST", r"/tag/", status=503, headers={"Retry-After": "7"})
    result = publish(release_dir(), VERSION, real_check=False)

    assert result.created
    assert sorted(publish.sleeps) == [7.0, 45.0, 120.0]  # exactly what the Hub asked for, uncapped


def test_a_wait_beyond_the_retry_budget_fails_at_once_in_one_line(hub, hub_token, release_dir):  # noqa: F811
    from release.publish.publisher import publish_release

    folder = release_dir()
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=ATTEMPTS, base_delay=0.0, sleep=sleeps.append, wait_budget=300.0)
    # The budget is per run: 200 s for one rate limit leaves 100 s, too little for the second one.
    hub.inject_fault("GET", r"/refs$", status=429, headers={"RateLimit": '"api";r=0;t=200'})
    hub.inject_fault("POST", r"/commit/", status=429, headers={"RateLimit": '"api";r=0;t=200'})
    with pytest.raises(HubUnavailableError) as failure:
        publish_release(folder, repo_id=REPO, version=VERSION, retry=policy, post_upload_check=lambda *_: [])

    message = str(failure.value)
    assert sleeps == [200.0]
    assert "\n" not in message and "wait of 200s" in message and "100s left" in message, message
    assert "rate limit" in message and failure.value.rerun.startswith("release publish ")
    refs = hub.refs(REPO)
    assert refs.tags == {} and set(refs.branches) == {"main"}
