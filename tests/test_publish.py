"""``release publish`` against the local Hub emulator, through the real huggingface_hub client.

Each test starts from an empty Hub and a copy of a real release folder: a tiny checkpoint converted by
``release convert`` (weights, config, remote code, tokenizer, ``release.json``), checked by ``release verify``
(``verification.json`` beside it), plus stand-ins for the card files. Hub-side facts are read from the
emulator's store, not from the publisher's own result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from release.cli import main as cli
from release.errors import (
    ConcurrentPushError,
    PublishError,
    UsageError,
    VerificationError,
    VersionConflictError,
)
from release.publish.plan import (
    LocalFile,
    RemoteFile,
    compute_plan,
    hash_file,
    read_release_folder,
    tree_matches,
)
from release.publish.retry import RetryPolicy, call_with_retry
from release.versions import parse_version
from tests.conftest import TOKENIZER_VOCAB, build_reference, run_isolated
from tests.conftest_hub import hub_env

REPO = "acme/tiny-gpt"
PROMPT_TEXT = "The Fox and the"
MAX_NEW_TOKENS = 8
EOS = TOKENIZER_VOCAB - 1  # the tokenizer's <|endoftext|>


# --- building release folders ------------------------------------------------------------------------


def _restamp_report(folder: Path, report_from: Path | None = None) -> None:
    """Make verification.json vouch for the folder's current files, as if verify had passed on them."""
    from release._io import hash_folder as folder_file_hashes

    path = folder.parent / "verification.json"
    report = json.loads((report_from or path).read_text())
    report["model"]["files"] = folder_file_hashes(folder)
    path.write_text(json.dumps(report, indent=2, sort_keys=True))


def _negate_logits(folder: Path) -> None:
    """Break the shipped model code: it still loads and runs, with every logit negated."""
    modeling = folder / "modeling_custom_transformer.py"
    code = modeling.read_text()
    line = "logits = self.lm_head(_keep_logits(base.last_hidden_state, logits_to_keep))\n"
    assert line in code, "the modeling code changed: update the injected bug"
    modeling.write_text(code.replace(line, line.replace("= self.lm_head", "= -self.lm_head")))


def _write_card(folder: Path) -> None:
    """Stand-ins for the card step's output, written after verification like the real ones."""
    (folder / "README.md").write_text(
        "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# tiny-gpt\n"
    )
    (folder / ".eval_results").mkdir()
    (folder / ".eval_results" / "demo.yaml").write_text("- task: demo\n  value: 1.0\n")


@pytest.fixture(scope="module")
def builds(tmp_path_factory, tokenizer_dir):
    """Release folders built once per module with the real convert step, and each one's training module.

    "v1": 3 shards, verified by the real verify step. "v2": the same weights in 2 shards; verify would record
    the same tokens, so v1's report is re-stamped with v2's file hashes (one verify run saves ~10 s).
    "other": other weights, for the version conflict (refused before any check runs).
    """
    from release.convert.folder import convert_checkpoint
    from release.demo import training_config_dict, write_training_checkpoint
    from release.verify.runner import verify_model

    root = tmp_path_factory.mktemp("builds")
    made = {}
    for name, seed, shard in (("v1", 0, 100_000), ("v2", 0, 200_000), ("other", 1, 100_000)):
        model = build_reference(seed=seed)
        c = model.config
        train_config = training_config_dict(
            n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer, block_size=c.block_size
        )
        ckpt = write_training_checkpoint(
            model, root / name / "ckpt.pt", train_config=train_config, iter_num=100
        )
        folder = root / name / "dist" / "model"
        convert_checkpoint(ckpt, folder, tokenizer=tokenizer_dir, max_shard_size=shard)
        if name == "v1":
            report = verify_model(
                folder, checkpoint=ckpt, tokenizer=tokenizer_dir, max_new_tokens=MAX_NEW_TOKENS,
                report_path=folder.parent / "verification.json",
            )  # fmt: skip
            assert report.passed, report.failures
        else:
            _restamp_report(folder, report_from=made["v1"][0].parent / "verification.json")
        _write_card(folder)
        made[name] = (folder, model)
    return made


@pytest.fixture
def fast_cli_retries(monkeypatch):
    """The CLI uses the default retry policy; make its waits instant."""
    import functools

    import release.publish.publisher

    monkeypatch.setattr(
        release.publish.publisher, "RetryPolicy", functools.partial(RetryPolicy, base_delay=0.0)
    )


@pytest.fixture
def release_dir(builds, tmp_path):
    """Factory: a private copy of a build's dist folder (tests modify folders); returns the model folder."""

    def copy(name: str = "v1") -> Path:
        source, _ = builds[name]
        target = tmp_path / "dist" / name
        if not target.exists():
            shutil.copytree(source.parent, target)
        return target / "model"

    return copy


@pytest.fixture
def publish(hub, hub_token, tmp_path):
    """``publish_release`` with quick retries (the waits are recorded in ``publish.sleeps``).

    ``real_check=False`` swaps the post-upload generation check (a Hub download and a model load, ~1-3 s) for a
    probe, in tests about Hub mechanics: it records each checked commit in ``publish.checked`` and asserts the
    invariant at the moment of the check: the commit is not tagged and no branch but staging points at it yet.
    """
    from release.publish.publisher import publish_release

    sleeps: list[float] = []
    checked: list[str] = []

    def probe(repo_id: str, commit: str) -> list[str]:
        refs = hub.refs(repo_id)
        assert commit not in refs.tags.values()
        assert [
            b for b, sha in refs.branches.items() if sha == commit and not b.startswith("release-staging/")
        ] in (
            [],
            ["main"],  # allowed only when main already held the release (a re-run that completes it)
        )
        checked.append(commit)
        return []

    def run(folder: Path, version: str, *, real_check: bool = True, **kwargs):
        kwargs.setdefault("retry", RetryPolicy(attempts=3, base_delay=0.01, sleep=sleeps.append))
        if not real_check:
            kwargs["post_upload_check"] = probe
        return publish_release(folder, repo_id=REPO, version=version, **kwargs)

    run.sleeps, run.checked = sleeps, checked
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _release_content(hub, revision: str) -> dict[str, bytes]:
    return {k: v for k, v in hub.repo_files(REPO, revision).items() if k != ".gitattributes"}


# --- versions, plans, retries (no Hub) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "branch", "pre"),
    [
        ("v1.2.0", "main", False),
        ("v0.0.1", "main", False),
        ("v1.2.0-rc.1", "release/v1.2.0-rc.1", True),
        ("v10.20.30-beta.2", "release/v10.20.30-beta.2", True),
        ("v1.0.0-alpha-1.x", "release/v1.0.0-alpha-1.x", True),
    ],
)
def test_versions_decide_branch_and_tag(text, branch, pre):
    version = parse_version(text)
    assert (str(version), version.tag, version.branch, version.is_prerelease) == (text, text, branch, pre)
    assert version.staging_branch == f"release-staging/{text}"


@pytest.mark.parametrize(
    "text",
    ["1.2.0", "V1.2.0", "v1.2", "v01.2.0", "v1.2.0+build.5", "v1.2.0-", "v1.2.0-rc.01", "v1.2.0-rc..1", " v1.2.0",
     "v1.2.0\n", "v1.2.0-rc_1", "latest", ""],
)  # fmt: skip
def test_malformed_versions_are_refused_before_any_request(text, hub, hub_token, release_dir):
    from release.publish.publisher import publish_release

    with pytest.raises(UsageError, match="invalid version"):
        publish_release(release_dir(), repo_id=REPO, version=text)
    assert hub.requests == []


def _local(path: str, content: bytes, tmp_path: Path) -> LocalFile:
    file = tmp_path / "f" / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(content)
    return hash_file(file, path)


def test_plan_compares_lfs_files_by_sha256_and_regular_files_by_git_blob_id(tmp_path):
    import hashlib
    import subprocess

    same_lfs = _local("model.safetensors", b"weights", tmp_path)
    same_regular = _local("config.json", b"{}", tmp_path)
    changed = _local("tokenizer.json", b"new", tmp_path)
    new = _local("release.json", b"{}\n", tmp_path)
    # git's own blob id, when git is around, pins the regular-file hash
    if shutil.which("git"):
        oid = subprocess.run(
            ["git", "hash-object", str(tmp_path / "f" / "config.json")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert oid == same_regular.git_oid
    remote = {
        ".gitattributes": RemoteFile(".gitattributes", 10, "a" * 40),
        "model.safetensors": RemoteFile(
            "model.safetensors", 7, "b" * 40, hashlib.sha256(b"weights").hexdigest()
        ),
        "config.json": RemoteFile("config.json", 2, same_regular.git_oid),
        "tokenizer.json": RemoteFile("tokenizer.json", 3, hashlib.sha1(b"blob 3\0old").hexdigest()),
        "model-00001-of-00002.safetensors": RemoteFile(
            "model-00001-of-00002.safetensors", 5, "c" * 40, "d" * 64
        ),
        "pytorch_model.bin": RemoteFile("pytorch_model.bin", 9, "e" * 40, "f" * 64),
    }
    local = {f.path: f for f in sorted([same_lfs, same_regular, changed, new], key=lambda f: f.path)}
    plan = {item.path: (item.action, item.size) for item in compute_plan(local, remote)}
    assert plan == {
        "config.json": ("unchanged", 2),
        "model.safetensors": ("unchanged", 7),
        "release.json": ("add", 3),
        "tokenizer.json": ("replace", 3),
        "model-00001-of-00002.safetensors": ("delete", 5),
        "pytorch_model.bin": ("delete", 9),
    }  # .gitattributes is never deleted
    assert not tree_matches(local, remote)
    assert tree_matches(local, {p: r for p, r in remote.items() if p in local or p == ".gitattributes"} | {
        "tokenizer.json": RemoteFile("tokenizer.json", 3, changed.git_oid),
        "release.json": RemoteFile("release.json", 3, new.git_oid),
    })  # fmt: skip


def test_folder_must_be_exactly_what_verification_passed(release_dir):
    folder = release_dir()
    release = read_release_folder(folder)
    assert "README.md" in release.files and ".eval_results/demo.yaml" in release.files  # written after verify
    assert list(release.files) == sorted(release.files)

    (folder / "README.md").write_text("---\nlicense: mit\n---\nedited card\n")  # the card may change
    read_release_folder(folder)

    (folder / "config.json").write_text((folder / "config.json").read_text().replace("32", "33", 1))
    (folder / "stray.txt").write_text("left over")
    with pytest.raises(
        PublishError, match=r"changed since verification: config.json; not verified: stray.txt"
    ):
        read_release_folder(folder)

    report = folder.parent / "verification.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "passed": False}))
    with pytest.raises(PublishError, match="did not pass"):
        read_release_folder(folder)
    with pytest.raises(UsageError, match="no verification report"):
        read_release_folder(folder, folder / "missing.json")


def _http_error(status: int, headers: dict | None = None):
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import httpx  # the HTTP client huggingface_hub is built on

    request = httpx.Request("POST", "http://127.0.0.1/api/x")
    return HfHubHTTPError(
        f"{status} error", response=httpx.Response(status, headers=headers, request=request)
    )


def test_retry_backs_off_on_transient_errors_only():
    from huggingface_hub.utils import httpx

    sleeps: list[float] = []
    policy = RetryPolicy(attempts=4, base_delay=1.0, max_delay=3.0, jitter=0.0, sleep=sleeps.append)
    outcomes = [_http_error(503), httpx.ConnectError("refused"), httpx.RemoteProtocolError("dropped"), "ok"]

    def flaky():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert call_with_retry(flaky, what="read", policy=policy) == "ok"
    assert sleeps == [1.0, 2.0, 3.0]  # exponential, capped

    sleeps.clear()
    calls = []
    with pytest.raises(Exception, match="404 error"):
        call_with_retry(
            lambda: calls.append(1) or (_ for _ in ()).throw(_http_error(404)), what="x", policy=policy
        )
    assert calls == [1] and sleeps == []  # a 4xx is final

    outcomes[:] = [_http_error(429, {"Retry-After": "2"}), "ok"]
    assert call_with_retry(flaky, what="read", policy=policy) == "ok" and sleeps == [2.0]

    outcomes[:] = [_http_error(500)] * 4
    with pytest.raises(Exception, match="500 error"):
        call_with_retry(flaky, what="read", policy=policy)


def test_cleanup_retries_twice_as_long_and_stays_bounded():
    policy = RetryPolicy(attempts=5, base_delay=2.0, max_delay=30.0, jitter=0.25)
    patient = policy.patient()
    assert patient.attempts == 10 and patient.base_delay == 2.0 and patient.max_delay == 30.0
    assert max_wait(policy) < max_wait(patient) <= 9 * 30.0 * 1.25  # about three minutes at most


def max_wait(policy: RetryPolicy) -> float:
    """The longest the policy's own back-off can wait in total between its attempts, in seconds."""
    return sum(
        min(policy.max_delay, policy.base_delay * 2 ** (n - 1)) * (1 + policy.jitter)
        for n in range(1, policy.attempts)
    )


# --- publishing ------------------------------------------------------------------------------------


class _CountedReads:
    """Bytes read from each weights file of ``folder`` through ``open`` (hashing and uploading alike)."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch):
        import builtins
        import io

        self.bytes: dict[str, int] = {}
        self.sizes = {p.name: p.stat().st_size for p in folder.glob("*.safetensors")}
        counted = self.bytes
        real_open = builtins.open

        class Counting(io.BufferedReader):
            def _count(self, n: int) -> int:
                counted[Path(self.name).name] = counted.get(Path(self.name).name, 0) + n
                return n

            def read(self, size=-1):
                data = super().read(size)
                self._count(len(data))
                return data

            def read1(self, size=-1):
                data = super().read1(size)
                self._count(len(data))
                return data

            def readinto(self, buffer):
                return self._count(super().readinto(buffer) or 0)

        def counting_open(file, mode="r", *args, **kwargs):
            path = Path(file) if isinstance(file, (str, Path)) else None
            if (
                path is not None
                and mode == "rb"
                and path.parent.resolve() == folder.resolve()
                and (path.suffix == ".safetensors")
            ):
                return Counting(io.FileIO(path, "rb"))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(io, "open", counting_open)  # pathlib's read_bytes

    def passes(self) -> dict[str, float]:
        """Full reads per weights file: bytes read over its size."""
        return {name: self.bytes.get(name, 0) / size for name, size in self.sizes.items()}


def test_the_weights_are_read_once_to_hash_and_once_to_upload(hub, publish, release_dir, monkeypatch):  # noqa: F811
    import huggingface_hub._commit_api

    import release.publish.publisher

    folder = release_dir("v1")
    # The tiny shards (100 kB) as large files: at 1B every shard goes this way.
    monkeypatch.setattr(release.publish.publisher, "IN_MEMORY_LIMIT", 1000)
    reads = _CountedReads(folder, monkeypatch)
    real_upload, uploads = huggingface_hub._commit_api._upload_files, []

    def upload_files(*, additions, **kwargs):  # the transfer layer (hf_xet reads every file it is given)
        uploads.append(sorted(op.path_in_repo for op in additions))
        return real_upload(additions=additions, **kwargs)

    monkeypatch.setattr(huggingface_hub._commit_api, "_upload_files", upload_files)
    result = publish(folder, "v1.0.0", real_check=False)

    assert result.created and len(reads.sizes) == 3
    assert uploads == [sorted(reads.sizes)]  # staged once; landing copies them from the staged commit
    print(f"\nfull reads of each weights file per release: {reads.passes()}")
    # One pass hashes the folder (and checks SHA256SUMS against it), one uploads it to the staging branch; the
    # landing commit names the same LFS objects and reads nothing.
    assert reads.passes() == dict.fromkeys(reads.sizes, 2.0)


def test_first_release_is_one_checked_commit_on_main_and_a_tag(hub, publish, release_dir):
    folder = release_dir("v1")
    result = publish(folder, "v1.0.0", private=True)

    refs = hub.refs(REPO)
    assert result.created and result.commit == refs.branches["main"] == refs.tags["v1.0.0"]
    assert set(refs.branches) == {"main"}  # the staging branch is gone
    assert result.revision_url == f"{hub.url}/{REPO}/tree/v1.0.0"
    assert _release_content(hub, "v1.0.0") == _files(folder)
    assert len([n for n in _files(folder) if n.endswith(".safetensors")]) == 3
    commits = hub.commits(REPO)
    assert [c.title for c in commits] == ["Release v1.0.0", "initial commit"]  # exactly one commit on main
    assert hub.is_private(REPO)
    # every release file in one create_commit per branch: staging, then main
    assert [r.path for r in hub.mutating_requests() if "/commit/" in r.path] == [
        f"/api/models/{REPO}/commit/release-staging/v1.0.0",
        f"/api/models/{REPO}/commit/main",
    ]
    # LFS objects were uploaded once, for the staging commit; main re-used them
    assert all(r.method == "PUT" for r in hub.requests if r.path.startswith("/_emulator/lfs/"))
    uploads = [r for r in hub.requests if r.path.startswith("/_emulator/lfs/")]
    assert len(uploads) == len({r.path for r in uploads}) >= 3


def test_second_release_with_fewer_shards_deletes_stale_files_in_the_same_commit(hub, publish, release_dir):
    hub.create_repo(REPO)
    hub.commit(
        REPO, {"pytorch_model.bin": b"\0old pickle", "model.safetensors": b"\0stray"}, message="old upload"
    )
    first = publish(release_dir("v1"), "v1.0.0")
    assert "pytorch_model.bin" not in hub.repo_files(REPO, "v1.0.0")

    folder = release_dir("v2")
    result = publish(folder, "v1.1.0")
    actions = {item.path: item.action for item in result.plan.files}
    assert actions["model-00003-of-00003.safetensors"] == "delete"
    assert actions["config.json"] == "unchanged" and actions["model.safetensors.index.json"] == "replace"
    assert _release_content(hub, "v1.1.0") == _files(folder)  # no stale shard survived
    assert ".gitattributes" in hub.repo_files(REPO, "main")
    main = hub.commits(REPO)
    assert main[0].sha == result.commit and main[1].sha == first.commit  # one commit per release
    assert hub.refs(REPO).tags == {"v1.0.0": first.commit, "v1.1.0": result.commit}
    assert _release_content(hub, "v1.0.0") == _files(
        release_dir("v1")
    )  # the old tag still pins the old files


def test_identical_rerun_makes_no_request_that_mutates(hub, publish, release_dir):
    folder = release_dir("v1")
    first = publish(folder, "v1.0.0", real_check=False)
    hub.clear_requests()
    again = publish(folder, "v1.0.0")
    assert hub.mutating_requests() == []
    assert (again.created, again.commit) == (False, first.commit)
    assert len(hub.commits(REPO)) == 2


def test_visibility_changes_only_after_the_release_is_in_place(hub, publish, release_dir):
    publish(release_dir("v1"), "v1.0.0", private=True, real_check=False)
    assert hub.is_private(REPO)
    hub.clear_requests()
    assert publish(release_dir("v1"), "v1.0.0", private=False).created is False
    assert not hub.is_private(REPO)
    assert [r.path for r in hub.mutating_requests()] == [f"/api/models/{REPO}/settings"]


def test_a_leftover_staging_branch_is_replaced_not_reused(hub, publish, release_dir):
    hub.create_repo(REPO)
    hub.create_branch(REPO, "release-staging/v1.0.0")
    hub.commit(REPO, {"half-uploaded.bin": b"\0junk"}, branch="release-staging/v1.0.0")
    result = publish(release_dir("v1"), "v1.0.0", real_check=False)
    assert set(hub.refs(REPO).branches) == {"main"}
    assert "half-uploaded.bin" not in hub.repo_files(REPO, result.commit)


def test_same_version_with_other_bytes_is_refused_naming_the_tagged_commit(hub, publish, release_dir):
    first = publish(release_dir("v1"), "v1.0.0", real_check=False)
    hub.clear_requests()
    with pytest.raises(
        VersionConflictError, match=f"v1.0.0 is already published .* at commit {first.commit}"
    ):
        publish(release_dir("other"), "v1.0.0")
    assert hub.mutating_requests() == []
    assert hub.refs(REPO).tags == {"v1.0.0": first.commit}


def test_a_tag_is_judged_by_its_commit_not_its_existence(hub, publish, release_dir):
    hub.create_repo(REPO)
    hub.create_tag(REPO, "v1.0.0")  # someone tagged the initial commit
    with pytest.raises(VersionConflictError, match="add config.json"):
        publish(release_dir("v1"), "v1.0.0")


def test_prerelease_goes_to_its_own_branch_and_leaves_main_alone(hub, publish, release_dir):
    hub.create_repo(REPO)
    main_before = hub.resolve(REPO, "main")
    result = publish(release_dir("v1"), "v1.1.0-rc.1")

    refs = hub.refs(REPO)
    assert refs.branches == {"main": main_before, "release/v1.1.0-rc.1": result.commit}
    assert refs.tags == {"v1.1.0-rc.1": result.commit} and result.branch == "release/v1.1.0-rc.1"
    assert _release_content(hub, "v1.1.0-rc.1") == _files(release_dir("v1"))
    # re-running the prerelease is a no-op; a second release candidate gets its own branch
    assert publish(release_dir("v1"), "v1.1.0-rc.1").created is False
    rc2 = publish(release_dir("v2"), "v1.1.0-rc.2", real_check=False)
    assert hub.resolve(REPO, "main") == main_before and hub.resolve(REPO, "release/v1.1.0-rc.2") == rc2.commit


def test_concurrent_push_fails_cleanly_and_a_rerun_completes(hub, publish, release_dir):
    hub.create_repo(REPO)
    push = hub.inject_concurrent_push(REPO, "main")
    with pytest.raises(ConcurrentPushError, match=r"main of acme/tiny-gpt moved from \w{12} to \w{12}"):
        publish(release_dir("v1"), "v1.0.0", real_check=False)

    refs = hub.refs(REPO)
    assert refs.tags == {} and refs.branches == {"main": push.commit_sha}  # theirs only; no staging branch
    assert len(publish.checked) == 1  # the staged commit passed; landing on main is what was refused
    assert list(hub.repo_files(REPO, "main")) == [".gitattributes", "CONCURRENT_PUSH.md"]

    result = publish(release_dir("v1"), "v1.0.0", real_check=False)
    assert hub.commits(REPO)[1].sha == push.commit_sha and hub.resolve(REPO, "v1.0.0") == result.commit
    assert _release_content(hub, "v1.0.0") == _files(release_dir("v1"))


def test_5xx_during_lfs_upload_is_retried(hub, publish, release_dir, hf_backoff_sleeps):
    fault = hub.inject_fault("PUT", r"^/_emulator/lfs/", status=503, times=2)
    result = publish(release_dir("v1"), "v1.0.0", real_check=False)
    assert fault.fired == 2 and hf_backoff_sleeps  # huggingface_hub's own retries rode it out
    assert _release_content(hub, result.tag) == _files(release_dir("v1"))


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("PUT", r"^/_emulator/lfs/", 500, "commit to release-staging/v1.0.0 .* failed after 3 attempts"),
        ("POST", r"/commit/main$", 503, "commit to main .* failed after 3 attempts.* nothing was tagged"),
    ],
    ids=["lfs-upload", "main-commit"],
)
def test_persistent_5xx_fails_cleanly_leaving_main_and_tags_then_rerun_completes(
    hub, publish, release_dir, hf_backoff_sleeps, method, path, status, message
):
    hub.create_repo(REPO)
    main_before = hub.resolve(REPO, "main")
    hub.inject_fault(method, path, status=status, times=1000)
    with pytest.raises(PublishError, match=message):
        publish(release_dir("v1"), "v1.0.0", real_check=False)
    assert hub.refs(REPO).branches == {"main": main_before} and hub.refs(REPO).tags == {}
    assert len(publish.sleeps) == 2  # our own back-off between the three commit attempts

    hub.clear_faults()
    result = publish(release_dir("v1"), "v1.0.0", real_check=False)
    assert result.created and hub.resolve(REPO, "v1.0.0") == hub.resolve(REPO, "main")


@pytest.mark.parametrize("branch", ["release-staging/v1.0.0", "main"])
def test_5xx_on_a_commit_is_retried(hub, publish, release_dir, branch):
    fault = hub.inject_fault("POST", rf"/commit/{re.escape(branch)}$", status=502)
    result = publish(release_dir("v1"), "v1.0.0", real_check=False)
    assert fault.fired == 1 and len(publish.sleeps) == 1
    assert [c.title for c in hub.commits(REPO)] == ["Release v1.0.0", "initial commit"]
    assert hub.resolve(REPO, "v1.0.0") == result.commit


def test_a_commit_whose_response_was_lost_is_recognised_not_repeated(hub, publish, release_dir):
    fault = hub.inject_fault("POST", r"/commit/main$", drop_connection=True, after_handling=True)
    result = publish(release_dir("v1"), "v1.0.0", real_check=False)
    assert fault.fired == 1
    assert [c.title for c in hub.commits(REPO)] == ["Release v1.0.0", "initial commit"]  # no duplicate
    assert hub.resolve(REPO, "v1.0.0") == result.commit == hub.resolve(REPO, "main")


def test_a_run_that_died_before_tagging_is_completed_without_a_new_commit(hub, publish, release_dir):
    hub.inject_fault("POST", r"/tag/", status=500, times=1000)
    with pytest.raises(PublishError, match="creating tag v1.0.0 .* re-run to check and tag it"):
        publish(release_dir("v1"), "v1.0.0", real_check=False)
    landed = hub.resolve(REPO, "main")
    assert hub.refs(REPO).tags == {}

    hub.clear_faults()
    hub.clear_requests()
    result = publish(release_dir("v1"), "v1.0.0", real_check=False)
    assert result.commit == landed and hub.resolve(REPO, "v1.0.0") == landed
    assert not any("/commit/" in r.path for r in hub.mutating_requests())
    assert len(publish.checked) == 2 and publish.checked[-1] == landed  # checked again before it was tagged


def test_a_folder_changed_during_the_release_never_reaches_main(hub, publish, release_dir):
    folder = release_dir("v1")

    def check_then_edit(repo_id: str, commit: str) -> list[str]:
        (folder / "generation_config.json").write_text("{}")  # e.g. an editor saving while the check runs
        return []

    hub.create_repo(REPO)
    main_before = hub.resolve(REPO, "main")
    with pytest.raises(
        PublishError, match="generation_config.json changed since the release folder was checked"
    ):
        publish(folder, "v1.0.0", post_upload_check=check_then_edit)
    assert hub.refs(REPO).branches == {"main": main_before} and hub.refs(REPO).tags == {}


def test_broken_modeling_file_fails_the_post_upload_check_and_nothing_is_tagged(hub, publish, release_dir):
    folder = release_dir("v1")
    _negate_logits(folder)
    _restamp_report(folder)  # local checks pass: the report vouches for the (broken) folder

    hub.create_repo(REPO)
    main_before = hub.resolve(REPO, "main")
    with pytest.raises(
        VerificationError, match="failed the post-upload check; nothing was tagged and main"
    ) as err:
        publish(folder, "v1.0.0")
    assert err.value.failures
    assert hub.refs(REPO).branches == {"main": main_before} and hub.refs(REPO).tags == {}


def test_a_card_whose_code_breaks_fails_the_post_upload_check_and_nothing_is_tagged(
    hub, publish, release_dir
):
    """The uploaded card's code runs verbatim against the uploaded files; a broken line stops the release."""
    from release.verify.usage import usage_snippet

    folder = release_dir("v1")
    report = json.loads((folder.parent / "verification.json").read_text())
    code = usage_snippet(repo_id=REPO, version="v1.0.0", verification=report)
    assert "inputs = tokenizer(" in code
    (folder / "README.md").write_text(
        "# tiny-gpt\n\n" + code.replace("inputs = tokenizer(", "inputs = tokenizr(")
    )

    hub.create_repo(REPO)
    main_before = hub.resolve(REPO, "main")
    with pytest.raises(VerificationError, match="failed the post-upload check; nothing was tagged") as err:
        publish(folder, "v1.0.0")
    assert any(
        f.startswith("card_snippet: card snippet line") and "tokenizr" in f for f in err.value.failures
    )
    assert hub.refs(REPO).branches == {"main": main_before} and hub.refs(REPO).tags == {}


def test_dry_run_plans_every_file_without_a_token_or_a_write(hub, release_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub.create_repo(REPO)
    hub.commit(REPO, {"pytorch_model.bin": b"\0old"})
    folder = release_dir("v1")
    result = CliRunner().invoke(
        cli, ["publish", str(folder), "--repo-id", REPO, "--version", "v1.0.0", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert hub.mutating_requests() == []
    assert "repo:   acme/tiny-gpt" in result.output and "tag:    v1.0.0" in result.output
    for path, content in _files(folder).items():
        assert re.search(rf"add\s+{re.escape(path)}\s+{len(content)} B", result.output), path
    assert re.search(r"delete\s+pytorch_model.bin\s+4 B", result.output)


def test_dry_run_works_offline(release_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from release.publish.publisher import publish_release

    result = publish_release(release_dir("v1"), repo_id=REPO, version="v1.0.0", dry_run=True)
    assert result.plan.remote_state == "offline" and result.commit is None
    assert {item.action for item in result.plan.files} == {"add"}
    assert "remote state unknown: offline" in "\n".join(result.plan.format_lines())


def test_no_token_is_refused_before_any_write(hub, release_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from release.publish.publisher import publish_release

    with pytest.raises(PublishError, match="no Hub credentials: set HF_TOKEN"):
        publish_release(release_dir("v1"), repo_id=REPO, version="v1.0.0")
    assert hub.requests == []


def test_the_canary_token_appears_nowhere(
    hub, hub_token, release_dir, tmp_path, hf_home, caplog, capfd, fast_cli_retries
):
    hub.accepted_tokens, hub.require_token = frozenset({hub_token}), True
    runner = CliRunner()
    folder = release_dir("v1")
    args = [
        "publish",
        str(folder),
        "--repo-id",
        REPO,
        "--version",
        "v1.0.0",
        "--json",
        str(tmp_path / "r.json"),
    ]
    ok = runner.invoke(cli, args)
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "r.json").read_text())["commit"] == hub.resolve(REPO, "v1.0.0")
    hub.inject_fault("GET", r"/refs$", status=503, times=1000)
    failed = runner.invoke(cli, ["publish", str(folder), "--repo-id", REPO, "--version", "v1.0.1"])
    assert (
        failed.exit_code == 1
        and "Error: list refs of acme/tiny-gpt failed: Server error '503" in failed.output
    )

    captured = capfd.readouterr()
    for text in (ok.output, failed.output, caplog.text, captured.out, captured.err):
        assert hub_token not in text
    written = [p for root in (tmp_path, hf_home) for p in root.rglob("*") if p.is_file()]
    assert written and not [p for p in written if hub_token.encode() in p.read_bytes()]
    assert hub.secret_locations(hub_token) == []
    # it was used, and only ever in the Authorization header (LFS uploads go to pre-authorised URLs)
    assert all(r.authorized for r in hub.mutating_requests() if r.path.startswith("/api/"))


def test_oidc_trusted_publishing_uses_the_exchanged_token(hub, release_dir, monkeypatch, publish):
    import huggingface_hub._oidc
    import huggingface_hub.utils._auth

    exchanged = "hf_oidc_" + os.urandom(8).hex()
    calls = []

    def fake_oidc_login(*, resource, subject_token=None, **_):
        calls.append((resource, subject_token))
        return {"access_token": exchanged, "expires_in": 3600}

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_OIDC_RESOURCE", REPO)
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", "github-id-token")
    monkeypatch.setattr(huggingface_hub._oidc, "oidc_login", fake_oidc_login)
    monkeypatch.setattr(huggingface_hub.utils._auth, "_OIDC_TOKEN_CACHE", None)
    hub.accepted_tokens, hub.require_token = frozenset({exchanged}), True

    result = publish(release_dir("v1"), "v1.0.0")
    assert result.created and calls == [(REPO, "github-id-token")]
    assert hub.secret_locations(exchanged) == [] and hub.secret_locations("github-id-token") == []


def test_publish_command_has_no_token_option():
    result = CliRunner().invoke(cli, ["publish", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "HF_OIDC_RESOURCE" in result.output
    options = [opt for param in cli.commands["publish"].params for opt in param.opts + param.secondary_opts]
    assert "--repo-id" in options and not [opt for opt in options if "token" in opt.lower()]


def test_published_tag_loads_in_a_fresh_process_and_generates_like_the_training_module(
    hub, hub_token, builds, release_dir, tokenizer_dir, tmp_path
):
    from transformers import AutoTokenizer

    folder = release_dir("v1")
    result = CliRunner().invoke(cli, ["publish", str(folder), "--repo-id", REPO, "--version", "v1.0.0"])
    assert result.exit_code == 0, result.output
    hub.commit(REPO, {"NEWER.md": b"main moved on"})  # the tag, not main, is what users pin

    code = f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({REPO!r}, revision="v1.0.0", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained({REPO!r}, revision="v1.0.0", trust_remote_code=True).eval()
ids = tok({PROMPT_TEXT!r}, return_tensors="pt").input_ids
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens={MAX_NEW_TOKENS}, do_sample=False)
print(json.dumps(out.tolist()))
"""
    proc = run_isolated(code, cwd=tmp_path, env=hub_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]

    _, training_module = builds["v1"]
    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(PROMPT_TEXT, return_tensors="pt").input_ids
    expected = training_module.generate_greedy(ids, MAX_NEW_TOKENS, eos_token_id=EOS).tolist()
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected
    assert len(expected[0]) > ids.shape[1]


# --- transient Hub faults (issue #18) ----------------------------------------------------------------


def test_an_unreachable_hub_during_the_check_is_not_a_failed_verification(
    hub, hub_token, release_dir, tmp_path, fast_cli_retries, hf_backoff_sleeps
):
    folder = release_dir("v1")
    hub.create_repo(REPO)
    main_before = hub.resolve(REPO, "main")
    fault = hub.inject_fault("GET", r"/resolve/", status=503, times=1000)
    result = CliRunner().invoke(
        cli, ["publish", str(folder), "--repo-id", REPO, "--version", "v1.0.0"], catch_exceptions=False
    )
    # the download was retried under the policy (the CLI's default: 5 attempts)
    assert result.exit_code == 1 and fault.fired >= 5
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "could not check staged commit" in errors[0], result.output
    assert "503" in errors[0] and "5 attempts; the Hub could not be reached" in errors[0]
    assert "post-upload check failed" not in result.output and "FAILED" not in result.output
    rerun = f"Re-run to complete the release: release publish {folder} --repo-id {REPO} --version v1.0.0"
    assert rerun in result.output
    assert hub.refs(REPO).branches == {"main": main_before} and hub.refs(REPO).tags == {}  # no staging left

    hub.clear_faults()
    again = CliRunner().invoke(cli, rerun.split(": ", 1)[1].split()[1:])  # the printed command, as is
    assert again.exit_code == 0, again.output
    assert _release_content(hub, "v1.0.0") == _files(folder)


def test_a_broken_model_is_still_a_verification_failure_when_the_download_needed_retries(
    hub, publish, release_dir, hf_backoff_sleeps
):
    folder = release_dir("v1")
    _negate_logits(folder)
    _restamp_report(folder)
    fault = hub.inject_fault(None, r"/resolve/", drop_connection=True, times=2)
    with pytest.raises(VerificationError, match="does not reproduce the recorded generations") as err:
        publish(folder, "v1.0.0")
    assert fault.fired == 2 and any("generation:" in line for line in err.value.failures)
    assert hub.refs(REPO).tags == {} and list(hub.refs(REPO).branches) == ["main"]


def test_publish_prints_where_it_is(hub, hub_token, release_dir, fast_cli_retries):
    result = CliRunner().invoke(
        cli, ["publish", str(release_dir("v1")), "--repo-id", REPO, "--version", "v1.0.0"]
    )
    assert result.exit_code == 0, result.output
    steps = [line.split(":", 1)[0] for line in result.output.splitlines()]
    assert [s for s in steps if s in ("staging", "checking", "landing", "tagging")] == [
        "staging",
        "checking",
        "landing",
        "tagging",
    ]
    assert re.search(r"^tagging: v1\.0\.0 at [0-9a-f]{12}$", result.output, re.M)


def test_a_staging_branch_that_cannot_be_deleted_is_reported_and_removed_by_the_next_publish(
    hub, hub_token, release_dir, tmp_path, monkeypatch, fast_cli_retries
):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "outputs"))
    monkeypatch.setenv("GITHUB_REF_TYPE", "tag")  # a real release runs on its tag
    monkeypatch.setenv("GITHUB_REF_NAME", "v1.0.0")
    fault = hub.inject_fault("DELETE", r"/branch/release-staging/", status=503, times=1000)
    out = tmp_path / "publish.json"
    args = ["publish", str(release_dir("v1")), "--repo-id", REPO, "--version", "v1.0.0", "--json", str(out)]
    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 0, result.output  # the release itself is complete and tagged
    assert fault.fired == 10  # twice the policy's 5 attempts before giving up
    assert hub.refs(REPO).tags["v1.0.0"] == hub.resolve(REPO, "main")
    assert "release-staging/v1.0.0" in hub.refs(REPO).branches
    warning = re.search(
        r"^Warning: cleanup pending: branch release-staging/v1\.0\.0 .*$", result.output, re.M
    )
    assert warning and "503" in warning.group(0) and "the next `release publish`" in warning.group(0)
    assert "cleanup pending: branch release-staging/v1.0.0" in summary.read_text()
    written = json.loads(out.read_text())
    assert [item["branch"] for item in written["cleanup_pending"]] == ["release-staging/v1.0.0"]
    assert written["warnings"] and written["warnings"][0].startswith("cleanup pending")

    hub.clear_faults()
    monkeypatch.setenv("GITHUB_REF_NAME", "v1.1.0")
    dry = CliRunner().invoke(
        cli, ["publish", str(release_dir("v2")), "--repo-id", REPO, "--version", "v1.1.0", "--dry-run"]
    )
    assert "cleanup: delete release-staging/v1.0.0 (its release is tagged)" in dry.output
    assert "release-staging/v1.0.0" in hub.refs(REPO).branches  # a dry run deletes nothing

    from release.publish.publisher import publish_release

    later = publish_release(
        release_dir("v2"),
        repo_id=REPO,
        version="v1.1.0",
        retry=RetryPolicy(attempts=3, base_delay=0.0),
        post_upload_check=lambda repo_id, commit: [],
    )
    assert later.cleaned_up == ("release-staging/v1.0.0",) and later.cleanup_pending == ()
    assert set(hub.refs(REPO).branches) == {"main"}


def test_a_rerun_of_a_tagged_release_removes_its_leftover_staging_branch(hub, publish, release_dir):
    first = publish(release_dir("v1"), "v1.0.0", real_check=False)
    hub.create_branch(REPO, "release-staging/v1.0.0", revision=first.commit)  # as a failed delete leaves it
    hub.create_branch(REPO, "release-staging/v9.0.0", revision=first.commit)  # someone's release in progress
    again = publish(release_dir("v1"), "v1.0.0")
    assert (again.created, again.cleaned_up) == (False, ("release-staging/v1.0.0",))
    assert set(hub.refs(REPO).branches) == {"main", "release-staging/v9.0.0"}  # untagged: not ours to remove


# --- older release lines (issue #17) -----------------------------------------------------------------


def test_a_patch_to_an_older_line_lands_on_its_line_branch_and_main_keeps_the_newest(
    hub, publish, release_dir
):
    v100 = publish(release_dir("v1"), "v1.0.0", real_check=False)
    v110 = publish(release_dir("v2"), "v1.1.0", real_check=False)
    assert hub.resolve(REPO, "main") == v110.commit

    dry = publish(release_dir("other"), "v1.0.1", dry_run=True)
    assert (dry.branch, dry.plan.base_ref, dry.plan.base_commit) == ("release/v1.0", "v1.0.0", v100.commit)

    v101 = publish(release_dir("other"), "v1.0.1", real_check=False)
    refs = hub.refs(REPO)
    assert v101.branch == "release/v1.0" and v101.created
    assert refs.branches == {"main": v110.commit, "release/v1.0": v101.commit}  # main still holds v1.1.0
    assert refs.tags == {"v1.0.0": v100.commit, "v1.1.0": v110.commit, "v1.0.1": v101.commit}
    assert _release_content(hub, "v1.0.1") == _files(release_dir("other"))
    assert _release_content(hub, "main") == _files(release_dir("v2"))
    line = hub.commits(REPO, "release/v1.0")
    assert [c.sha for c in line[:2]] == [v101.commit, v100.commit]  # the line continues from v1.0.0
    assert v101.revision_url.endswith("/tree/v1.0.1")

    # the next patch of that line goes onto the existing line branch, with one commit; main is untouched
    v102 = publish(release_dir("v1"), "v1.0.2", real_check=False)
    assert hub.refs(REPO).branches == {"main": v110.commit, "release/v1.0": v102.commit}
    assert hub.commits(REPO, "release/v1.0")[1].sha == v101.commit
    assert publish(release_dir("v1"), "v1.0.2").created is False  # an identical re-run is still a no-op

    # a newer release moves main again
    v120 = publish(release_dir("other"), "v1.2.0", real_check=False)
    assert hub.resolve(REPO, "main") == v120.commit and hub.resolve(REPO, "release/v1.0") == v102.commit
