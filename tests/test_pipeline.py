"""`release run` and its settings (issue #7): the demo end to end against the local Hub, precedence, GitHub files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from release.cli import main
from release.errors import SettingsError, UsageError
from release.settings import load_settings
from tests.conftest import run_isolated

PYPROJECT = """
[tool.release]
repo_id = "acme/from-pyproject"
dtype = "float32"
max_new_tokens = 12
prompts = ["The Fox", "The Lion said"]

[tool.release.card]
model_name = "Acme tiny"
license = "apache-2.0"
languages = ["en"]
description = "A tiny test model."
intended_use = "Tests of the release pipeline."
limitations = "Knows only a few fables."
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A temporary project folder with a pyproject.toml and the cwd inside it."""
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    monkeypatch.chdir(tmp_path)
    for name in (
        "RELEASE_REPO_ID",
        "RELEASE_DTYPE",
        "RELEASE_DIST_DIR",
        "RELEASE_CHECKPOINT",
        "GITHUB_ACTIONS",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_settings_precedence_option_over_env_over_pyproject(project):
    pyproject = project / "pyproject.toml"
    s = load_settings(pyproject=pyproject, env={})
    assert (s.repo_id, s.sources["repo_id"]) == ("acme/from-pyproject", "pyproject")
    assert (s.max_shard_size, s.sources["max_shard_size"]) == ("5GB", "default")

    s = load_settings(
        pyproject=pyproject, env={"RELEASE_REPO_ID": "acme/from-env", "RELEASE_MAX_NEW_TOKENS": "7"}
    )
    assert (s.repo_id, s.sources["repo_id"]) == ("acme/from-env", "RELEASE_REPO_ID")
    assert s.max_new_tokens == 7

    s = load_settings(
        pyproject=pyproject,
        env={"RELEASE_REPO_ID": "acme/from-env"},
        overrides={"repo_id": "acme/from-option"},
    )
    assert (s.repo_id, s.sources["repo_id"]) == ("acme/from-option", "option")
    assert s.prompts == ("The Fox", "The Lion said")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELEASE_DTYPE": "int8"}, "dtype .*must be one of"),
        ({"RELEASE_MAX_NEW_TOKENS": "many"}, "max_new_tokens .*whole number"),
        ({"RELEASE_PRIVATE": "perhaps"}, "private .*true or false"),
        ({"RELEASE_CHECKPOINT_SHA256": "abc"}, "64 hexadecimal"),
    ],
)
def test_bad_setting_values_name_the_setting_and_source(project, env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(pyproject=project / "pyproject.toml", env=env)


def test_unknown_pyproject_key_is_refused(project):
    (project / "pyproject.toml").write_text('[tool.release]\nrepoid = "x/y"\n')
    with pytest.raises(SettingsError, match="unknown key.*repoid"):
        load_settings(pyproject=project / "pyproject.toml", env={})


def test_checkpoint_without_sha256_is_a_usage_error_before_any_work(project):
    result = CliRunner().invoke(main, ["run", "--version", "v1.0.0", "--checkpoint", "/nope/ckpt.pt"])
    assert result.exit_code == 2, result.output
    assert "sha256" in result.output
    assert not (project / "dist").exists()


def test_bad_version_is_refused_before_any_work(project):
    result = CliRunner().invoke(main, ["run", "--version", "1.0", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert not (project / "dist").exists()


def test_settings_command_prints_effective_values(project, monkeypatch):
    monkeypatch.setenv("RELEASE_REPO_ID", "acme/env")
    result = CliRunner().invoke(main, ["settings"])
    assert result.exit_code == 0
    assert "repo_id = acme/env  (RELEASE_REPO_ID)" in result.output
    assert CliRunner().invoke(main, ["settings", "--get", "dtype"]).output.strip() == "float32"


def read_github_outputs(path: Path) -> dict[str, str]:
    """Parse $GITHUB_OUTPUT's heredoc format the way the runner does."""
    outputs, lines = {}, path.read_text().splitlines()
    i = 0
    while i < len(lines):
        name, delimiter = lines[i].split("<<", 1)
        end = lines.index(delimiter, i + 1)
        outputs[name] = "\n".join(lines[i + 1 : end])
        i = end + 1
    return outputs


@pytest.fixture(scope="module")
def demo_release(tmp_path_factory, hub_session):
    """The demo released once through the CLI against the local Hub, as in a tag-push workflow."""
    import os

    from tests.conftest_hub import hub_env

    project = tmp_path_factory.mktemp("project")
    (project / "pyproject.toml").write_text(PYPROJECT)
    token = "hf_canary_pipeline_0123456789"
    env = hub_env(project, token=token)
    env.update(
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_REF": "refs/tags/v1.0.0",
            "GITHUB_REF_NAME": "v1.0.0",
            "GITHUB_REF_TYPE": "tag",
            "GITHUB_OUTPUT": str(project / "gh_output"),
            "GITHUB_STEP_SUMMARY": str(project / "gh_summary.md"),
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_REPOSITORY": "acme/release",
            "GITHUB_RUN_ID": "42",
        }
    )
    import subprocess
    import sys

    hub_session.reset()
    proc = subprocess.run(
        [sys.executable, "-m", "release", "run"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return {"project": project, "proc": proc, "token": token, "env": env, "hub": hub_session, "os": os}


def test_demo_release_end_to_end(demo_release):
    proc, project, hub = demo_release["proc"], demo_release["project"], demo_release["hub"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = project / "dist" / "v1.0.0"
    for name in (
        "model/README.md",
        "model/model.safetensors",
        "model/release.json",
        "verification.json",
        "verification.md",
        "release.log",
        "run.json",
    ):
        assert (out / name).exists(), name
    refs = hub.refs("acme/from-pyproject")
    assert "v1.0.0" in refs.tags and refs.tags["v1.0.0"] == refs.branches["main"]
    published = hub.repo_files("acme/from-pyproject", "v1.0.0")
    local = {
        p.relative_to(out / "model").as_posix(): p.read_bytes()
        for p in (out / "model").rglob("*")
        if p.is_file()
    }
    assert {k: v for k, v in published.items() if k != ".gitattributes"} == local
    run = json.loads((out / "run.json").read_text())
    assert [s["name"] for s in run["steps"]] == ["fetch", "convert", "verify", "compat", "card", "publish"]
    assert [s["status"] for s in run["steps"]] == ["ok", "ok", "ok", "skipped", "ok", "ok"]


def test_card_verb_writes_what_the_run_wrote(demo_release, tmp_path):
    """`release card` on the verified folder gives the run's files byte for byte, SHA256SUMS included, so
    `release card` + `release publish` publish what `release run` publishes."""
    import shutil
    import subprocess
    import sys

    project, out = demo_release["project"], demo_release["project"] / "dist" / "v1.0.0"
    assert demo_release["proc"].returncode == 0
    copy = tmp_path / "v1.0.0"
    shutil.copytree(out / "model", copy / "model")
    shutil.copy(out / "verification.json", copy / "verification.json")
    for name in ("README.md", "SHA256SUMS"):
        (copy / "model" / name).unlink()
    shutil.rmtree(copy / "model" / ".eval_results", ignore_errors=True)
    env = {k: v for k, v in demo_release["env"].items() if not k.startswith("GITHUB_")}
    proc = subprocess.run(
        [sys.executable, "-m", "release", "card", str(copy / "model"), "--version", "v1.0.0"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr

    def files(folder):
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    assert files(copy / "model") == files(out / "model")


def test_demo_release_writes_github_outputs_and_summary(demo_release):
    project, hub = demo_release["project"], demo_release["hub"]
    outputs = read_github_outputs(project / "gh_output")
    assert outputs["version"] == "v1.0.0"
    assert outputs["status"] == "ok"
    assert re.fullmatch(r"[0-9a-f]{40}", outputs["commit"])
    assert outputs["commit"] == hub.refs("acme/from-pyproject").tags["v1.0.0"]
    assert outputs["revision-url"].endswith("/acme/from-pyproject/tree/v1.0.0")
    assert outputs["card-path"].endswith("dist/v1.0.0/model/README.md")
    summary = (project / "gh_summary.md").read_text()
    assert "v1.0.0" in summary and "acme/from-pyproject" in summary
    assert "https://github.com/acme/release/actions/runs/42" in summary
    for step in ("fetch", "convert", "verify", "card", "publish"):
        assert step in summary


def test_token_appears_nowhere(demo_release):
    token, project, proc = demo_release["token"], demo_release["project"], demo_release["proc"]
    assert token not in proc.stdout and token not in proc.stderr
    for path in project.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert demo_release["hub"].secret_locations(token) == []


def test_published_revision_loads_in_a_fresh_process_like_the_training_module(demo_release, tmp_path):
    import torch

    from release.checkpoint import load_reference_model

    project = demo_release["project"]
    reference, _ = load_reference_model(project / "dist" / "v1.0.0" / "demo" / "checkpoint.pt")
    prompt = [[293, 220, 37, 78, 87]]
    expected = reference.generate_greedy(torch.tensor(prompt), 10)[0].tolist()
    env = dict(demo_release["env"])
    env["HF_HOME"] = str(tmp_path / "fresh_hf_home")
    code = f"""
import json, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained("acme/from-pyproject", revision="v1.0.0", trust_remote_code=True)
ids = torch.tensor({prompt})
out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                 eos_token_id=None)
print(json.dumps(out[0].tolist()))
"""
    proc = run_isolated(code, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected


def test_rerun_of_the_same_release_uploads_nothing(demo_release):
    import subprocess
    import sys

    hub, project = demo_release["hub"], demo_release["project"]
    before = hub.commits("acme/from-pyproject", "main")
    proc = subprocess.run(
        [sys.executable, "-m", "release", "run"],
        cwd=project,
        env=demo_release["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already published" in proc.stderr
    assert hub.commits("acme/from-pyproject", "main") == before


def test_failed_verification_stops_before_publishing(project, monkeypatch, hub, hub_token):
    """A release whose verification fails never reaches the Hub, and the step says why."""
    import release.verify.runner as verify

    real = verify.verify_model

    def corrupting_verify(model_dir, **kwargs):
        from safetensors.torch import load_file, save_file

        weights = Path(model_dir) / "model.safetensors"
        tensors = load_file(weights)
        tensors["model.layers.1.mlp.down_proj.weight"][0, 0] += 5.0
        save_file(tensors, weights, metadata={"format": "pt"})
        return real(model_dir, **kwargs)

    monkeypatch.setattr(verify, "verify_model", corrupting_verify)
    result = CliRunner().invoke(main, ["run", "--version", "v2.0.0"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "verification failed" in result.output
    assert "FAILED: parity" in result.output
    assert hub.repo_ids() == []
    run = json.loads((project / "dist" / "v2.0.0" / "run.json").read_text())
    assert [s["status"] for s in run["steps"]] == ["ok", "ok", "failed"]


def test_run_without_repo_id_is_a_usage_error(project):
    (project / "pyproject.toml").write_text("[tool.release]\n")
    with pytest.raises(UsageError, match="no repo id"):
        from release.pipeline import run_release

        run_release(load_settings(pyproject=project / "pyproject.toml", env={}), version="v1.0.0")


def test_run_reads_the_weights_only_file_and_names_the_original(project, monkeypatch):
    """Issue #13: fetch streams the weights-only file; convert and verify read it; release.json, the
    verification report and hence the card name the original checkpoint."""
    from release._io import sha256_file
    from release.demo import demo_text, train_tokenizer
    from tests.test_fetch import write_training_checkpoint

    monkeypatch.setenv("RELEASE_CACHE_DIR", str(project / "cache"))
    (project / "src").mkdir()
    ckpt = write_training_checkpoint(project / "src" / "best_model.pt")
    tokenizer = train_tokenizer(demo_text(), project / "tok", vocab_size=320)
    sha = sha256_file(ckpt)
    args = ["run", "--version", "v1.0.0", "--dry-run", "--stop-after", "card", "--checkpoint", str(ckpt)]
    result = CliRunner().invoke(
        main, [*args, "--sha256", sha, "--tokenizer", str(tokenizer)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    weights_only = project / "cache" / "weights-only" / f"{sha}.pt"
    run = json.loads((project / "dist" / "v1.0.0" / "run.json").read_text())
    assert run["checkpoint"] == str(weights_only)  # what convert and verify read
    assert [s["status"] for s in run["steps"]] == ["ok", "ok", "ok", "skipped", "ok"]
    verification = json.loads((project / "dist" / "v1.0.0" / "verification.json").read_text())
    assert verification["checkpoint"]["sha256"] == sha  # the card checks it against release.json's
    provenance = json.loads((project / "dist" / "v1.0.0" / "model" / "release.json").read_text())[
        "checkpoint"
    ]
    assert (provenance["sha256"], provenance["size"], provenance["filename"]) == (
        sha,
        ckpt.stat().st_size,
        "best_model.pt",
    )
    assert provenance["iter_num"] == 1200
    assert sorted(p.name for p in (project / "cache").iterdir()) == ["weights-only"]  # no whole copy
