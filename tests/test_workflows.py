"""The GitHub Actions workflows (issue #8), proved without GitHub.

Three layers, and tests of the runner itself at the end:

1. Structure: the security rules of STYLE.md checked on the YAML (and on its raw text, for comments):
   `permissions: {}` on top and commented per-job grants, actions pinned to a full SHA with a version comment,
   no `${{ }}` in any script, checkouts without persisted credentials, Hub credentials only in the publish step.
2. actionlint and zizmor (offline audits), zero findings: each accepted finding is suppressed inline with a reason.
3. The steps themselves, run by tests/workflow_runner.py as a runner would run them, against the Hub emulator:
   a tag push (build; publish from the uploaded artifact; the GitHub Release), a manual dry run with every
   input, hostile input, and the pull-request card preview with its comment job (posted once, then updated).
   One release build is shared by the module (the demo model); the whole module takes about 2-3 minutes.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest_hub import hub_env
from tests.workflow_runner import (
    INSTALL_STEP_ID,
    LOCAL_ACTIONS,
    REPO_ROOT,
    Event,
    Expressions,
    FakeGitHub,
    JobResult,
    Workflow,
    WorkflowRun,
    glob_match,
    iter_steps,
)

WORKFLOWS_DIR = REPO_ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS_DIR.glob("*.yml"))
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
REPO_ID = PYPROJECT["tool"]["release"]["repo_id"]
MARKER = "<!-- release-card-preview -->"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CANARY = f"hf_canary{secrets.token_hex(16)}"

# Every grant in every workflow. A change here is a security decision: make it in review, on purpose.
EXPECTED_GRANTS = {
    ("release.yml", "build"): {"contents": "read"},
    ("release.yml", "publish"): {"contents": "read", "id-token": "write"},
    ("release.yml", "github-release"): {"contents": "write"},
    ("ci.yml", "lint"): {"contents": "read"},
    ("ci.yml", "test"): {"contents": "read"},
    ("ci.yml", "workflows"): {"contents": "read"},
    ("ci.yml", "compat-versions"): {"contents": "read"},
    ("ci.yml", "compat"): {"contents": "read"},
    ("ci.yml", "floors"): {"contents": "read"},
    ("compat-canary.yml", "check"): {"contents": "read"},
    ("compat-canary.yml", "issue"): {"contents": "read", "issues": "write"},
    ("card-preview.yml", "render"): {"contents": "read"},
    ("card-preview-comment.yml", "comment"): {"actions": "read", "pull-requests": "write"},
}


def load(name: str) -> Workflow:
    return Workflow.load(WORKFLOWS_DIR / name)


def all_workflows() -> list[Workflow]:
    return [Workflow.load(path) for path in WORKFLOW_FILES]


def strings_in(value, where: str = ""):
    """Every string in a YAML value, with where it is (e.g. `steps[3].env.HF_TOKEN`)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings_in(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


def mapping_node(node: yaml.Node, *path: str) -> yaml.MappingNode:
    for key in path:
        assert isinstance(node, yaml.MappingNode), f"{key}: not a mapping"
        node = next(v for k, v in node.value if k.value == key)
    return node


# --- 1. structure ----------------------------------------------------------------------------------------


def test_the_five_workflows_exist():
    assert {p.name for p in WORKFLOW_FILES} == {
        "ci.yml",
        "release.yml",
        "card-preview.yml",
        "card-preview-comment.yml",
        "compat-canary.yml",
    }


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_no_permissions_by_default_and_each_grant_is_explained(path):
    workflow = Workflow.load(path)
    assert workflow.data.get("permissions") == {}, "top-level `permissions: {}` is required"
    root = yaml.compose(workflow.text)
    lines = workflow.text.splitlines()
    for job, spec in workflow.jobs.items():
        assert spec.get("permissions") == EXPECTED_GRANTS[(path.name, job)], f"{job}: unexpected grants"
        node = mapping_node(root, "jobs", job, "permissions")
        for key, _ in node.value:
            line = lines[key.start_mark.line]
            assert re.search(r"#\s*\S", line), f"{path.name} {job}: grant without a comment: {line.strip()}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_every_job_has_a_timeout(path):
    for job, spec in Workflow.load(path).jobs.items():
        assert isinstance(spec.get("timeout-minutes"), int) and 0 < spec["timeout-minutes"] <= 60, job


def test_actions_are_pinned_to_full_shas_with_a_version_comment():
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in WORKFLOW_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not re.match(r"\s*(-\s+)?uses:", line):
                continue
            match = re.fullmatch(
                r"\s*(?:-\s+)?uses:\s+([\w.-]+/[\w.-]+)@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)\s*", line
            )
            assert match, f"{path.name}:{number}: not `owner/action@<40-hex sha> # vX.Y.Z`: {line.strip()}"
            pins.setdefault(match[1], set()).add((match[2], match[3]))
    inconsistent = {action: found for action, found in pins.items() if len(found) > 1}
    assert not inconsistent, f"one action, several pins: {inconsistent}"
    for workflow in all_workflows():
        for job, index, step in iter_steps(workflow):
            if "uses" in step:
                action = step["uses"].split("@")[0]
                assert action in LOCAL_ACTIONS, f"{workflow.path.name} {job}[{index}]: no local equivalent"


def test_no_expression_ever_reaches_a_script():
    for workflow in all_workflows():
        for job, index, step in iter_steps(workflow):
            script = step.get("run") or (step.get("with") or {}).get("script") or ""
            assert "${{" not in script, f"{workflow.path.name} {job}[{index}]: use env: instead"


def test_checkouts_never_persist_credentials():
    checkouts = 0
    for workflow in all_workflows():
        for job, index, step in iter_steps(workflow):
            if step.get("uses", "").startswith("actions/checkout@"):
                checkouts += 1
                assert step.get("with", {}).get("persist-credentials") is False, f"{job}[{index}]"
    assert checkouts >= 7


def test_hub_credentials_exist_only_in_the_publish_step():
    found = []
    for workflow in all_workflows():
        for job, spec in workflow.jobs.items():
            for where, text in strings_in(spec):
                if re.search(r"\bsecrets\.|id-token|\bHF_TOKEN\b|HF_OIDC", f"{where} {text}"):
                    found.append((workflow.path.name, job, where, text))
    publish = load("release.yml").jobs["publish"]
    index = next(i for i, s in enumerate(publish["steps"]) if "HF_TOKEN" in (s.get("env") or {}))
    assert sorted(found) == sorted(
        [
            ("release.yml", "publish", "permissions.id-token", "write"),
            ("release.yml", "publish", f"steps[{index}].env.HF_TOKEN", "${{ secrets.HF_TOKEN }}"),
            (
                "release.yml",
                "publish",
                f"steps[{index}].env.HF_OIDC_RESOURCE",
                "${{ vars.HF_OIDC_RESOURCE }}",
            ),
        ]
    )
    assert publish["environment"]["name"] == "huggingface"
    assert [job for w in all_workflows() for job, s in w.jobs.items() if "environment" in s] == ["publish"]


def test_no_workflow_runs_pull_request_code_with_privileges():
    for workflow in all_workflows():
        assert "pull_request_target" not in workflow.triggers, workflow.path.name
    comment = load("card-preview-comment.yml")
    assert set(comment.triggers) == {"workflow_run"}
    assert comment.triggers["workflow_run"] == {"workflows": ["card preview"], "types": ["completed"]}
    assert load("card-preview.yml").name == "card preview"
    for _, _, step in iter_steps(comment):
        assert "run" not in step, "the privileged job runs no shell"
        assert not step["uses"].startswith("actions/checkout@"), "the privileged job checks nothing out"


def test_release_triggers_inputs_and_concurrency():
    release = load("release.yml")
    assert release.triggers["push"] == {"tags": ["v*"]}
    inputs = release.triggers["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"version", "checkpoint", "sha256", "tokenizer", "dry_run"}
    assert inputs["version"]["required"] is True
    assert inputs["dry_run"] == {**inputs["dry_run"], "type": "boolean", "default": True}
    assert release.data["concurrency"]["cancel-in-progress"] is False
    scope = Expressions({"github": {"repository": "me/repo"}})
    assert scope.interpolate(release.data["concurrency"]["group"]) == "release-me/repo"
    assert release.jobs["publish"]["needs"] == "build"


def test_installs_take_cpu_torch_in_the_pyproject_range_and_nothing_else():
    torch_requirement = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    installs = 0
    for workflow in all_workflows():
        for job, _, step in iter_steps(workflow):
            if step.get("id") != INSTALL_STEP_ID:
                continue
            installs += 1
            lines = [line.strip() for line in step["run"].strip().splitlines()]
            # The local runner skips this step as "already installed": it must hold installs only.
            assert all(line.startswith("python -m pip install ") for line in lines), (workflow.path.name, job)
            assert f'python -m pip install "{torch_requirement}" --index-url {CPU_INDEX}' in lines
    assert installs >= 7


def test_every_job_that_runs_release_installs_it_first():
    for workflow in all_workflows():
        for job, spec in workflow.jobs.items():
            ids = [step.get("id") for step in spec["steps"]]
            for index, step in enumerate(spec["steps"]):
                if re.search(r"(^|\n)\s*release ", step.get("run", "")):
                    assert INSTALL_STEP_ID in ids[:index], (
                        f"{workflow.path.name} {job}: `release` before install"
                    )


def test_card_preview_runs_for_the_paths_that_change_the_card():
    paths = load("card-preview.yml").triggers["pull_request"]["paths"]
    for changed in ("templates/model_card.md.j2", "templates/card/usage.md.j2", "pyproject.toml"):
        assert glob_match(changed, paths), changed
    for changed in ("release/cli.py", "modeling/modeling_custom_transformer.py"):
        assert glob_match(changed, paths), changed
    for unrelated in ("README.md", "tests/test_card.py", ".github/workflows/ci.yml"):
        assert not glob_match(unrelated, paths), unrelated


def test_every_zizmor_suppression_gives_a_reason():
    for path in WORKFLOW_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "zizmor:" in line:
                assert re.search(r"# zizmor: ignore\[[a-z-]+\] -- \w+", line), line.strip()


# --- 2. actionlint and zizmor ------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (it comes with `pip install -e .[test]`)")
    return path


def test_actionlint_finds_nothing():
    proc = subprocess.run(
        [_tool("actionlint"), "-no-color", *map(str, WORKFLOW_FILES)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_zizmor_offline_audits_find_nothing():
    proc = subprocess.run(
        [_tool("zizmor"), "--offline", "--no-progress", "--color=never", str(WORKFLOWS_DIR)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout + proc.stderr


# --- 3. the steps, run locally -----------------------------------------------------------------------------


def assert_succeeded(job: JobResult) -> None:
    assert job.status == "success", job.describe_failure()


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def client_env(tmp_path_factory) -> dict[str, str]:
    """What the steps see of this machine: the HF_* settings that point every client at the Hub emulator."""
    return hub_env(tmp_path_factory.mktemp("workflow-client"))


@pytest.fixture(scope="module")
def tag_push(tmp_path_factory, client_env) -> WorkflowRun:
    """`git push origin v1.0.0`: release.yml's build job, run once for the module (the demo model, ~1 min)."""
    root = tmp_path_factory.mktemp("tag-push")
    run = WorkflowRun(
        load("release.yml"),
        Event.tag_push("v1.0.0"),
        root=root,
        host_env=client_env,
        secrets={"HF_TOKEN": CANARY},
        github_api=FakeGitHub(root / "github.json", tags=["v1.0.0"]),
    )
    assert_succeeded(run.run_job("build"))
    return run


def test_tag_push_build_runs_every_step_and_uploads_dist(tag_push):
    build = tag_push.jobs["build"]
    assert build.outputs == {"version": "v1.0.0"}
    for step in build.steps:
        if step.uses is None and step.id != INSTALL_STEP_ID:
            assert step.local_equivalent is None, f"{step.name} must run as written"
        assert "HF_TOKEN" not in step.env, f"{step.name}: the build job must not see Hub credentials"
    assert build.step(INSTALL_STEP_ID).local_equivalent.startswith("already installed")
    assert build.step_named("Restore the checkpoint cache").outcome == "skipped"  # the demo: no checkpoint
    assert build.step_named("Show the publish plan (dry run)").outcome == "skipped"

    outputs = build.step("build").outputs
    assert outputs["version"] == "v1.0.0" and outputs["status"] == "ok"
    assert outputs["dist-dir"] == "dist/v1.0.0" and outputs["model-dir"] == "dist/v1.0.0/model"
    assert outputs["card-path"] == "dist/v1.0.0/model/README.md"
    assert outputs["checkpoint"] == "dist/v1.0.0/demo/checkpoint.pt"
    assert outputs["commit"] == "" and outputs["revision-url"] == ""  # nothing is published by the build job
    assert "v1.0.0" in build.summary and "card" in build.summary

    artifact = tag_push.artifacts / str(tag_push.run_id) / "dist-v1.0.0"
    uploaded = files_under(artifact)
    for name in (
        "model/README.md",
        "model/model.safetensors",
        "model/config.json",
        "verification.json",
        "run.json",
    ):
        assert name in uploaded, name
    assert uploaded == files_under(build.workspace / "dist" / "v1.0.0")
    # Every output of `release run` that any workflow reads (ci.yml's compat job, the card preview) exists.
    read = {m for w in all_workflows() for m in re.findall(r"steps\.build\.outputs\.([\w-]+)", w.text)}
    assert read and read <= set(outputs), read - set(outputs)
    steps = {s["name"]: s["status"] for s in json.loads(uploaded["run.json"])["steps"]}
    assert steps == {"fetch": "ok", "convert": "ok", "verify": "ok", "compat": "skipped", "card": "ok"}
    assert tag_push.unset_outputs == []


def test_tag_push_publish_releases_exactly_the_uploaded_bytes(tag_push, hub):
    hub.require_token = True
    hub.accepted_tokens = frozenset({CANARY})  # any other token, or none, cannot write
    publish = tag_push.run_job("publish")
    assert_succeeded(publish)

    step = publish.step("publish")
    assert step.env["HF_TOKEN"] == CANARY and step.env["HF_OIDC_RESOURCE"] == ""
    assert all("HF_TOKEN" not in s.env for s in publish.steps if s is not step)
    assert f"Published v1.0.0 to {REPO_ID}" in step.log
    assert step.outputs["created"] == "true" and step.outputs["tag"] == "v1.0.0"
    assert step.outputs["revision-url"].endswith(f"/{REPO_ID}/tree/v1.0.0")
    assert publish.environment == {"name": "huggingface", "url": step.outputs["revision-url"]}
    assert f"Published [{REPO_ID}@v1.0.0]" in publish.summary

    refs = hub.refs(REPO_ID)
    assert refs.tags["v1.0.0"] == refs.branches["main"]
    published = {k: v for k, v in hub.repo_files(REPO_ID, "v1.0.0").items() if k != ".gitattributes"}
    built = files_under(tag_push.artifacts / str(tag_push.run_id) / "dist-v1.0.0" / "model")
    assert published == built

    # The GitHub Release: its own job, with the repository write token and without the Hub credentials.
    github_release = tag_push.run_job("github-release")
    assert_succeeded(github_release)
    assert all("HF_TOKEN" not in s.env for s in github_release.steps)
    [release] = tag_push.github_api.releases
    assert release["tag"] == "v1.0.0" and release["title"] == "v1.0.0" and release["prerelease"] is False
    assert step.outputs["revision-url"] in release["notes"]
    assert refs.tags["v1.0.0"][:12] in release["notes"]

    for job in tag_push.jobs.values():
        assert CANARY not in job.log and CANARY not in job.summary
        assert all(CANARY not in value for value in job.outputs.values())
    assert tag_push.unset_outputs == []


def test_dispatch_dry_run_with_every_input_changes_nothing_on_the_hub(tag_push, hub, tmp_path, client_env):
    demo = tag_push.artifacts / str(tag_push.run_id) / "dist-v1.0.0" / "demo"
    checkpoint = demo / "checkpoint.pt"
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    inputs = {
        "version": "v1.1.0-rc.1",
        "checkpoint": str(checkpoint),
        "sha256": sha256,
        "tokenizer": str(demo / "tokenizer"),
        "dry_run": True,
    }
    run = WorkflowRun(
        load("release.yml"),
        Event.dispatch(inputs),
        root=tmp_path,
        host_env=client_env,
        secrets={"HF_TOKEN": CANARY},
    )
    jobs = run.run_all()
    build = jobs["build"]
    assert_succeeded(build)
    assert jobs["publish"].status == "skipped" and jobs["github-release"].status == "skipped"
    assert build.outputs["version"] == "v1.1.0-rc.1"

    cache = build.step_named("Restore the checkpoint cache")
    assert cache.outcome == "success" and cache.inputs["key"] == f"checkpoint-{sha256}"
    plan = build.step_named("Show the publish plan (dry run)")
    assert plan.outcome == "success" and "Dry run: nothing was changed." in plan.log
    assert hub.mutating_requests() == []
    assert hub.repo_ids() == []

    uploaded = run.artifacts / str(run.run_id) / "dist-v1.1.0-rc.1"
    record = json.loads((uploaded / "run.json").read_text())
    assert record["demo"] is False and record["version"] == "v1.1.0-rc.1"
    fetch = next(s for s in record["steps"] if s["name"] == "fetch")
    assert sha256[:12] in fetch["detail"]
    assert run.unset_outputs == []


def test_dispatch_inputs_are_data_never_shell(tmp_path, client_env):
    inputs = {"version": 'v1.0.0"; touch pwned; echo "', "dry_run": True}
    run = WorkflowRun(load("release.yml"), Event.dispatch(inputs), root=tmp_path, host_env=client_env)
    build = run.run_job("build")
    assert build.status == "failure"
    assert build.step("build").outcome == "failure" and "invalid version" in build.step("build").log
    assert not list(tmp_path.rglob("pwned"))


@pytest.fixture
def preview_world(tag_push, hub):
    """The Hub with v1.0.0's card published, as the card preview of a pull request will find it."""
    published = tag_push.artifacts / str(tag_push.run_id) / "dist-v1.0.0" / "model" / "README.md"
    hub.create_repo(REPO_ID)
    hub.commit(REPO_ID, {"README.md": published.read_bytes()}, message="Release v1.0.0")
    return hub


@pytest.fixture
def node():
    """actions/github-script runs its script with node; hosted runners and this machine's image have it."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH: it runs actions/github-script's script locally")


def test_card_preview_posts_one_comment_and_updates_it(preview_world, node, tmp_path, client_env):
    head = "ab" * 20
    preview = WorkflowRun(
        load("card-preview.yml"),
        Event.pull_request(7, head_sha=head, fork=True),
        root=tmp_path / "preview",
        host_env=client_env,
        artifacts=tmp_path / "artifacts",
    )
    render = preview.run_job("render")
    assert_succeeded(render)
    assert all("HF_TOKEN" not in s.env for s in render.steps)
    artifact = preview.artifacts / str(preview.run_id) / "card-preview"
    assert (artifact / "pr-number").read_text() == "7\n"
    comment = (artifact / "comment.md").read_text()
    assert comment.startswith(MARKER + "\n")
    assert f"Changes against the card published at {REPO_ID}@main" in comment
    assert re.search(r'^-.*revision\s*=\s*"v1\.0\.0"', comment, re.MULTILINE)
    assert re.search(r'^\+.*revision\s*=\s*"v0\.0\.0-pr\.7"', comment, re.MULTILINE)
    assert comment in render.summary
    assert preview.unset_outputs == []

    api = FakeGitHub(tmp_path / "github.json", pulls={7: head})
    quoted = api.add_comment(7, f"Quoting the bot:\n{MARKER}\nlooks fine")

    def post(triggering: WorkflowRun, **event) -> JobResult:
        run = WorkflowRun(
            load("card-preview-comment.yml"),
            Event.workflow_run(triggering, **event),
            root=tmp_path / f"comment-{triggering.run_id}-{len(api.calls)}",
            host_env=client_env,
            github_api=api,
            artifacts=tmp_path / "artifacts",
        )
        return run.run_job("comment")

    assert_succeeded(post(preview))
    ours = [c for c in api.comments(7) if c["user"]["login"] == "github-actions[bot]"]
    assert [c["body"] for c in ours] == [comment]

    # The next push: a new preview run, a new artifact; the same comment is updated, the human's is untouched.
    second = WorkflowRun(
        load("card-preview.yml"),
        Event.pull_request(7, head_sha="cd" * 20),
        root=tmp_path / "preview-2",
        artifacts=tmp_path / "artifacts",
    )
    updated = comment.replace("Model card preview", "Model card preview (second push)")
    (second.artifacts / str(second.run_id) / "card-preview").mkdir(parents=True)
    (second.artifacts / str(second.run_id) / "card-preview" / "comment.md").write_text(updated)
    (second.artifacts / str(second.run_id) / "card-preview" / "pr-number").write_text("7\n")
    api.set_head(7, "cd" * 20)
    assert_succeeded(post(second))
    ours = [c for c in api.comments(7) if c["user"]["login"] == "github-actions[bot]"]
    assert [c["body"] for c in ours] == [updated]
    assert next(c for c in api.comments(7) if c["id"] == quoted)["user"]["login"] == "a-reviewer"
    assert ["issues.updateComment", ours[0]["id"]] in api.calls


def test_card_preview_comment_refuses_untrusted_artifacts(node, tmp_path, client_env):
    api = FakeGitHub(tmp_path / "github.json", pulls={7: "ab" * 20, 8: "ef" * 20})

    def post(pr_number: str, body: str, *, head: str = "ab" * 20, conclusion: str = "success") -> JobResult:
        preview = WorkflowRun(
            load("card-preview.yml"),
            Event.pull_request(7, head_sha=head),
            root=tmp_path / f"p{len(api.calls)}-{secrets.token_hex(2)}",
            artifacts=tmp_path / "artifacts",
        )
        folder = preview.artifacts / str(preview.run_id) / "card-preview"
        folder.mkdir(parents=True)
        (folder / "pr-number").write_text(pr_number)
        (folder / "comment.md").write_text(body)
        run = WorkflowRun(
            load("card-preview-comment.yml"),
            Event.workflow_run(preview, conclusion=conclusion),
            root=tmp_path / f"c{preview.run_id}",
            host_env=client_env,
            github_api=api,
            artifacts=tmp_path / "artifacts",
        )
        return run.run_job("comment")

    assert post("7; curl evil", f"{MARKER}\nhi").status == "failure"
    assert post("../8", f"{MARKER}\nhi").status == "failure"
    assert post("7", "no marker").status == "failure"
    assert post("7", MARKER + "x" * 70_000).status == "failure"
    # Built from a commit that is not the pull request's head (e.g. a number pointing at someone else's PR):
    stale = post("8", f"{MARKER}\nhi")
    assert stale.status == "success" and "has moved past" in stale.log
    assert post("7", f"{MARKER}\nhi", conclusion="failure").status == "skipped"
    assert api.comments(7) == [] and api.comments(8) == []


def test_ci_compat_matrix_is_read_from_pyproject(tmp_path, client_env):
    run = WorkflowRun(
        load("ci.yml"), Event.pull_request(3, head_sha="12" * 20), root=tmp_path, host_env=client_env
    )
    assert_succeeded(run.run_job("compat-versions"))
    versions = PYPROJECT["tool"]["release"]["compat"]["transformers"]
    assert run.matrix("compat") == [{"transformers": v} for v in versions]
    compat = load("ci.yml").jobs["compat"]
    assert compat["env"]["RELEASE_COMPAT_VERSIONS"] == "${{ matrix.transformers }}"
    assert run.unset_outputs == []


# --- the local runner itself -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("inputs.version || github.ref_name", "v1.0.0"),
        ("!inputs.dry_run", True),
        ("github.event_name == 'PUSH' && 'yes' || 'no'", "yes"),  # string comparison ignores case
        ("contains('v1.0.0-rc.1', '-')", True),
        ("format('{0}-{1}', 'dist', github.ref_name)", "dist-v1.0.0"),
        ('fromJSON(\'["4.46.3", "5.0.0"]\')[1]', "5.0.0"),
        ("github.event.missing.deeper", None),
        ("1 == '1' && null == 0", True),
    ],
)
def test_runner_expressions(expression, expected):
    scope = Expressions({"inputs": {}, "github": {"ref_name": "v1.0.0", "event_name": "push", "event": {}}})
    assert scope.evaluate(expression) == expected


def test_runner_runs_steps_like_a_runner(tmp_path):
    path = tmp_path / "wf.yml"
    path.write_text(
        """
name: t
on: push
permissions: {}
jobs:
  one:
    runs-on: ubuntu-latest
    outputs:
      greeting: ${{ steps.a.outputs.greeting }}
      typo: ${{ steps.a.outputs.greting }}
    steps:
      - id: a
        run: |
          printf 'greeting<<EOF\\nhello\\nworld\\nEOF\\n' >> "$GITHUB_OUTPUT"
          echo "FROM_ENV_FILE=yes" >> "$GITHUB_ENV"
          echo "## summary" >> "$GITHUB_STEP_SUMMARY"
      - id: b
        env:
          SEEN: ${{ env.FROM_ENV_FILE }}
        run: test "$FROM_ENV_FILE" = yes && test "$SEEN" = yes && test "$GITHUB_REF_NAME" = v9.9.9 && false
      - id: c
        run: echo never
      - id: d
        if: failure()
        run: echo "cleanup ran"
  two:
    needs: one
    runs-on: ubuntu-latest
    steps:
      - run: echo "runs only after a successful one"
""",
        encoding="utf-8",
    )
    run = WorkflowRun(Workflow.load(path), Event.tag_push("v9.9.9"), root=tmp_path / "run")
    one = run.run_job("one")
    assert one.status == "failure"
    assert [s.outcome for s in one.steps] == ["success", "failure", "skipped", "success"]
    assert one.step("a").outputs == {"greeting": "hello\nworld"}
    assert "cleanup ran" in one.step("d").log and one.summary == "## summary\n"
    assert run.run_job("two").status == "skipped"

    path.write_text(path.read_text().replace("&& false", ""), encoding="utf-8")
    run = WorkflowRun(Workflow.load(path), Event.tag_push("v9.9.9"), root=tmp_path / "run2")
    assert run.run_job("one").outputs == {"greeting": "hello\nworld", "typo": ""}
    assert run.unset_outputs == ["steps.a.outputs.greting"]  # how a name the CLI never writes is caught


def test_runner_refuses_expressions_in_scripts_and_unknown_actions(tmp_path):
    path = tmp_path / "wf.yml"
    path.write_text(
        """
on: push
jobs:
  one:
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ github.ref_name }}"
  two:
    runs-on: ubuntu-latest
    steps:
      - uses: someone/action@0123456789012345678901234567890123456789
""",
        encoding="utf-8",
    )
    run = WorkflowRun(Workflow.load(path), Event.tag_push("v1.0.0"), root=tmp_path / "run")
    assert "pass values through `env:`" in run.run_job("one").steps[0].log
    assert "no local equivalent for someone/action" in run.run_job("two").steps[0].log


def test_runner_artifacts_leave_hidden_files_out_unless_asked(tmp_path):
    path = tmp_path / "wf.yml"
    path.write_text(
        """
on: push
jobs:
  up:
    runs-on: ubuntu-latest
    steps:
      - run: mkdir -p out/.hidden && echo a > out/a.txt && echo b > out/.hidden/b.txt
      - uses: actions/upload-artifact@330a01c490aca151604b8cf639adc76d48f6c5d4 # v5.0.0
        with: {name: plain, path: out/}
      - uses: actions/upload-artifact@330a01c490aca151604b8cf639adc76d48f6c5d4 # v5.0.0
        with: {name: all, path: out/, include-hidden-files: true}
  down:
    needs: up
    runs-on: ubuntu-latest
    steps:
      - uses: actions/download-artifact@018cc2cf5baa6db3ef3c5f8a56943fffe632ef53 # v6.0.0
        with: {name: all, path: dist/x}
      - run: test -f dist/x/a.txt && test -f dist/x/.hidden/b.txt
""",
        encoding="utf-8",
    )
    run = WorkflowRun(Workflow.load(path), Event.tag_push("v1.0.0"), root=tmp_path / "run")
    assert_succeeded(run.run_job("up"))
    assert set(files_under(run.artifacts / str(run.run_id) / "plain")) == {"a.txt"}
    assert set(files_under(run.artifacts / str(run.run_id) / "all")) == {"a.txt", ".hidden/b.txt"}
    assert_succeeded(run.run_job("down"))
