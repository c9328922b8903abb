"""The transformers compatibility matrix and its isolated environments.

Unit tests cover the supported range and version list, the gates and their failure lines, the environment cache
and the report merge. Tests marked ``compat`` build real environments, one virtual environment per transformers
version (cached in ``$RELEASE_CACHE_DIR/compat``, else ``~/.cache/custom-transformer-release/compat``, so only the
first run pays for the downloads), and load a converted folder there in a child that sees that environment's
packages only and cannot import this repo. They run the
versions of ``RELEASE_COMPAT_VERSIONS`` (comma-separated), else the oldest and the newest of the default list.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from release.cli import main
from release.compat import environments
from release.compat import matrix as compat
from release.compat.matrix import (
    ChildOutcome,
    CompatReport,
    ReferenceOutputs,
    check_versions,
    default_versions,
    ensure_environment,
    judge_child_result,
    parse_versions,
    run_compat_matrix,
    supported_range,
)
from release.errors import CompatError, SettingsError, UsageError
from release.verify.report import VerificationReport

PROMPTS = ("The Fox", "Once upon a time a")


def write_pyproject(tmp_path: Path, versions, *, requirement: str = "transformers>=4.46,<6") -> Path:
    path = tmp_path / "pyproject.toml"
    listed = "" if versions is None else f"[tool.release.compat]\ntransformers = {json.dumps(versions)}\n"
    path.write_text(
        f'[project]\nname = "custom-transformer-release"\ndependencies = ["torch>=2.4", "{requirement}"]\n\n'
        + listed,
        encoding="utf-8",
    )
    return path


# --------------------------------------------------------------------------- range and versions


def test_supported_range_is_the_pyproject_requirement():
    assert supported_range() == ">=4.46,<6"


def test_supported_range_from_installed_metadata(monkeypatch):
    monkeypatch.setattr(compat, "project_pyproject", lambda: None)
    assert supported_range() == ">=4.46,<6"


def test_supported_range_puts_lower_bounds_first(tmp_path):
    assert (
        supported_range(write_pyproject(tmp_path, None, requirement="transformers<6,>=4.46")) == ">=4.46,<6"
    )


def test_supported_range_needs_a_bounded_requirement(tmp_path):
    with pytest.raises(SettingsError, match="declares no version range"):
        supported_range(write_pyproject(tmp_path, None, requirement="transformers"))


def test_default_versions_cover_the_supported_range():
    versions = default_versions()
    assert versions == ["4.46.3", "4.57.6", "5.0.0", "5.24.0"]
    assert versions[0].startswith("4.46.")  # the oldest supported line
    assert any(v.startswith("4.") for v in versions[1:]) and any(v.startswith("5.") for v in versions)


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        (["4.45.2", "5.0.0"], "4.45.2 is outside the supported range >=4.46,<6"),
        (["4.46.3", "6.0.0"], "6.0.0 is outside the supported range"),
        (["4.46.3", "4.57.x"], "'4.57.x' is not an exact release version"),
        (["4.46.3", "5.0.0", "5.0.0"], "5.0.0 is listed twice"),
        (["4.57.6", "5.0.0"], "does not test the oldest supported line 4.46.x"),
        ([], "no transformers versions to test"),
        ("4.46.3", "must be a list of version strings"),
        (None, "must be a list of version strings"),
    ],
)
def test_default_versions_are_validated(tmp_path, versions, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(".", r"\.")):
        default_versions(write_pyproject(tmp_path, versions))


def test_default_versions_are_sorted(tmp_path):
    assert default_versions(write_pyproject(tmp_path, ["5.10.0", "4.46.3", "5.9.0"])) == [
        "4.46.3",
        "5.9.0",
        "5.10.0",
    ]


def test_parse_versions():
    assert parse_versions(" 5.0.0,4.46.3 ,") == ["4.46.3", "5.0.0"]
    with pytest.raises(UsageError, match=r"--versions: 4\.40\.0 is outside the supported range >=4\.46,<6"):
        parse_versions("4.40.0")
    assert check_versions(["4.46.3"], range_spec=">=4.46,<6", source="x") == ["4.46.3"]


# --------------------------------------------------------------------------- gates and failure lines


def fake_reference() -> ReferenceOutputs:
    return ReferenceOutputs(
        input_ids=torch.zeros(1, 4, dtype=torch.long),
        logits=torch.zeros(1, 4, 8),
        prompt_texts=PROMPTS,
        prompt_ids=((5, 6), (7, 8, 9)),
        greedy_ids=((1, 2, 3, 4), (4, 3, 7)),  # the second prompt met eos (7) after 3 tokens
        max_new_tokens=4,
        dtype="float32",
    )


def child_result(**changes) -> ChildOutcome:
    result = {
        "error": None,
        "error_stage": None,
        "versions": {"transformers": "4.46.3", "torch": "2.13.0"},
        "tokenizer_ids": [[5, 6], [7, 8, 9]],
        "max_abs_diff": 3e-7,
        "top1_agreement": 1.0,
        "generated": [[1, 2, 3, 4], [4, 3, 7]],
        "generated_batch": [[1, 2, 3, 4], [4, 3, 7, 7]],  # a finished row goes on with padding (pad == eos)
        "pad_token_id": 7,
    }
    result.update(changes)
    return ChildOutcome(result=result, last_stage="generation", returncode=0, stderr="")


def test_judge_passes_matching_figures():
    result = judge_child_result("4.46.3", child_result(), fake_reference())
    assert result.passed and result.stage is None and result.generation_match
    assert result.failures == []
    assert result.to_dict()["environment"] == {"torch": "2.13.0", "transformers": "4.46.3"}
    assert "greedy tokens match for 2 prompts" in result.detail


def test_judge_names_version_stage_step_and_prompt():
    result = judge_child_result("4.46.3", child_result(generated=[[1, 2, 9, 4], [4, 3, 7]]), fake_reference())
    assert not result.passed and result.stage == "generation" and not result.generation_match
    assert result.failures == [
        "transformers 4.46.3: generation: greedy tokens differ from the reference at step 3 for prompt 'The Fox'"
    ]


def test_judge_reports_a_batch_row_and_a_short_continuation():
    outcome = child_result(generated=[[1, 2, 3], [4, 3, 7]], generated_batch=[[1, 2, 3, 4], [4, 9, 7, 7]])
    assert judge_child_result("5.0.0", outcome, fake_reference()).failures == [
        "transformers 5.0.0: generation: greedy generation stopped after 3 tokens, the reference after 4, "
        "for prompt 'The Fox'",
        "transformers 5.0.0: generation: greedy tokens differ from the reference at step 2 for prompt "
        "'Once upon a time a' in a left-padded batch",
    ]


def test_judge_applies_the_float32_logit_gates():
    result = judge_child_result(
        "5.0.0", child_result(max_abs_diff=0.031, top1_agreement=0.96875), fake_reference()
    )
    assert result.stage == "logits" and result.generation_match
    assert result.failures == [
        "transformers 5.0.0: logits: max abs diff 3.1e-02 > 1e-04",
        "transformers 5.0.0: logits: top-1 agreement 96.88% < 100.00%",
    ]


def test_judge_reports_load_failures_first():
    outcome = child_result(
        tokenizer_ids=None,
        tokenizer_error="tokenizer: ValueError: Tokenizer class TokenizersBackend does not exist",
        generated=[[9, 9, 9, 9], [4, 3, 7]],
    )
    del outcome.result["tokenizer_ids"]
    result = judge_child_result("4.57.6", outcome, fake_reference())
    assert result.stage == "load"
    assert result.failures[0] == (
        "transformers 4.57.6: load: tokenizer: ValueError: Tokenizer class TokenizersBackend does not exist"
    )
    assert result.failures[1].startswith(
        "transformers 4.57.6: generation: greedy tokens differ from the reference"
    )


def test_judge_reports_tokenizer_disagreement():
    result = judge_child_result("5.0.0", child_result(tokenizer_ids=[[5, 6], [7, 8]]), fake_reference())
    assert result.failures == [
        "transformers 5.0.0: load: tokenizer encodes 'Once upon a time a' as [7, 8], the main environment as "
        "[7, 8, 9]"
    ]


def test_judge_reports_an_exception_in_a_stage():
    outcome = ChildOutcome(
        result={"error": "model: OSError: no file named model.safetensors", "error_stage": "load"},
        last_stage="load",
        returncode=0,
        stderr="",
    )
    result = judge_child_result("4.46.3", outcome, fake_reference())
    assert result.stage == "load" and result.max_abs_diff is None and not result.generation_match
    assert result.failures == ["transformers 4.46.3: load: model: OSError: no file named model.safetensors"]


def test_judge_reports_a_dead_child_at_its_last_stage():
    outcome = ChildOutcome(
        result=None, last_stage="logits", returncode=-11, stderr="Fatal Python error\nSegfault\n"
    )
    result = judge_child_result("5.24.0", outcome, fake_reference())
    assert result.failures == [
        "transformers 5.24.0: logits: the check process died (exit code -11): Segfault"
    ]


def test_the_table_becomes_the_reports_compat_section(tmp_path):
    import dataclasses

    from release.errors import ReportError
    from release.verify.report import VerificationReport, read_report
    from tests.test_card import VERIFICATION

    ok = judge_child_result("4.46.3", child_result(), fake_reference())
    bad = judge_child_result("5.0.0", child_result(generated=[[1, 2, 9, 4], [4, 3, 7]]), fake_reference())
    report = CompatReport(range=">=4.46,<6", results=[ok, bad])
    assert not report.passed and report.tested_versions == ["4.46.3"]
    path = tmp_path / "verification.json"
    path.write_text(json.dumps({**VERIFICATION, "compat": {"range": "stale", "versions": []}}))
    read_report(path).with_compat(report.to_dict()).write(path)
    text = path.read_text()
    data = json.loads(text)
    before = dataclasses.replace(VerificationReport.from_dict(VERIFICATION), compat=None)
    assert dataclasses.replace(read_report(path), compat=None) == before  # every other section kept
    assert data["compat"]["range"] == ">=4.46,<6" and data["compat"]["passed"] is False
    assert data["compat"]["statement"] == "tested on transformers 4.46: 1 version"
    assert [v["transformers"] for v in data["compat"]["versions"]] == ["4.46.3", "5.0.0"]
    assert data["compat"]["versions"][1] | {"detail": None, "environment": None} == {
        "transformers": "5.0.0",
        "passed": False,
        "stage": "generation",
        "max_abs_diff": 3e-7,
        "top1_agreement": 1.0,
        "generation_match": False,
        "detail": None,
        "environment": None,
        "cost": {"install_seconds": 0.0, "check_seconds": 0.0, "disk_mb": 0.0, "unique_disk_mb": 0.0},
    }
    typed = read_report(path).compat
    assert not typed.passed and [v.transformers for v in typed.versions if v.passed] == ["4.46.3"]
    path.write_text("[1, 2]")
    with pytest.raises(ReportError, match="must be a JSON object"):
        read_report(path)


# --------------------------------------------------------------------------- the environment cache


def write_dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def fake_uv(calls: list, *, fail: bool = False, torch_version: str | None = None):
    """``build_environment`` without uv: the dist-info of each pinned requirement (and of torch) in a venv layout."""

    def build(target, requirements, *, cache_dir, what):
        calls.append(requirements[0].split("==")[-1])
        site = target / "lib" / "python3.11" / "site-packages"
        for req in requirements:
            if req.startswith("torch @ "):
                write_dist(site, "torch", torch_version or environments.torch_version())
            else:
                name, _, version = req.partition("==")
                write_dist(site, name, version)
        if fail:
            raise CompatError(f"uv could not install {what}: boom")

    return build


@pytest.fixture
def fake_installs(monkeypatch):
    """uv and pip stubbed out: environments are dist-info folders; the calls list the versions installed."""
    calls: list[str] = []
    monkeypatch.setattr(environments, "torch_requirement", lambda: "torch @ file:///wheels/torch.whl")
    monkeypatch.setattr(environments, "build_environment", fake_uv(calls))
    return calls


def test_environment_is_installed_once_and_reused(tmp_path, fake_installs):
    first, reused = ensure_environment("4.46.3", cache_dir=tmp_path)
    assert not reused and ensure_environment("4.46.3", cache_dir=tmp_path) == (first, True)
    assert fake_installs == ["4.46.3"]
    stamp = json.loads((first.root / compat.STAMP).read_text())
    assert stamp["packages"] == {"torch": environments.torch_version(), "transformers": "4.46.3"}
    assert first.python == first.root / "bin" / "python"
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.root.name]  # no staging folder left


def test_interrupted_install_leaves_nothing_and_is_redone(tmp_path, fake_installs, monkeypatch):
    monkeypatch.setattr(environments, "build_environment", fake_uv(fake_installs, fail=True))
    with pytest.raises(CompatError, match="boom"):
        ensure_environment("5.0.0", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    # A folder without a stamp (e.g. copied by hand) is not trusted either.
    (compat.environment_dir("5.0.0", tmp_path) / "transformers").mkdir(parents=True)
    monkeypatch.setattr(environments, "build_environment", fake_uv(fake_installs))
    env, _ = ensure_environment("5.0.0", cache_dir=tmp_path)
    assert (env.root / compat.STAMP).is_file() and not (env.root / "transformers").exists()
    assert fake_installs == ["5.0.0", "5.0.0"]


def test_environment_must_hold_the_running_torch(tmp_path, fake_installs, monkeypatch):
    monkeypatch.setattr(environments, "build_environment", fake_uv([], torch_version="2.4.0"))
    with pytest.raises(CompatError, match="got torch 2.4.0, not the running"):
        ensure_environment("5.0.0", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_environment_that_misses_its_pin_is_not_cached(tmp_path, fake_installs, monkeypatch):
    def install(target, requirements, *, cache_dir, what):
        fake_uv([])(
            target, [r.replace("5.0.0", "5.0.1") for r in requirements], cache_dir=cache_dir, what=what
        )

    monkeypatch.setattr(environments, "build_environment", install)
    with pytest.raises(CompatError, match="uv installed transformers 5.0.1, not 5.0.0"):
        ensure_environment("5.0.0", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_follows_release_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEASE_CACHE_DIR", str(tmp_path))
    assert compat.default_cache_dir() == tmp_path / "compat"


# --------------------------------------------------------------------------- the command


def test_compat_command_help():
    result = CliRunner().invoke(main, ["compat", "--help"])
    assert result.exit_code == 0 and "release compat" in result.output


def test_compat_command_rejects_a_version_outside_the_range(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "ckpt.pt").write_bytes(b"")
    args = [
        "compat",
        str(tmp_path / "model"),
        "--checkpoint",
        str(tmp_path / "ckpt.pt"),
        "--versions",
        "4.40.0",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "Error: --versions: 4.40.0 is outside the supported range >=4.46,<6" in result.output


# --------------------------------------------------------------------------- real environments


def selected_versions() -> list[str]:
    configured = os.environ.get("RELEASE_COMPAT_VERSIONS", "")
    if configured.strip():
        return parse_versions(configured)
    versions = default_versions()
    return [versions[0], versions[-1]]


@pytest.fixture
def converted(make_checkpoint, tokenizer_dir, tmp_path):
    """A folder converted by ``release convert`` from a tiny checkpoint, with that checkpoint."""
    from release.convert.folder import convert_checkpoint

    ckpt = make_checkpoint()
    out = tmp_path / "model"
    convert_checkpoint(ckpt.path, out, tokenizer=tokenizer_dir)
    return out, ckpt.path


def stage_failures(result, stage: str) -> list[str]:
    return [f for f in result.failures if f.startswith(f"transformers {result.transformers}: {stage}:")]


@pytest.mark.compat
def test_matrix_passes_for_the_real_modeling_code(converted, tmp_path):
    model_dir, checkpoint = converted
    versions = selected_versions()
    report = run_compat_matrix(model_dir, checkpoint=checkpoint, versions=versions)
    assert [r.transformers for r in report.results] == versions
    for r in report.results:
        # The modeling code first (logits and generation), then the whole folder (tokenizer included).
        assert not stage_failures(r, "logits") and not stage_failures(r, "generation"), r.failures
        assert r.max_abs_diff <= 1e-4 and r.top1_agreement == 1.0 and r.generation_match
    assert report.passed, "\n".join(report.failures)
    assert report.to_dict()["range"] == ">=4.46,<6"


BUGGY_LINE = "cache=cache if cache is not None else past_key_values,"
# generate() passes the key/value cache as `past_key_values` up to 5.23 and as `cache` from 5.24 on (found with this
# matrix; 5.0.0 still passes `past_key_values`).
CACHE_KWARG_RENAMED_IN = "5.24.0"


@pytest.mark.compat
def test_a_cache_only_argument_is_caught_where_generate_passes_past_key_values(converted, tmp_path):
    """Reading only the new ``cache`` kwarg: older versions pass ``past_key_values``, so each decoding step starts
    from an empty cache. Logits (one full forward pass) still match; generation must fail, and name the stage."""
    from packaging.version import Version

    model_dir, checkpoint = converted
    versions = selected_versions()
    old = [v for v in versions if Version(v) < Version(CACHE_KWARG_RENAMED_IN)]
    if not old or len(old) == len(versions):
        pytest.skip(f"needs versions on both sides of {CACHE_KWARG_RENAMED_IN}; selected {versions}")
    buggy = tmp_path / "buggy"
    shutil.copytree(model_dir, buggy)
    modeling = buggy / "modeling_custom_transformer.py"
    source = modeling.read_text(encoding="utf-8")
    assert source.count(BUGGY_LINE) == 1, "the modeling code changed: update the injected bug"
    modeling.write_text(source.replace(BUGGY_LINE, "cache=cache,"), encoding="utf-8")

    args = ["compat", str(buggy), "--checkpoint", str(checkpoint)]  # no report: the table stands alone
    result = CliRunner().invoke(main, [*args, "--versions", ",".join(versions)])

    assert result.exit_code == 1, result.output
    assert f"Error: {len(old)} of {len(versions)} transformers versions failed" in result.output
    assert not (tmp_path / "verification.json").exists()
    data = json.loads((tmp_path / "compat.json").read_text())
    assert data["compat"]["passed"] is False
    for entry in data["compat"]["versions"]:
        version = entry["transformers"]
        assert (
            entry["max_abs_diff"] <= 1e-4 and entry["top1_agreement"] == 1.0
        )  # a full forward pass needs no cache
        if version in old:
            assert entry["stage"] == "generation" and not entry["generation_match"], entry
            failed = [f for f in data["compat"]["failures"] if f.startswith(f"transformers {version}: ")]
            assert failed and all(f.startswith(f"transformers {version}: generation: ") for f in failed)
            assert f"FAILED: transformers {version}: generation: " in result.output
        else:
            assert entry["passed"] and entry["generation_match"], entry


@pytest.mark.compat
def test_missing_weights_fail_at_load(converted, tmp_path):
    """A weight the model does not find would be randomly initialised: that must fail loading, not pass quietly."""
    from safetensors.torch import load_file, save_file

    model_dir, checkpoint = converted
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["lm_head.renamed_bias"] = weights.pop("lm_head.bias")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    oldest = selected_versions()[0]
    result = run_compat_matrix(broken, checkpoint=checkpoint, versions=[oldest]).results[0]
    assert result.stage == "load", result.failures
    assert "weights did not load cleanly" in result.failures[0] and "lm_head.bias" in result.failures[0]


@pytest.mark.compat
def test_bfloat16_release_loads_in_its_dtype(make_checkpoint, tokenizer_dir, tmp_path):
    """4.x reads ``torch_dtype``, 5.x ``dtype``: either way "auto" must load the bfloat16 weights as bfloat16."""
    from release.convert.folder import convert_checkpoint

    ckpt = make_checkpoint()
    convert_checkpoint(ckpt.path, tmp_path / "model", tokenizer=tokenizer_dir, dtype="bfloat16")
    oldest = selected_versions()[0]
    report = run_compat_matrix(tmp_path / "model", checkpoint=ckpt.path, versions=[oldest])
    assert report.passed, report.failures


# --------------------------------------------------------------------------- reference outputs


def test_reference_outputs_round_a_copy_for_half_precision():
    from tests.conftest import build_reference

    model = build_reference(block_size=12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = compat.compute_reference_outputs(model, [[1, 2, 3], [4, 5]], prompt_texts=("a", "b"))
    half = compat.compute_reference_outputs(
        model, [[1, 2, 3], [4, 5]], prompt_texts=("a", "b"), dtype="bfloat16"
    )
    assert all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )  # the caller's model is untouched
    assert full.max_new_tokens == half.max_new_tokens == 8  # 3 prompt tokens + 8 fit in 12 positions
    assert torch.equal(full.input_ids, half.input_ids)
    diff = (full.logits - half.logits).abs().max().item()
    assert 0 < diff < 0.5, f"bfloat16 rounding should move the logits a little, moved {diff}"
    assert all(len(g) == 8 for g in full.greedy_ids)
    assert compat.compute_reference_outputs(model, [[1] * 6], prompt_texts=("c",)).max_new_tokens == 6
    with pytest.raises(CompatError, match="leave no room to generate"):
        compat.compute_reference_outputs(model, [[1] * 12], prompt_texts=("d",))


# --------------------------------------------------------------------------- versions from the package index

from release.compat import canary as compat_canary  # noqa: E402
from release.compat import floors as compat_floors  # noqa: E402
from release.compat import index as compat_index  # noqa: E402
from release.compat import run as compat_run  # noqa: E402

INDEX_FIXTURE = Path(__file__).parent / "fixtures" / "pypi-simple-transformers.json"
# PyPI's simple JSON API (PEP 691) for transformers, trimmed to the files of 4.44 and later.
ALL_MINORS = [
    *(f"4.{m}" for m in (
        "46.3", "47.1", "48.3", "49.0", "50.3", "51.3", "52.4", "53.3", "54.1", "55.4", "56.2", "57.6",
    )),
    *(f"5.{m}" for m in (
        "0.0", "1.0", "2.0", "3.0", "4.0", "5.4", "6.2", "7.0", "8.1", "9.0", "10.4", "11.0", "12.1", "13.1",
        "14.1", "15.1", "16.1", "17.0", "18.0", "19.0", "20.2", "21.1", "22.2", "23.0", "24.0",
    )),
]  # fmt: skip


def index_page(*extra_files: dict, yank: str | None = None) -> dict:
    page = json.loads(INDEX_FIXTURE.read_text())
    if yank:
        for f in page["files"]:
            if (
                f["filename"].startswith(f"transformers-{yank}-")
                or f["filename"] == f"transformers-{yank}.tar.gz"
            ):
                f["yanked"] = "broken release"
    page["files"] += list(extra_files)
    return page


def wheel(version: str, **fields) -> dict:
    return {"filename": f"transformers-{version}-py3-none-any.whl", "requires-python": ">=3.10", **fields}


def test_all_minors_are_the_newest_patch_of_each_minor_in_the_declared_range():
    assert compat_index.all_minor_versions(range_spec=">=4.46,<6", page=index_page()) == ALL_MINORS
    # The range is read, not assumed: a narrower one gives fewer lines.
    assert compat_index.all_minor_versions(range_spec=">=5.20,<5.23", page=index_page()) == [
        "5.20.2", "5.21.1", "5.22.2",
    ]  # fmt: skip


def test_all_minors_skip_yanked_pre_releases_sdists_and_other_pythons():
    page = index_page(
        wheel("5.25.0rc1"),  # a pre-release
        wheel("6.0.0"),  # outside <6
        {"filename": "transformers-5.26.0.tar.gz", "requires-python": ">=3.10"},  # no wheel
        wheel("5.27.0", **{"requires-python": ">=3.99"}),  # not for this Python
        wheel("5.22.9", yanked=True),  # a yanked newer patch of an existing line
        yank="5.24.0",  # the whole 5.24 line yanked
    )
    versions = compat_index.all_minor_versions(range_spec=">=4.46,<6", page=page)
    assert versions == [v for v in ALL_MINORS if v != "5.24.0"]
    assert "5.22.2" in versions  # not the yanked 5.22.9
    # The yanked 4.46.0 (in the real index answer) never shadows 4.46.3, and pre-releases count only if asked.
    everything = compat_index.available_versions(page, include_pre=True)
    assert "5.25.0rc1" in everything and "4.46.0" not in everything
    assert compat_index.newest_prerelease(everything) is None  # 6.0.0 is out: 5.25.0rc1 is old news
    assert compat_index.newest_prerelease([v for v in everything if v != "6.0.0"]) == "5.25.0rc1"
    assert (
        compat_index.newest_prerelease(compat_index.available_versions(index_page(), include_pre=True))
        is None
    )


def test_canary_checks_the_newest_release_and_its_latest_pre_release():
    assert compat_canary.canary_versions(index_page()) == ["5.24.0"]
    page = index_page(wheel("5.25.0rc0"), wheel("5.25.0rc1"), wheel("5.0.0rc9"))
    assert compat_canary.canary_versions(page) == ["5.24.0", "5.25.0rc1"]
    assert check_versions(["5.25.0rc1", "6.0.0"], range_spec=">=4.46,<6", source="x", canary=True) == [
        "5.25.0rc1",
        "6.0.0",
    ]
    with pytest.raises(UsageError, match="5.25.0rc1' is not an exact release version"):
        check_versions(["5.25.0rc1"], range_spec=">=4.46,<6", source="x")


def test_the_index_is_asked_for_its_json_api(monkeypatch):
    """Real HTTP on 127.0.0.1: the index's PEP 691 page, asked for by content type."""
    import http.server
    import threading

    seen = {}
    answer = {"type": "application/vnd.pypi.simple.v1+json"}

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen["url"], seen["accept"] = self.path, self.headers.get("Accept")
            body = INDEX_FIXTURE.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", answer["type"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
        page = compat_index.fetch_project_page("Transformers")
        assert seen == {"url": "/simple/transformers/", "accept": compat_index.ACCEPT}
        assert len(page["files"]) == len(json.loads(INDEX_FIXTURE.read_text())["files"])
        answer["type"] = "text/html"
        with pytest.raises(CompatError, match="did not answer with the simple JSON API"):
            compat_index.fetch_project_page("transformers")
    finally:
        server.shutdown()


def test_range_statement():
    assert compat.range_statement(ALL_MINORS) == "transformers 4.46–5.24: 37 versions"
    assert compat.range_statement(["5.0.0"]) == "transformers 5.0: 1 version"
    assert compat.range_statement([]) is None


# --------------------------------------------------------------------------- the recorded reference


def full_report(**generation) -> dict:
    """``recorded_report``'s cases in a whole report, as ``release verify`` writes one (the card tests' report)."""
    from tests.test_card import VERIFICATION

    recorded = recorded_report(**generation)
    template = VERIFICATION["generation"]["cases"][0]
    cases = [{**template, **case} for case in recorded["generation"]["cases"]]
    return {
        **VERIFICATION,
        "model": {**VERIFICATION["model"], **recorded["model"]},
        "generation": {**VERIFICATION["generation"], **recorded["generation"], "cases": cases},
    }


def recorded_report(**generation) -> dict:
    return {
        "schema_version": 1,
        "passed": True,
        "model": {"dtype": "float32", "files": {"config.json": "ab" * 32}},
        "generation": {
            "max_new_tokens": 4,
            "cases": [
                {
                    "prompt": PROMPTS[0],
                    "input_ids": [5, 6],
                    "reference_ids": [1, 2, 3, 4],
                    "candidate_ids": [1, 2, 3, 4],
                },
                {
                    "prompt": PROMPTS[1],
                    "input_ids": [7, 8, 9],
                    "reference_ids": [4, 3, 7],
                    "candidate_ids": [4, 3, 7],
                },
            ],
            **generation,
        },
    }


def test_the_reference_comes_from_the_recorded_report_without_the_training_module():
    ref = compat.reference_from_report(recorded_report())
    assert ref.prompt_ids == ((5, 6), (7, 8, 9)) and ref.greedy_ids == ((1, 2, 3, 4), (4, 3, 7))
    assert ref.logits is None and ref.upcast is False and ref.source == "verification.json"
    with pytest.raises(CompatError, match="did not pass verification"):
        compat.reference_from_report({**recorded_report(), "passed": False})
    with pytest.raises(CompatError, match="not a usable verification report"):
        compat.reference_from_report({**recorded_report(), "generation": {"cases": []}})


def forced(rows) -> dict:
    """Teacher-forced figures: per prompt, the argmax at each continuation position and its gap."""
    return {"teacher_forced": [{"argmax": list(r), "gap": [0.0 if i == 0 else 2.0 for i in r]} for r in rows]}


def test_teacher_forcing_catches_a_divergence_at_the_first_differing_token():
    ref = compat.reference_from_report(recorded_report())
    ok = judge_child_result(
        "5.0.0",
        child_result(max_abs_diff=None, top1_agreement=None, **forced([[1, 2, 3, 4], [4, 3, 7]])),
        ref,
    )
    assert ok.passed and "teacher-forced too (reference: verification.json)" in ok.detail
    # Position 3 (step 3 of the continuation) argmaxes to 9 where 3 was recorded; the recorded token is 2.0 below.
    figures = {
        "teacher_forced": [
            {"argmax": [1, 2, 9, 9], "gap": [0.0, 0.0, 2.0, 1.0]},
            {"argmax": [4, 3, 7], "gap": [0, 0, 0]},
        ]
    }
    bad = judge_child_result("5.0.0", child_result(max_abs_diff=None, top1_agreement=None, **figures), ref)
    assert bad.stage == "logits" and not bad.passed
    assert bad.failures == [
        "transformers 5.0.0: logits: teacher-forced argmax differs from the recorded token at step 3 for prompt "
        "'The Fox' (argmax 9, recorded 3, 2 below the maximum)"
    ]


def test_teacher_forcing_tolerates_a_near_tie_only_within_the_dtypes_margin():
    report = recorded_report()
    report["model"]["dtype"] = "bfloat16"  # greedy_tie_margin 0.25
    ref = compat.reference_from_report(report)
    near = {
        "teacher_forced": [
            {"argmax": [1, 9, 0, 0], "gap": [0.0, 0.1, 5.0, 5.0]},
            {"argmax": [4, 3, 7], "gap": [0, 0, 0]},
        ]
    }
    assert judge_child_result(
        "5.0.0", child_result(max_abs_diff=None, top1_agreement=None, **near), ref
    ).passed
    far = {
        "teacher_forced": [
            {"argmax": [1, 9, 0, 0], "gap": [0.0, 0.3, 5.0, 5.0]},
            {"argmax": [4, 3, 7], "gap": [0, 0, 0]},
        ]
    }
    result = judge_child_result("5.0.0", child_result(max_abs_diff=None, top1_agreement=None, **far), ref)
    assert result.stage == "logits" and "at step 2" in result.failures[0]


# --------------------------------------------------------------------------- --all-minors with a fake installer


def fake_child(failing: dict[str, dict] | None = None):
    """A child that answers like the real one: the recorded tokens, except for the versions in ``failing``."""
    failing = failing or {}

    def run(model_dir, reference_dir, env, work_dir, *, device="cpu"):
        assert device == "cpu"  # what resolve_device gives on this machine, for --device cpu and auto
        version = env.packages["transformers"]
        ref = json.loads((reference_dir / "reference.json").read_text())
        result = {
            "error": None,
            "error_stage": None,
            "versions": {"transformers": version},
            "tokenizer_ids": ref["prompt_ids"],
            "teacher_forced": [{"argmax": g, "gap": [0.0] * len(g)} for g in ref["greedy_ids"]],
            "generated": ref["greedy_ids"],
            "generated_batch": [g + [7] * (ref["max_new_tokens"] - len(g)) for g in ref["greedy_ids"]],
            "pad_token_id": 7,
            **failing.get(version, {}),
        }
        return ChildOutcome(result=result, last_stage="generation", returncode=0, stderr="")

    return run


@pytest.fixture
def fake_world(tmp_path, monkeypatch):
    """A folder with a passing verification.json, the index fixture, a fake pip and a fake child."""
    folder = tmp_path / "dist" / "v1.0.0" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder.parent / "verification.json").write_text(json.dumps(full_report()))
    calls: list[str] = []
    monkeypatch.setattr(environments, "torch_requirement", lambda: "torch @ file:///wheels/torch.whl")
    monkeypatch.setattr(environments, "build_environment", fake_uv(calls))
    monkeypatch.setattr(compat_index, "fetch_project_page", lambda package, url=None: index_page())
    monkeypatch.setattr(compat, "run_child", fake_child())
    # The card's code needs a real environment, like the child: the fake world has none (tests/test_snippet.py).
    monkeypatch.setattr(compat_run, "card_snippet_check", lambda report: None)
    monkeypatch.setenv("RELEASE_CACHE_DIR", str(tmp_path / "cache"))
    return folder, calls


def test_all_minors_runs_every_minor_in_its_own_environment_and_states_the_range(fake_world):
    folder, calls = fake_world
    result = CliRunner().invoke(main, ["compat", str(folder), "--all-minors"])
    assert result.exit_code == 0, result.output
    assert calls == ALL_MINORS  # one environment each, oldest first
    assert "tested on transformers 4.46–5.24: 37 versions (supported: >=4.46,<6)" in result.output
    data = json.loads((folder.parent / "verification.json").read_text())
    kept = VerificationReport.from_dict(data).generation
    assert kept == VerificationReport.from_dict(full_report()).generation  # the verify report is kept
    table = data["compat"]["versions"]
    assert [row["transformers"] for row in table] == ALL_MINORS and all(row["passed"] for row in table)
    assert data["compat"]["reference"] == "verification.json" and data["compat"]["statement"].endswith(
        "37 versions"
    )
    assert set(table[0]["cost"]) == {"install_seconds", "check_seconds", "disk_mb", "unique_disk_mb"}
    # Per-version time and disk in the progress lines too; a second run reuses every environment.
    assert result.output.count("[install ") == 37
    assert CliRunner().invoke(main, ["compat", str(folder), "--all-minors"]).exit_code == 0
    assert calls == ALL_MINORS


def test_a_failure_on_one_version_names_the_version_and_the_stage(fake_world, monkeypatch):
    folder, _ = fake_world
    monkeypatch.setattr(
        compat, "run_child", fake_child({"5.3.0": {"generated_batch": [[1, 2, 3, 4], [4, 3, 9, 9]]}})
    )
    result = CliRunner().invoke(main, ["compat", str(folder), "--all-minors"])
    assert result.exit_code == 1
    assert "Error: 1 of 37 transformers versions failed" in result.output
    assert (
        "FAILED: transformers 5.3.0: generation: greedy tokens differ from the reference at step 3 for prompt "
        "'Once upon a time a' in a left-padded batch"
    ) in result.output
    data = json.loads((folder.parent / "verification.json").read_text())["compat"]
    failed = [row for row in data["versions"] if not row["passed"]]
    assert [(row["transformers"], row["stage"]) for row in failed] == [("5.3.0", "generation")]
    assert data["statement"] == "tested on transformers 4.46–5.24: 36 versions"


def test_compat_runs_each_child_on_the_resolved_device_and_refuses_an_absent_one(fake_world, monkeypatch):
    import functools

    from release.verify import loading

    folder, calls = fake_world
    assert (
        CliRunner()
        .invoke(main, ["compat", str(folder), "--versions", "4.46.3", "--device", "auto"])
        .exit_code
        == 0
    )
    no_gpu = functools.partial(loading.resolve_device, gpus=lambda: [])  # the fake of a machine without CUDA
    monkeypatch.setattr(compat, "resolve_device", no_gpu)
    calls.clear()
    result = CliRunner().invoke(main, ["compat", str(folder), "--versions", "4.46.3", "--device", "cuda"])
    assert result.exit_code == 2 and calls == []  # refused before any environment is built
    assert "device 'cuda': no CUDA device is visible here; use --device cpu or auto" in result.output


def test_compat_needs_a_recorded_report_or_the_checkpoint(fake_world):
    folder, calls = fake_world
    (folder.parent / "verification.json").unlink()
    result = CliRunner().invoke(main, ["compat", str(folder), "--versions", "4.46.3"])
    assert result.exit_code == 2 and "no passing verification report" in result.output
    assert calls == []
    result = CliRunner().invoke(main, ["compat", str(folder), "--all-minors", "--newest"])
    assert result.exit_code == 2 and "choose the versions one way" in result.output


# --------------------------------------------------------------------------- the canary's issue


class FakeIssues:
    """GitHub's issues, in memory."""

    def __init__(self, issues=()):
        self.issues = {i["number"]: dict(i) for i in issues}
        self.calls: list[str] = []

    def open_issues(self, label):
        return [dict(i) for i in self.issues.values() if i["state"] == "open" and label in i["labels"]]

    def create_issue(self, *, title, body, labels):
        number = max(self.issues, default=0) + 1
        self.issues[number] = {
            "number": number,
            "title": title,
            "body": body,
            "labels": list(labels),
            "state": "open",
        }
        self.calls.append(f"create {number}")
        return number

    def update_issue(self, number, *, title=None, body=None, state=None):
        changes = {k: v for k, v in {"title": title, "body": body, "state": state}.items() if v is not None}
        self.issues[number].update(changes)
        self.calls.append(f"update {number}")


def canary_results(tmp_path, failing: dict[str, str] | None, name="compat.json") -> Path:
    failing = failing or {}
    rows = [
        {"transformers": v, "passed": v not in failing, "stage": "generation" if v in failing else None,
         "detail": failing.get(v, "greedy tokens match") }
        for v in ("5.24.0", "5.25.0rc1")
    ]  # fmt: skip
    failures = [f"transformers {v}: generation: {text}" for v, text in failing.items()]
    data = {
        "repo_id": "me/tiny",
        "revision": "v1.2.0",
        "compat": {"passed": not failing, "failures": failures, "versions": rows, "range": ">=4.46,<6"},
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_canary_issue_is_rendered_from_its_template_and_is_stable(tmp_path):
    data = json.loads(
        canary_results(tmp_path, {"5.25.0rc1": "greedy tokens differ at step 2 | `x`"}).read_text()
    )
    title, body = compat_canary.render_canary_issue(data["compat"], repo_id="me/tiny", revision="v1.2.0")
    assert title == "Compatibility canary: me/tiny v1.2.0 fails on transformers 5.25.0rc1 (generation)"
    assert body.splitlines()[0] == compat_canary.MARKER
    assert "| 5.25.0rc1 | **failed** | generation | greedy tokens differ at step 2 \\| `x` |" in body
    assert "release compat me/tiny --revision v1.2.0 --report verification.json --versions 5.25.0rc1" in body
    assert (title, body) == compat_canary.render_canary_issue(
        data["compat"], repo_id="me/tiny", revision="v1.2.0"
    )
    with pytest.raises(UsageError, match="passed; there is no issue"):
        compat_canary.render_canary_issue({"versions": [], "failures": []}, repo_id="me/tiny", revision="v1")


def test_canary_opens_one_issue_then_updates_it_never_duplicates(tmp_path):
    someone_elses = {
        "number": 1,
        "title": "x",
        "body": "a human's issue",
        "labels": ["compat-canary"],
        "state": "open",
    }
    issues = FakeIssues([someone_elses])
    first = canary_results(tmp_path, {"5.25.0rc1": "greedy tokens differ at step 2"})
    assert compat_canary.sync_canary_issue(issues, results=first) == compat_canary.IssueOutcome("created", 2)
    # The same failure next week: nothing to change.
    assert compat_canary.sync_canary_issue(issues, results=first) == compat_canary.IssueOutcome(
        "unchanged", 2
    )
    # Another failure: the same issue, updated.
    worse = canary_results(tmp_path, {"5.24.0": "load: boom", "5.25.0rc1": "x"}, name="worse.json")
    assert compat_canary.sync_canary_issue(issues, results=worse) == compat_canary.IssueOutcome("updated", 2)
    assert "5.24.0 (generation), 5.25.0rc1 (generation)" in issues.issues[2]["title"]
    ours = [i for i in issues.issues.values() if i["body"].startswith(compat_canary.MARKER)]
    assert len(ours) == 1 and issues.calls == ["create 2", "update 2"]
    # It passes again: closed, and a later failure opens a fresh one.
    fixed = canary_results(tmp_path, None, name="fixed.json")
    assert compat_canary.sync_canary_issue(issues, results=fixed) == compat_canary.IssueOutcome("closed", 2)
    assert issues.issues[2]["state"] == "closed" and issues.issues[1]["state"] == "open"
    assert compat_canary.sync_canary_issue(issues, results=fixed) == compat_canary.IssueOutcome("none", None)


def test_canary_issue_command_needs_the_workflow_token(tmp_path, monkeypatch):
    monkeypatch.delenv("GH_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["compat-issue", str(canary_results(tmp_path, {"5.24.0": "x"}))])
    assert result.exit_code == 2 and "set GITHUB_REPOSITORY and GH_TOKEN" in result.output


# --------------------------------------------------------------------------- dependency floors

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_floors_are_read_from_pyproject_and_pinned():
    floors = compat_floors.declared_floors()
    assert floors["huggingface-hub"] == "2.0" and floors["torch"] == "2.4"
    pinned = compat_floors.pinned_requirements(["huggingface_hub"])
    assert "huggingface_hub==2.0" in pinned and not any(r.startswith("torch") for r in pinned)
    assert "transformers>=4.46,<6" in pinned
    with pytest.raises(UsageError, match="requests: not a dependency with a declared floor"):
        compat_floors.pinned_requirements(["requests"])


def test_floors_check_installs_the_pins_and_runs_the_demo(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(environments, "torch_requirement", lambda: "torch @ file:///wheels/torch.whl")

    def installer(hub_version):
        def install(requirements, target, cache_dir):
            assert "huggingface_hub==2.0" in requirements and requirements[-1].startswith("torch @ ")
            site = target / "lib" / "python3.11" / "site-packages"
            write_dist(site, "huggingface_hub", hub_version)
            write_dist(site, "torch", environments.torch_version())

        return install

    def run(cmd, env, cwd):
        ran.append(cmd)
        assert env["PYTHONPATH"].endswith("project")  # this tree only: the rest is the environment's
        return compat_floors.subprocess.CompletedProcess(cmd, 0, "", "")

    built = []
    project = dict(project_installer=lambda root, target: built.append((root, target.name)))
    result = compat_floors.check_floors(
        ["huggingface_hub"], cache_dir=tmp_path, installer=installer("2.0.0"), run=run, **project
    )
    assert built == [(REPO_ROOT, "project")]  # this tree, built fresh
    assert result.passed and result.floors == {"huggingface-hub": "2.0"}
    assert result.versions == {"huggingface-hub": "2.0.0", "torch": environments.torch_version()}
    (cmd,) = ran
    assert Path(cmd[0]).parent.parent.parent == tmp_path  # the floors environment's own interpreter
    assert cmd[1:5] == ["-P", "-m", "release", "run"] and "--dry-run" in cmd  # -P: not the cwd's tree

    with pytest.raises(CompatError, match="uv installed huggingface-hub 2.4.0, not 2.0"):
        compat_floors.check_floors(
            ["huggingface_hub"], cache_dir=tmp_path / "other", installer=installer("2.4.0"), run=run
        )
    with pytest.raises(UsageError, match="the torch floor is 2.4 but this is torch"):
        compat_floors.check_floors(["torch"], cache_dir=tmp_path, installer=installer("2.0.0"), run=run)


def test_the_floors_job_runs_in_ci_run_for_the_lowest_huggingface_hub():
    script = (REPO_ROOT / ".ci" / "run").read_text()
    lines = [ln.strip() for ln in script.splitlines() if not ln.strip().startswith("#")]
    assert any(
        ln.startswith(".venv/bin/release compat-floors") and "--lowest huggingface_hub" in ln for ln in lines
    )


@pytest.mark.compat
def test_the_lowest_declared_huggingface_hub_runs_the_demo_pipeline():
    """The floor is real: huggingface_hub at its declared floor, the newest transformers pip allows with it."""
    result = compat_floors.check_floors(["huggingface_hub"])
    assert result.passed, result.summary_line()
    assert result.versions["huggingface-hub"] == "2.0.0"


# --------------------------------------------------------------------------- a Hub revision, no checkpoint

HUB_REPO = "me/tiny-compat"


@pytest.fixture
def verified(converted, tokenizer_dir, tmp_path):
    """The converted folder and the verification.json that `release verify` wrote for it."""
    from release.verify.runner import verify_model

    model_dir, checkpoint = converted
    path = tmp_path / "verification.json"
    report = verify_model(
        model_dir,
        checkpoint=checkpoint,
        tokenizer=tokenizer_dir,
        prompts=list(PROMPTS),
        max_new_tokens=8,
        report_path=path,
    )
    assert report.passed, report.failures
    return model_dir, path


@pytest.mark.compat
def test_a_hub_revision_is_checked_against_its_recorded_tokens_without_a_checkpoint(verified, hub, tmp_path):
    model_dir, report_path = verified
    files = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    hub.create_repo(HUB_REPO)
    hub.create_tag(HUB_REPO, "v0.9.0", revision=hub.commit(HUB_REPO, {"README.md": b"old"}, message="old"))
    hub.create_tag(HUB_REPO, "v1.0.0", revision=hub.commit(HUB_REPO, files, message="release"))
    hub.create_tag(HUB_REPO, "v1.1.0-rc.1", revision="main")
    assert compat_canary.newest_release_tag(HUB_REPO) == "v1.0.0"  # releases before pre-releases

    oldest = selected_versions()[0]
    out = tmp_path / "compat.json"
    args = ["compat", HUB_REPO, "--report", str(report_path), "--versions", oldest, "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert (data["repo_id"], data["revision"]) == (HUB_REPO, "v1.0.0")
    row = data["compat"]["versions"][0]
    assert row["passed"] and row["max_abs_diff"] is None  # teacher-forced: no training module here
    assert data["compat"]["reference"] == "verification.json"

    # A revision whose model code changed is not what the report verified: refused, not "checked".
    source = files["modeling_custom_transformer.py"].decode()
    commit = hub.commit(
        HUB_REPO, {"modeling_custom_transformer.py": (source + "\n# edited\n").encode()}, message="x"
    )
    hub.create_tag(HUB_REPO, "v1.0.1", revision=commit)
    result = CliRunner().invoke(
        main, ["compat", HUB_REPO, "--report", str(report_path), "--versions", oldest]
    )
    assert result.exit_code == 1
    assert (
        "me/tiny-compat@v1.0.1 is not what the verification report verified (modeling_custom_transformer.py)"
        in (result.output)
    )


@pytest.mark.compat
def test_a_recorded_report_catches_a_cache_bug_at_generation_without_a_checkpoint(verified, tmp_path):
    """A recorded report alone: no training module at all, and a cache-path bug still fails generation (the
    teacher-forced logits stage passes: one forward needs no cache)."""
    from packaging.version import Version

    model_dir, report_path = verified
    old = [v for v in selected_versions() if Version(v) < Version(CACHE_KWARG_RENAMED_IN)]
    if not old:
        pytest.skip(f"needs a version before {CACHE_KWARG_RENAMED_IN}")
    buggy = tmp_path / "buggy" / "model"
    shutil.copytree(model_dir, buggy)
    modeling = buggy / "modeling_custom_transformer.py"
    modeling.write_text(modeling.read_text().replace(BUGGY_LINE, "cache=cache,"), encoding="utf-8")
    report = run_compat_matrix(buggy, report=json.loads(report_path.read_text()), versions=old[:1])
    result = report.results[0]
    assert result.stage == "generation" and not stage_failures(result, "logits"), result.failures


def test_every_package_ships_in_the_wheel():
    """The floors check builds a real wheel: a package missing from [tool.setuptools] packages breaks it."""
    import tomllib

    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO_ROOT).parts)
        for top in ("release", "modeling")
        for p in (REPO_ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)


def test_the_cards_code_runs_per_version_in_that_versions_environment(fake_world):
    """The snippet hook (the card's code) gets each version's interpreter and environment; a failure is
    reported as that version's ``snippet`` stage."""
    folder, _ = fake_world
    seen = []

    def snippet(version, env, model_dir):
        seen.append((version, env.root, model_dir))
        return "the card's code: line 4: generate() returned other tokens" if version == "5.0.0" else None

    report = run_compat_matrix(
        folder,
        report=json.loads((folder.parent / "verification.json").read_text()),
        versions=["4.46.3", "5.0.0"],
        snippet_check=snippet,
    )
    cache = folder.parents[2] / "cache" / "compat"
    assert seen == [
        ("4.46.3", compat.environment_dir("4.46.3", cache), folder.resolve()),
        ("5.0.0", compat.environment_dir("5.0.0", cache), folder.resolve()),
    ]
    assert report.failures == [
        "transformers 5.0.0: snippet: the card's code: line 4: generate() returned other tokens"
    ]
    assert [r.stage for r in report.results] == [None, "snippet"]


# --------------------------------------------------------------------------- the child and its environment


def test_the_matrix_child_checks_the_real_modeling_code_in_a_given_interpreter(converted, tmp_path):
    """``child.py`` started by path, as in every version's environment; here in this one (no install needed)."""
    model_dir, checkpoint = converted
    reference = compat.reference_outputs(model_dir, checkpoint, prompts=PROMPTS)
    reference.save(tmp_path / "reference")
    outcome = compat.run_child(
        model_dir, tmp_path / "reference", environments.Environment(Path(sys.prefix)), tmp_path
    )
    result = judge_child_result("this", outcome, reference)
    assert result.passed, result.failures
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement == 1.0 and result.generation_match


def test_no_module_level_string_holds_python_code():
    """Code that runs in a child process lives in a module (linted, importable), never in a string constant."""
    import ast

    found = []
    for path in sorted((REPO_ROOT / "release").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if value is None:
                continue
            try:
                text = ast.literal_eval(value) if not isinstance(value, ast.JoinedStr) else None
            except ValueError:
                text = None
            if not isinstance(text, str):
                parts = [
                    n.value
                    for n in ast.walk(value)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)
                ]
                text = "".join(parts)
            try:
                tree = ast.parse(text)
            except SyntaxError:
                continue
            if any(
                isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))
                for n in ast.walk(tree)
            ):
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert found == []


@pytest.mark.compat
def test_a_versions_environment_holds_only_what_its_users_have(tmp_path):
    """The child sees the environment's own packages: nothing of this interpreter's site-packages (pytest, this
    repo, the huggingface_hub the main environment resolved), and the torch under test."""
    import sysconfig

    from packaging.utils import canonicalize_name

    from release.verify.without_repo import child_command

    oldest, newest = selected_versions()[0], selected_versions()[-1]
    env, _ = ensure_environment(oldest)
    program = tmp_path / "probe.py"
    program.write_text(
        "import importlib.util, json, sys, huggingface_hub, torch, transformers\n"
        "found = {}\n"
        "for name in ('pytest', 'click', 'release'):\n"
        "    try:\n"
        "        found[name] = importlib.util.find_spec(name) is not None\n"
        "    except ModuleNotFoundError as exc:\n"
        "        found[name] = str(exc)\n"
        "print(json.dumps({'path': sys.path, 'found': found, 'hub': huggingface_hub.__version__,\n"
        "    'torch': torch.__version__, 'transformers': transformers.__version__}))\n"
    )
    proc = compat.subprocess.run(
        child_command(env.python, program), capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    seen = json.loads(proc.stdout)
    parent_sites = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    assert not parent_sites & set(seen["path"]) and str(REPO_ROOT) not in seen["path"]
    assert seen["found"]["pytest"] is False and "blocked: the release repo" in seen["found"]["release"]
    packages = {canonicalize_name(k): v for k, v in env.packages.items()}
    assert seen["hub"] == packages["huggingface-hub"] and seen["transformers"] == oldest
    assert seen["torch"] == environments.torch_version()
    # The next environment shares the files uv installed from its cache (torch's above all): hardlinks.
    other, _ = ensure_environment(newest)
    init = Path("lib") / f"python3.{sys.version_info.minor}" / "site-packages" / "torch" / "__init__.py"
    assert (env.root / init).stat().st_ino == (other.root / init).stat().st_ino
    disk = environments.environment_disk(other.root)
    assert disk.unique_bytes < disk.total_bytes / 4, disk
