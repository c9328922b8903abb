"""The transformers compatibility matrix (issue #9).

Unit tests cover the supported range and version list, the gates and their failure lines, the environment cache
and the report merge. Tests marked ``compat`` install real transformers versions (cached in
``$RELEASE_CACHE_DIR/compat``, else ``~/.cache/custom-transformer-release/compat``, so only the first run pays for
the downloads) and load a converted folder there in a child Python that cannot import this repo. They run the
versions of ``RELEASE_COMPAT_VERSIONS`` (comma-separated), else the oldest and the newest of the default list.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from release.cli import main
from release.compat import matrix as compat
from release.compat.matrix import (
    ChildOutcome,
    CompatReport,
    ReferenceOutputs,
    check_versions,
    default_versions,
    ensure_environment,
    judge_child_result,
    merge_into_report,
    parse_versions,
    run_compat_matrix,
    supported_range,
)
from release.errors import CompatError, SettingsError, UsageError

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
        "transformers 5.0.0: logits: max |logit diff| 0.031 exceeds the 0.0001 gate",
        "transformers 5.0.0: logits: top-1 agreement 96.88% is below the 100% gate",
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


def test_report_dict_and_merge_keep_other_keys(tmp_path):
    ok = judge_child_result("4.46.3", child_result(), fake_reference())
    bad = judge_child_result("5.0.0", child_result(generated=[[1, 2, 9, 4], [4, 3, 7]]), fake_reference())
    report = CompatReport(range=">=4.46,<6", results=[ok, bad])
    assert not report.passed and report.tested_versions == ["4.46.3"]
    path = tmp_path / "verification.json"
    path.write_text(json.dumps({"schema_version": 1, "passed": True, "compat": {"stale": 1}}))
    merge_into_report(path, report)
    text = path.read_text()
    data = json.loads(text)
    assert data["schema_version"] == 1 and data["passed"] is True
    assert data["compat"]["range"] == ">=4.46,<6" and data["compat"]["passed"] is False
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
    }
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    path.write_text("[1, 2]")
    with pytest.raises(CompatError, match="does not hold a JSON object"):
        merge_into_report(path, report)


# --------------------------------------------------------------------------- the environment cache


def fake_pip(calls: list, *, fail: bool = False, with_torch: bool = False):
    def install(version: str, target: Path) -> None:
        calls.append(version)
        info = target / f"transformers-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: transformers\nVersion: {version}\n")
        if with_torch:
            (target / "torch").mkdir()
        if fail:
            raise CompatError(f"pip could not install transformers=={version}: boom")

    return install


def test_environment_is_installed_once_and_reused(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(compat, "_pip_install", fake_pip(calls))
    first = ensure_environment("4.46.3", cache_dir=tmp_path)
    assert ensure_environment("4.46.3", cache_dir=tmp_path) == first
    assert calls == ["4.46.3"]
    stamp = json.loads((first / compat.STAMP).read_text())
    assert stamp["packages"] == {"transformers": "4.46.3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no staging folder left


def test_interrupted_install_leaves_nothing_and_is_redone(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(compat, "_pip_install", fake_pip(calls, fail=True))
    with pytest.raises(CompatError, match="boom"):
        ensure_environment("5.0.0", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    # A folder without a stamp (e.g. copied by hand) is not trusted either.
    (compat.environment_dir("5.0.0", tmp_path) / "transformers").mkdir(parents=True)
    monkeypatch.setattr(compat, "_pip_install", fake_pip(calls))
    env = ensure_environment("5.0.0", cache_dir=tmp_path)
    assert (env / compat.STAMP).is_file() and not (env / "transformers").exists()
    assert calls == ["5.0.0", "5.0.0"]


def test_environment_must_not_bring_its_own_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(compat, "_pip_install", fake_pip([], with_torch=True))
    with pytest.raises(CompatError, match="pulled in torch"):
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

    report_path = tmp_path / "verification.json"
    report_path.write_text(json.dumps({"schema_version": 1, "passed": True}))
    args = ["compat", str(buggy), "--checkpoint", str(checkpoint), "--report", str(report_path)]
    result = CliRunner().invoke(main, [*args, "--versions", ",".join(versions)])

    assert result.exit_code == 1, result.output
    assert f"Error: {len(old)} of {len(versions)} transformers versions failed" in result.output
    data = json.loads(report_path.read_text())
    assert data["schema_version"] == 1 and data["compat"]["passed"] is False
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
