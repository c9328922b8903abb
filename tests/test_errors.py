"""Every command in a bad environment: one line on stderr, exit 1 (130 when interrupted), no traceback, nothing
left behind.

The environments are real, not mocked: a full or read-only output is a tmpfs mounted in a private mount namespace
(``unshare --user --map-root-user --mount``), so the command sees what it would on a full runner disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import build_reference
from tests.test_card import SETTINGS

LEFT = "=== left behind ==="

# Mount a tmpfs with $OPTS at $OUT (a private mount: it vanishes with the command), optionally copy $SEED into it
# and remount it read-only, run the command, then list what it left in $OUT.
WRAPPER = r"""
mount -t tmpfs -o "$OPTS" tmpfs "$OUT" || exit 97
if [ -n "$SEED" ]; then cp -a "$SEED" "$OUT/" && mount -o remount,ro "$OUT" || exit 98; fi
"$@"
rc=$?
echo "=== left behind ==="
find "$OUT" -mindepth 1 -newer "$STAMP" -print
exit $rc
"""


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


needs_mounts = pytest.mark.skipif(not _unshare_works(), reason="needs unshare with user and mount namespaces")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer_dir):
    """A training checkpoint and the folder converted from it."""
    from release.card.model_card import CardSettings, card_release
    from release.convert.folder import convert_checkpoint
    from release.demo import training_config_dict, write_training_checkpoint
    from release.verify.report import read_report, report_path
    from release.verify.runner import verify_model

    root = tmp_path_factory.mktemp("errors")
    model = build_reference()
    c = model.config
    config = training_config_dict(
        n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer, block_size=c.block_size
    )
    checkpoint = write_training_checkpoint(
        model, root / "ckpt.pt", train_config=config, iter_num=10, val_loss=2.0
    )
    convert_checkpoint(checkpoint, root / "model", tokenizer=str(tokenizer_dir))
    verify_model(root / "model", checkpoint=checkpoint, report_path=report_path(root / "model"))
    card_release(
        root / "model",
        version="v1.0.0",
        settings=CardSettings.from_mapping(SETTINGS),
        verification=read_report(root / "verification.json"),
    )
    weights = 4 * sum(t.numel() for k, t in model.state_dict().items() if not k.endswith(".tril"))
    return {
        "root": root,
        "checkpoint": checkpoint,
        "model": root / "model",
        "weights": weights,
        "tokenizer": tokenizer_dir,
    }


def run_in_mount(tmp_path, args, *, opts: str, seed: Path | None = None, env: dict | None = None):
    """``python -m release ARGS`` with a tmpfs (``opts``) at ``tmp_path/out``; returns (rc, stderr, leftovers)."""
    out = tmp_path / "out"
    out.mkdir()
    stamp = tmp_path / "stamp"
    stamp.touch()
    time.sleep(0.01)
    child_env = {
        **os.environ,
        **(env or {}),
        "OUT": str(out),
        "OPTS": opts,
        "SEED": str(seed or ""),
        "STAMP": str(stamp),
    }
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", WRAPPER, "sh", sys.executable, "-m", "release", *args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode not in (97, 98), proc.stderr
    stdout, _, left = proc.stdout.partition(LEFT + "\n")
    return proc.returncode, proc.stderr, [line for line in left.splitlines() if line]


def one_line(rc: int, stderr: str, *, code: int = 1) -> str:
    lines = stderr.strip().splitlines()
    assert rc == code, stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def weights_page_plus_two(world) -> str:
    return f"size={(world['weights'] // 4096 + 2) * 4096}"


# (case, tmpfs options, what the one line says): too small from the start is refused before a byte is written;
# room for the weights alone fills while the folder is written (the staging folder goes); read-only is refused.
CONVERT_CASES = [
    (
        "full disk",
        lambda world: "size=64k",
        lambda out, world: [f"{out} has", f"needs {world['weights']:,} bytes"],
    ),
    ("disk fills midway", weights_page_plus_two, lambda out, world: ["not enough free disk", str(out)]),
    (
        "read-only",
        lambda world: "ro",
        lambda out, world: [f"cannot write into {out}: read-only file system", "folder you can write to"],
    ),
]


@needs_mounts
@pytest.mark.parametrize("case,opts,says", CONVERT_CASES, ids=[c[0] for c in CONVERT_CASES])
def test_convert_in_a_bad_output(world, tmp_path, case, opts, says):
    out = tmp_path / "out"
    args = [
        "convert",
        str(world["checkpoint"]),
        "--out",
        str(out / "model"),
        "--tokenizer",
        str(world["tokenizer"]),
    ]
    rc, err, left = run_in_mount(tmp_path, args, opts=opts(world))
    line = one_line(rc, err)
    assert all(part in line for part in says(out, world)), line
    assert left == []


@needs_mounts
def test_card_on_a_read_only_folder(world, tmp_path):
    out = tmp_path / "out"
    rc, err, left = run_in_mount(
        tmp_path, ["card", str(out / "model"), "--version", "v1.0.0"], opts="size=16m", seed=world["model"]
    )
    line = one_line(rc, err)
    assert "read-only file system" in line and str(out / "model") in line, line
    assert left == []


@needs_mounts
def test_fetch_onto_a_full_disk(world, tmp_path):
    from release._io import sha256_file

    out = tmp_path / "out"
    sha = sha256_file(world["checkpoint"])
    args = ["fetch", world["checkpoint"].as_uri(), "--sha256", sha, "--out", str(out / "ckpt.pt")]
    rc, err, left = run_in_mount(tmp_path, [*args, "--cache-dir", str(out / "cache")], opts="size=16k")
    line = one_line(rc, err)
    assert "space" in line and str(out) in line, line
    assert left == []


def test_publish_to_an_unreachable_hub(world, tmp_path):
    """A Hub that refuses connections is the Hub's failure: one error line and the command to re-run."""
    env = {
        **os.environ,
        "HF_ENDPOINT": "http://127.0.0.1:9",  # discard port: nothing listens
        "HF_TOKEN": "hf_" + "a" * 34,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_XET": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "release", "publish", str(world["model"]), "--repo-id", "acme/tiny"]
        + ["--version", "v1.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    *progress, error, rerun = proc.stderr.strip().splitlines()  # progress: one line per retry
    assert error.startswith("Error: ") and "could not be reached" in error, proc.stderr
    assert rerun.startswith("Re-run to complete the release: release publish "), proc.stderr
    assert all("retrying" in line for line in progress), proc.stderr
    assert "a" * 34 not in proc.stderr + proc.stdout


def test_interrupted_convert_leaves_nothing(world, tmp_path, tokenizer_dir):
    """Ctrl-C while the folder is being written: exit 130, one line, no staging folder left."""
    from release.demo import training_config_dict, write_training_checkpoint

    model = build_reference(n_embd=256, n_layer=6, n_head=8)
    c = model.config
    config = training_config_dict(
        n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer, block_size=c.block_size
    )
    checkpoint = write_training_checkpoint(
        model, tmp_path / "big.pt", train_config=config, iter_num=1, val_loss=1.0
    )
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "release", "convert", str(checkpoint), "--out", str(out / "model")]
        + ["--tokenizer", str(tokenizer_dir)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(out.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "convert finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    line = one_line(proc.returncode, err, code=130)
    assert "interrupted" in line
    assert list(out.iterdir()) == []


def test_an_unexpected_exception_is_one_line(monkeypatch, world):
    """A bug is still one line, with its type, and the way to get the traceback."""
    import release.card.model_card as model_card
    from release.cli import main

    def boom(*args, **kwargs):
        raise KeyError("no such thing")

    monkeypatch.setattr(model_card, "card_release", boom)
    result = CliRunner().invoke(main, ["card", str(world["model"]), "--version", "v1.0.0"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: internal error: KeyError: 'no such thing' (re-run with --debug for the traceback)"
    ]
    debug = CliRunner().invoke(main, ["--debug", "card", str(world["model"]), "--version", "v1.0.0"])
    assert isinstance(debug.exception, KeyError)


def test_an_error_that_a_ctrl_c_caused_is_an_interrupt(monkeypatch, world):
    """A Ctrl-C that strikes while a class is created (an import) arrives wrapped in a RuntimeError, and a
    loader may wrap that again: still exit 130 and the interrupt's line, not an internal error."""
    import release.card.model_card as model_card
    from release.cli import main
    from release.errors import UsageError

    def interrupted_import(*args, **kwargs):
        try:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from KeyboardInterrupt()
        except RuntimeError as exc:
            raise UsageError("cannot load the tokenizer tok: ...") from exc

    monkeypatch.setattr(model_card, "card_release", interrupted_import)
    result = CliRunner().invoke(main, ["card", str(world["model"]), "--version", "v1.0.0"])
    assert result.exit_code == 130
    assert result.stderr.splitlines() == ["Error: interrupted; nothing was left behind"]


def test_offline_mode_with_a_hub_uri_says_what_to_unset(world, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "release", "fetch", "hf://acme/tiny/ckpt.pt", "--sha256", "0" * 64]
        + ["--out", str(tmp_path / "ckpt.pt"), "--cache-dir", str(tmp_path / "cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = one_line(proc.returncode, proc.stderr)
    assert "HF_HUB_OFFLINE" in line, line
    assert not (tmp_path / "ckpt.pt").exists()
    assert json.dumps(line)  # printable
