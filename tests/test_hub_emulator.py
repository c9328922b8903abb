"""The Hub emulator, exercised through the real huggingface_hub and transformers clients over HTTP.

These tests pin down both the emulator and the client behaviour the publisher relies on: which calls
huggingface_hub retries by itself, which errors it raises, and what a revision contains afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import (
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session

from tests.hub_emulator import LFS_SIZE_THRESHOLD, HubEmulator

REPO = "acme/tiny-gpt"
RC_BRANCH = "release/v1.0.0-rc.1"
GPT2_CONFIG = {
    "model_type": "gpt2",
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 8,
    "vocab_size": 16,
    "n_positions": 32,
}


@pytest.fixture
def api(hub: HubEmulator, hub_token: str) -> HfApi:
    return HfApi()


@pytest.fixture
def repo(hub: HubEmulator) -> str:
    hub.create_repo(REPO)
    return REPO


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def test_create_repo_is_idempotent_with_exist_ok_and_starts_like_the_hub(
    hub: HubEmulator, api: HfApi
) -> None:
    url = api.create_repo(REPO)
    assert url == f"{hub.url}/{REPO}" and url.repo_id == REPO

    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO)
    assert conflict.value.response.status_code == 409

    # Like the Hub: one "initial commit" holding the default .gitattributes.
    (initial,) = hub.commits(REPO)
    assert (initial.title, initial.author) == ("initial commit", "system")
    assert list(hub.repo_files(REPO)) == [".gitattributes"]
    assert b"*.safetensors filter=lfs" in hub.repo_files(REPO)[".gitattributes"]


def test_private_repo_is_invisible_without_a_token(hub: HubEmulator, api: HfApi) -> None:
    api.create_repo("acme/secret", private=True)
    assert hub.is_private("acme/secret")
    assert api.model_info("acme/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/secret", token=False)


def test_upload_folder_decides_lfs_like_the_hub(
    hub: HubEmulator, api: HfApi, repo: str, tmp_path: Path
) -> None:
    big_text = b"a" * (LFS_SIZE_THRESHOLD + 1)
    folder = _write(
        tmp_path / "out",
        {
            "config.json": json.dumps(GPT2_CONFIG).encode(),
            "model.safetensors": b"not really a safetensors file",  # LFS by .gitattributes pattern
            "big.txt": big_text,  # LFS by size
            "weights.dat": b"\x00\x01binary",  # LFS because binary
            "docs/notes.md": b"# notes\n",
        },
    )
    info = api.upload_folder(repo_id=repo, folder_path=folder, commit_message="Upload v1")

    assert hub.resolve(repo) == info.oid
    entries = hub.file_entries(repo)
    assert {path for path, entry in entries.items() if entry.lfs} == {
        "model.safetensors",
        "big.txt",
        "weights.dat",
    }
    files = hub.repo_files(repo)
    assert files["big.txt"] == big_text and files["docs/notes.md"] == b"# notes\n"
    # The LFS "basic" transfer PUTs the bytes to the href the batch API returned, without the token.
    puts = [r for r in hub.requests if r.method == "PUT"]
    assert len(puts) == 3 and not any(r.authorized for r in puts)
    assert [r.path for r in hub.requests if r.path.endswith("/commit/main")] == [
        f"/api/models/{repo}/commit/main"
    ]


def test_create_commit_adds_and_deletes_in_one_commit(hub: HubEmulator, api: HfApi, repo: str) -> None:
    hub.commit(repo, {"old.txt": b"old", "shards/a.bin": b"a", "shards/b.bin": b"b", "keep.txt": b"keep"})
    before = len(hub.commits(repo))

    api.create_commit(
        repo,
        operations=[
            CommitOperationAdd("new.txt", b"new"),
            CommitOperationAdd("model.safetensors", b"\x00weights"),
            CommitOperationDelete("old.txt"),
            CommitOperationDelete("shards/"),
        ],
        commit_message="Replace weights",
        commit_description="Longer description",
    )

    assert len(hub.commits(repo)) == before + 1
    head = hub.commits(repo)[0]
    assert (head.title, head.description) == ("Replace weights", "Longer description")
    assert sorted(hub.repo_files(repo)) == [".gitattributes", "keep.txt", "model.safetensors", "new.txt"]
    # Earlier commits are immutable snapshots.
    assert "old.txt" in hub.repo_files(repo, head.parent)


def test_deleting_a_missing_file_is_an_entry_not_found(api: HfApi, repo: str) -> None:
    with pytest.raises(EntryNotFoundError):
        api.delete_file("missing.txt", repo_id=repo)


def test_unchanged_files_are_not_committed_again(hub: HubEmulator, api: HfApi, repo: str) -> None:
    first = api.upload_file(path_or_fileobj=b"same", path_in_repo="a.txt", repo_id=repo)
    lfs_first = api.upload_file(path_or_fileobj=b"\x00same", path_in_repo="a.bin", repo_id=repo)
    commits = len(hub.commits(repo))

    # The preupload answer carries each file's remote oid; the client drops unchanged files.
    again = api.upload_file(path_or_fileobj=b"same", path_in_repo="a.txt", repo_id=repo)
    lfs_again = api.upload_file(path_or_fileobj=b"\x00same", path_in_repo="a.bin", repo_id=repo)

    assert len(hub.commits(repo)) == commits
    assert again.oid == lfs_again.oid == lfs_first.oid != first.oid


def test_parent_commit_mismatch_is_rejected(hub: HubEmulator, api: HfApi, repo: str) -> None:
    stale = hub.resolve(repo)
    hub.commit(repo, {"other.txt": b"someone else"})
    head = hub.resolve(repo)

    with pytest.raises(HfHubHTTPError) as rejected:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo, parent_commit=stale)

    assert rejected.value.response.status_code == 412
    assert "A commit has happened since" in str(rejected.value)
    assert hub.resolve(repo) == head


def test_concurrent_push_moves_the_branch_right_before_our_commit(
    hub: HubEmulator, api: HfApi, repo: str
) -> None:
    seen_head = api.model_info(repo).sha
    push = hub.inject_concurrent_push(repo, "main", files={"theirs.txt": b"theirs"})

    with pytest.raises(HfHubHTTPError) as rejected:
        api.upload_file(
            path_or_fileobj=b"ours", path_in_repo="ours.txt", repo_id=repo, parent_commit=seen_head
        )

    assert rejected.value.response.status_code == 412
    assert push.commit_sha is not None and hub.resolve(repo) == push.commit_sha
    assert "ours.txt" not in hub.repo_files(repo)

    # Without parent_commit the Hub simply commits on top of whatever the branch points to.
    hub.inject_concurrent_push(repo, "main", files={"theirs-again.txt": b"again"})
    api.upload_file(path_or_fileobj=b"ours", path_in_repo="ours.txt", repo_id=repo)
    assert {"theirs.txt", "theirs-again.txt", "ours.txt"} <= set(hub.repo_files(repo))


def test_tags_and_refs(hub: HubEmulator, api: HfApi, repo: str) -> None:
    first = hub.commit(repo, {"a.txt": b"1"})
    hub.commit(repo, {"a.txt": b"2"})

    api.create_tag(repo, tag="v1.0.0", revision=first, tag_message="First release")
    api.create_tag(repo, tag="v1.0.0", revision=first, exist_ok=True)
    with pytest.raises(HfHubHTTPError) as duplicate:
        api.create_tag(repo, tag="v1.0.0")
    assert duplicate.value.response.status_code == 409
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(repo, tag="v9", revision="no-such-branch")

    refs = api.list_repo_refs(repo)
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0.0", "refs/tags/v1.0.0", first)]
    assert hub.refs(repo).tags == {"v1.0.0": first}

    api.delete_tag(repo, tag="v1.0.0")
    assert api.list_repo_refs(repo).tags == [] and hub.refs(repo).tags == {}
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag(repo, tag="v1.0.0")


def test_branch_with_a_slash_from_a_revision(hub: HubEmulator, api: HfApi, repo: str) -> None:
    first = hub.commit(repo, {"a.txt": b"1"})
    hub.commit(repo, {"a.txt": b"2"})

    api.create_branch(repo, branch=RC_BRANCH, revision=first)
    api.create_branch(repo, branch=RC_BRANCH, exist_ok=True)
    api.upload_file(path_or_fileobj=b"rc", path_in_repo="rc.txt", repo_id=repo, revision=RC_BRANCH)

    assert hub.refs(repo).branches[RC_BRANCH] == hub.commits(repo, RC_BRANCH)[0].sha
    assert hub.commits(repo, RC_BRANCH)[1].sha == first
    assert hub.repo_files(repo, RC_BRANCH)["a.txt"] == b"1" and "rc.txt" not in hub.repo_files(repo)
    assert {b.name for b in api.list_repo_refs(repo).branches} == {"main", RC_BRANCH}
    with pytest.raises(BadRequestError):
        api.create_branch(repo, branch="refs/pr/5")

    api.delete_branch(repo, branch=RC_BRANCH)
    assert set(hub.refs(repo).branches) == {"main"}


@pytest.mark.parametrize("which", ["branch", "tag", "sha"])
def test_downloads_at_a_branch_a_tag_and_a_sha(hub: HubEmulator, api: HfApi, repo: str, which: str) -> None:
    v1 = hub.commit(repo, {"config.json": b'{"v": 1}', "model.safetensors": b"\x00one", "sub/x.txt": b"x1"})
    hub.create_branch(repo, RC_BRANCH, revision=v1)
    hub.create_tag(repo, "v1.0.0", revision=v1)
    hub.commit(repo, {"config.json": b'{"v": 2}', "model.safetensors": b"\x00two"}, delete=["sub/x.txt"])
    revision = {"branch": RC_BRANCH, "tag": "v1.0.0", "sha": v1}[which]

    config = huggingface_hub.hf_hub_download(repo, "config.json", revision=revision)
    weights = huggingface_hub.hf_hub_download(repo, "model.safetensors", revision=revision)
    snapshot = Path(huggingface_hub.snapshot_download(repo, revision=revision))

    assert Path(config).read_bytes() == b'{"v": 1}' and Path(weights).read_bytes() == b"\x00one"
    assert snapshot.name == v1  # the cache is keyed by the commit sha the revision resolved to
    assert sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()) == [
        ".gitattributes",
        "config.json",
        "model.safetensors",
        "sub/x.txt",
    ]
    assert api.model_info(repo, revision=revision).sha == v1


def test_download_errors_are_typed(api: HfApi, repo: str) -> None:
    with pytest.raises(RepositoryNotFoundError):
        huggingface_hub.hf_hub_download("acme/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        huggingface_hub.hf_hub_download(repo, ".gitattributes", revision="v404")
    with pytest.raises(EntryNotFoundError):
        huggingface_hub.hf_hub_download(repo, "missing.json")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo, revision="0" * 40)


def test_listing_files_tree_and_paths_info(hub: HubEmulator, api: HfApi, repo: str) -> None:
    hub.commit(
        repo, {"config.json": b"{}", "model.safetensors": b"\x00w", "a/b/c.txt": b"c", "a/d.txt": b"d"}
    )
    hub.tree_page_size = 2  # force the client through Link-header pagination

    assert sorted(api.list_repo_files(repo)) == [
        ".gitattributes",
        "a/b/c.txt",
        "a/d.txt",
        "config.json",
        "model.safetensors",
    ]
    assert len([r for r in hub.requests if "/tree/" in r.path]) == 4  # 7 entries, 2 per page

    root = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(repo)}
    assert root == {
        ".gitattributes": "RepoFile",
        "a": "RepoFolder",
        "config.json": "RepoFile",
        "model.safetensors": "RepoFile",
    }
    assert sorted(e.path for e in api.list_repo_tree(repo, path_in_repo="a", recursive=True)) == [
        "a/b",
        "a/b/c.txt",
        "a/d.txt",
    ]
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo, path_in_repo="nope"))

    infos = {
        info.path: info
        for info in api.get_paths_info(repo, ["model.safetensors", "a", "missing"], expand=True)
    }
    assert set(infos) == {"model.safetensors", "a"}
    weights = infos["model.safetensors"]
    assert weights.lfs is not None and weights.lfs.size == 2 and weights.blob_id != weights.lfs.sha256
    assert weights.last_commit.oid == hub.resolve(repo)


def test_model_info_and_commit_listing(hub: HubEmulator, api: HfApi, repo: str) -> None:
    readme = b"---\nlicense: apache-2.0\nlibrary_name: transformers\ntags: [gpt2]\n---\n# Tiny\n"
    first = hub.commit(repo, {"README.md": readme, "model.safetensors": b"\x00w"}, message="Add model")
    hub.create_tag(repo, "v1", revision=first)
    hub.commit(repo, {"extra.txt": b"e"}, message="Add extra")

    info = api.model_info(repo, revision="v1", files_metadata=True)
    assert (
        info.sha == first and info.card_data.license == "apache-2.0" and info.library_name == "transformers"
    )
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", "README.md", "model.safetensors"}
    assert siblings["model.safetensors"].lfs.size == 2 and siblings["README.md"].lfs is None
    assert api.model_info(repo).sha == hub.resolve(repo) != first

    hub.commits_page_size = 2
    titles = [c.title for c in api.list_repo_commits(repo)]
    assert titles == ["Add extra", "Add model", "initial commit"]


def test_exists_helpers(hub: HubEmulator, api: HfApi, repo: str) -> None:
    hub.commit(repo, {"config.json": b"{}"})
    hub.create_tag(repo, "v1")
    assert api.repo_exists(repo) and not api.repo_exists("acme/nope")
    assert api.revision_exists(repo, "v1") and api.revision_exists(repo, hub.resolve(repo))
    assert not api.revision_exists(repo, "v2")
    assert api.file_exists(repo, "config.json", revision="v1")
    assert not api.file_exists(repo, "missing.json") and not api.file_exists(
        repo, "config.json", revision="v2"
    )


def test_invalid_readme_front_matter_is_rejected(hub: HubEmulator, api: HfApi, repo: str) -> None:
    bad = b"---\nlicense: [unclosed\n---\n# Model\n"
    # The client asks /api/validate-yaml first and raises before uploading anything.
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(path_or_fileobj=bad, path_in_repo="README.md", repo_id=repo)
    assert not hub.mutating_requests()

    # The commit endpoint checks it too, for clients that skip the validation call.
    payload = [
        {"key": "header", "value": {"summary": "Add card"}},
        {"key": "file", "value": {"path": "README.md", "content": bad.decode(), "encoding": "utf-8"}},
    ]
    response = get_session().post(
        f"{hub.url}/api/models/{repo}/commit/main",
        content="\n".join(json.dumps(line) for line in payload),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 400 and "Invalid metadata in README.md" in response.json()["error"]
    assert list(hub.repo_files(repo)) == [".gitattributes"]


def test_commit_5xx_is_not_retried_by_the_client(hub: HubEmulator, api: HfApi, repo: str) -> None:
    fault = hub.inject_fault("POST", rf"/api/models/{repo}/commit/main$", status=500)
    commits = len(hub.commits(repo))

    with pytest.raises(HfHubHTTPError) as failed:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)

    assert failed.value.response.status_code == 500 and fault.exhausted
    assert len(hub.commits(repo)) == commits
    # The caller's own retry then succeeds.
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    assert hub.repo_files(repo)["x.txt"] == b"x"
    assert len([r for r in hub.requests if r.path.endswith("/commit/main")]) == 2


def test_fault_on_the_nth_matching_call_for_a_number_of_times(
    hub: HubEmulator, api: HfApi, repo: str
) -> None:
    fault = hub.inject_fault("GET", rf"^/api/models/{repo}$", status=503, nth=2, times=2)

    outcomes = []
    for _ in range(4):
        try:
            api.model_info(repo)  # not retried by the client: each call is one request
            outcomes.append("ok")
        except HfHubHTTPError as error:
            outcomes.append(error.response.status_code)

    assert outcomes == ["ok", 503, 503, "ok"]
    assert (fault.matched, fault.fired) == (4, 2)


def test_preupload_and_lfs_5xx_are_retried_by_the_client(
    hub: HubEmulator, api: HfApi, repo: str, hf_backoff_sleeps: list[float]
) -> None:
    preupload = hub.inject_fault("POST", r"/preupload/main$", status=503, times=2)
    batch = hub.inject_fault("POST", r"\.git/info/lfs/objects/batch$", status=502)
    upload = hub.inject_fault("PUT", r"^/_emulator/lfs/", status=500)

    api.upload_file(path_or_fileobj=b"\x00weights", path_in_repo="model.safetensors", repo_id=repo)

    assert preupload.fired == 2 and batch.fired == 1 and upload.fired == 1
    assert hf_backoff_sleeps == [1, 2, 1, 1]  # exponential back-off per call, starting at 1 s
    assert hub.repo_files(repo)["model.safetensors"] == b"\x00weights"


def test_dropped_connection_on_commit(hub: HubEmulator, api: HfApi, repo: str) -> None:
    hub.inject_fault("POST", r"/commit/main$", drop_connection=True)
    commits = len(hub.commits(repo))
    with pytest.raises(httpx2.TransportError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    assert len(hub.commits(repo)) == commits
    assert [r.dropped for r in hub.requests if r.path.endswith("/commit/main")] == [True]

    # Lost response: the commit landed but the client cannot know. A blind retry commits twice.
    hub.inject_fault("POST", r"/commit/main$", drop_connection=True, after_handling=True)
    with pytest.raises(httpx2.TransportError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    assert len(hub.commits(repo)) == commits + 1 and hub.repo_files(repo)["x.txt"] == b"x"


def test_dropped_connection_during_download_is_resumed_by_the_client(
    hub: HubEmulator, repo: str, hf_backoff_sleeps: list[float]
) -> None:
    hub.commit(repo, {"model.safetensors": b"\x00" * 1000})
    fault = hub.inject_fault("GET", r"/resolve/main/model\.safetensors$", drop_connection=True)

    path = huggingface_hub.hf_hub_download(repo, "model.safetensors")

    assert Path(path).read_bytes() == b"\x00" * 1000 and fault.fired == 1
    assert hf_backoff_sleeps == [1]


def test_range_requests(hub: HubEmulator, repo: str) -> None:
    hub.commit(repo, {"data.txt": b"0123456789"})
    url = f"{hub.url}/{repo}/resolve/main/data.txt"
    partial = get_session().get(url, headers={"Range": "bytes=2-5"})
    assert (partial.status_code, partial.content) == (206, b"2345")
    assert partial.headers["Content-Range"] == "bytes 2-5/10"
    assert get_session().get(url, headers={"Range": "bytes=-3"}).content == b"789"
    assert get_session().get(url, headers={"Range": "bytes=20-"}).status_code == 416


def test_request_log_separates_reads_from_writes_and_never_keeps_the_token(
    hub: HubEmulator, api: HfApi, hub_token: str, repo: str
) -> None:
    hub.commit(repo, {"config.json": b"{}"})
    api.model_info(repo)
    api.list_repo_refs(repo)
    huggingface_hub.hf_hub_download(repo, "config.json")
    api.get_paths_info(repo, ["config.json"])
    assert hub.requests and not hub.mutating_requests()
    assert all(r.authorized for r in hub.requests)

    api.upload_file(path_or_fileobj=b"\x00w", path_in_repo="model.safetensors", repo_id=repo)
    api.create_tag(repo, tag="v1")
    mutations = [(r.method, r.path) for r in hub.mutating_requests()]
    assert mutations == [
        ("PUT", mutations[0][1]),  # the LFS upload
        ("POST", f"/api/models/{repo}/commit/main"),
        ("POST", f"/api/models/{repo}/tag/main"),
    ]
    assert hub.secret_locations(hub_token) == []
    assert hub_token not in repr(hub.requests)
    hub.commit(repo, {"leak.txt": f"token={hub_token}".encode()})
    assert hub.secret_locations(hub_token) != []  # the scan does see stored content


def test_require_token_rejects_anonymous_writes(hub: HubEmulator, api: HfApi, repo: str) -> None:
    hub.require_token = True
    with pytest.raises(HfHubHTTPError) as rejected:
        api.create_tag(repo, tag="v1", token=False)
    assert rejected.value.response.status_code == 401
    api.create_tag(repo, tag="v1")  # with the HF_TOKEN canary
    assert api.model_info(repo, token=False).sha == hub.resolve(repo)  # public reads stay anonymous


def test_whoami_needs_a_token(hub: HubEmulator, api: HfApi) -> None:
    assert api.whoami()["name"] == hub.username
    assert get_session().get(f"{hub.url}/api/whoami-v2").status_code == 401


def test_transformers_autoconfig_at_a_tag(hub: HubEmulator, repo: str) -> None:
    from transformers import AutoConfig

    hub.commit(repo, {"config.json": json.dumps(GPT2_CONFIG).encode()})
    hub.create_tag(repo, "v1.0.0")
    hub.commit(repo, {"config.json": json.dumps({**GPT2_CONFIG, "n_layer": 5}).encode()})

    config = AutoConfig.from_pretrained(repo, revision="v1.0.0")

    assert config.model_type == "gpt2" and config.n_layer == 2
    assert AutoConfig.from_pretrained(repo).n_layer == 5


def test_caches_are_fresh_per_test(hf_home: Path) -> None:
    from huggingface_hub import constants

    assert constants.HF_HUB_CACHE == str(hf_home / "hub") and os.environ["HF_HOME"] == str(hf_home)
    assert constants.ENDPOINT == os.environ["HF_ENDPOINT"]


def test_a_subprocess_uses_the_emulator(
    hub: HubEmulator, repo: str, hub_subprocess_env: dict[str, str], hf_home: Path
) -> None:
    hub.commit(repo, {"config.json": b'{"from": "emulator"}'})
    code = (
        "import huggingface_hub, pathlib;"
        f"print(pathlib.Path(huggingface_hub.hf_hub_download({repo!r}, 'config.json')).read_text())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=hub_subprocess_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"from": "emulator"}'
    assert not (hf_home / "hub").exists()  # the child used its own HF_HOME


def test_standalone_emulator_and_raw_error_headers() -> None:
    with HubEmulator() as other:
        # Like the Hub: 401 for an anonymous caller, 404 with a token; the error code is what clients read.
        for headers, status in (({}, 401), ({"Authorization": "Bearer hf_x"}, 404)):
            request = urllib.request.Request(f"{other.url}/api/models/acme/nothing", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(request)
            assert missing.value.code == status and missing.value.headers["X-Error-Code"] == "RepoNotFound"
        other.create_repo("acme/m")
        with urllib.request.urlopen(f"{other.url}/api/models/acme/m/revision/main") as response:
            assert json.load(response)["sha"] == other.resolve("acme/m")


def test_command_line_prints_the_endpoint(tmp_path: Path) -> None:
    repo_root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hub_emulator", "--port", "0"],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("HF_ENDPOINT=http://127.0.0.1:")
        with urllib.request.urlopen(line.split("=", 1)[1] + "/api/agent-harnesses", timeout=5) as response:
            assert response.status == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
        process.stdout.close()
