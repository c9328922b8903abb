"""The preflight (issue #13): settings, free disk and memory checked in seconds, before any download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from release import preflight
from release._io import sha256_file
from release.cli import main
from release.fetch.weights_only import peek_checkpoint
from tests.test_fetch import write_training_checkpoint

CARD = """
[tool.release.card]
model_name = "Acme tiny"
license = "apache-2.0"
description = "A tiny test model."
intended_use = "Tests."
limitations = "None known."
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELEASE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("RELEASE_REPO_ID", "RELEASE_CHECKPOINT", "RELEASE_CHECKPOINT_SHA256", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "src").mkdir()
    write_training_checkpoint(tmp_path / "src" / "best_model.pt")
    return tmp_path


def release_run(project: Path, *extra: str, card: bool = True):
    (project / "pyproject.toml").write_text(
        '[tool.release]\nrepo_id = "acme/tiny"\n' + (CARD if card else "")
    )
    ckpt = project / "src" / "best_model.pt"
    args = [
        "run",
        "--version",
        "v1.0.0",
        "--dry-run",
        "--checkpoint",
        str(ckpt),
        "--sha256",
        sha256_file(ckpt),
    ]
    return CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)


def nothing_fetched(project: Path) -> bool:
    return not (project / "cache").exists() and not (project / "dist").exists()


def test_too_little_free_disk_fails_fast_with_one_line(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "free_disk_bytes", lambda path: 1000)
    result = release_run(project, "--stop-after", "convert")
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert line.startswith("Error: not enough free disk: ")
    assert "has 0.0 GB free, this checkpoint needs" in line and "weights-only file" in line
    assert "RELEASE_RUNNER" in line  # what to do
    assert nothing_fetched(project)


def test_too_little_memory_fails_fast_with_one_line(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "available_memory_bytes", lambda: 10**6)
    result = release_run(project, "--stop-after", "convert")
    assert result.exit_code == 1, result.output
    assert "Error: not enough memory: 0.0 GB available" in result.output
    assert nothing_fetched(project)


def test_missing_card_settings_fail_before_the_fetch(project: Path) -> None:
    result = release_run(project, card=False)
    assert result.exit_code == 2, result.output
    assert "[tool.release.card]: missing model_name" in result.output
    assert nothing_fetched(project)


def test_card_settings_are_not_needed_when_the_run_stops_before_the_card(project: Path) -> None:
    result = release_run(project, "--stop-after", "fetch", card=False)
    assert result.exit_code == 0, result.output
    assert "[preflight] checkpoint:" in result.output


def test_needs_follow_the_checkpoint_and_the_release_dtype(project: Path) -> None:
    head = peek_checkpoint(str(project / "src" / "best_model.pt"))
    fp32 = preflight.needs_for(head, dtype="float32", cached=False, local=True)
    bf16 = preflight.needs_for(head, dtype="bfloat16", cached=False, local=True)
    cached = preflight.needs_for(head, dtype="float32", cached=True, local=True)
    assert fp32.disk - bf16.disk == head.weights_bytes // 2  # the model folder halves
    assert fp32.disk - cached.disk == head.reference_bytes  # the weights-only file is already there
    # the optimizer state never counts: the same model saved without it needs the same
    import torch

    bare = project / "src" / "bare.pt"
    torch.save(torch.load(project / "src" / "best_model.pt", weights_only=True)["model_state_dict"], bare)
    assert bare.stat().st_size < head.size / 2
    assert preflight.needs_for(peek_checkpoint(str(bare)), dtype="float32", cached=False, local=True) == fp32


def test_free_disk_of_a_folder_not_yet_made_is_its_parents(tmp_path: Path) -> None:
    assert preflight.free_disk_bytes(tmp_path / "a" / "b") == preflight.free_disk_bytes(tmp_path)
    assert os.path.exists(tmp_path) and not (tmp_path / "a").exists()


def test_preflight_names_the_device_and_says_when_its_memory_is_short(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    from release.errors import UsageError
    from release.settings import load_settings
    from release.verify import loading

    gb = 10**9
    ckpt = project / "src" / "best_model.pt"
    settings = load_settings(
        overrides={"checkpoint": str(ckpt), "checkpoint_sha256": sha256_file(ckpt), "device": "cuda"}, env={}
    )
    lines = preflight.preflight(settings, stop_after="fetch", pyproject_dir=project)
    assert not any(line.startswith("device") for line in lines)  # verify does not run
    monkeypatch.setattr(loading, "cuda_memory", lambda: [])
    with pytest.raises(UsageError, match="no CUDA device is visible"):
        preflight.preflight(settings, stop_after="verify", pyproject_dir=project)
    monkeypatch.setitem(sys.modules, "accelerate", types.ModuleType("accelerate"))
    monkeypatch.setattr(loading, "cuda_memory", lambda: [(40 * gb, 80 * gb)])
    assert preflight.preflight(settings, stop_after="verify", pyproject_dir=project)[-1].endswith(": ok")
    short = preflight.device_line("cuda", weights_bytes=10 * gb, gpus=lambda: [(4 * gb, 8 * gb)])
    assert short == (
        "device cuda:0: 4.0 GB free, verify needs 12.0 GB: short, so accelerate spreads each model over 1 GPU(s) "
        "and the CPU (slower); a GPU with more free memory keeps it on one"
    )
    assert preflight.device_line("auto", weights_bytes=gb, gpus=lambda: []).startswith("device auto: no GPU")
