"""Shared fixtures: tiny real checkpoints in the training format, an offline-trained BPE tokenizer, the local Hub.

Every fixture writes only below pytest's temporary folders. The Hub plugin sets HF_ENDPOINT and friends before any
test module imports huggingface_hub or transformers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["tests.conftest_hub"]

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_VOCAB = (
    384  # the tokenizer's size; models use a slightly larger embedding, like GPT-2 checkpoints can
)


@dataclass
class Checkpoint:
    path: Path
    model: object  # modeling.reference.GPTLanguageModel, in eval mode
    train_config: dict
    arch: dict


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from release.demo import demo_text, train_tokenizer

    return train_tokenizer(demo_text(), tmp_path_factory.mktemp("tokenizer"), vocab_size=TOKENIZER_VOCAB)


# The tests' model: ReferenceConfig's fields, overridden per test through build_reference(**dims).
REFERENCE_DIMS = {"vocab_size": TOKENIZER_VOCAB, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 32}


def build_reference(*, ffn_type: str = "swiglu", seed: int = 0, **dims: int):
    """A randomly initialised training module (eval mode) with non-trivial LayerNorm and bias values."""
    import torch

    from modeling.reference import GPTLanguageModel, ReferenceConfig

    torch.manual_seed(seed)
    model = GPTLanguageModel(ReferenceConfig(ffn_type=ffn_type, **{**REFERENCE_DIMS, **dims}))
    with torch.no_grad():  # default init leaves LayerNorm at 1/0 and would hide a swapped weight/bias
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def make_checkpoint(tmp_path):
    """Factory: write a training-format checkpoint; returns a Checkpoint with the reference module."""
    from release.demo import training_config_dict, write_training_checkpoint

    def make(
        name: str = "ckpt.pt", *, val_loss: float | None = 2.5, iter_num: int = 1000, **arch
    ) -> Checkpoint:
        model = build_reference(**arch)
        c = model.config
        train_config = training_config_dict(
            n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer, block_size=c.block_size
        )
        path = write_training_checkpoint(
            model, tmp_path / name, train_config=train_config, iter_num=iter_num, val_loss=val_loss
        )
        return Checkpoint(path=path, model=model, train_config=train_config, arch=dict(c.__dict__))

    return make


ISOLATION_PREAMBLE = """
import importlib.util, sys
for _name in ("release", "modeling", "tests"):
    assert importlib.util.find_spec(_name) is None, f"{_name} must not be importable here"
"""


def run_isolated(code: str, *, cwd: Path, env: dict | None = None, timeout: float = 300):
    """Run ``code`` in a fresh Python that has torch/transformers but cannot import this repo's packages.

    ``-S`` skips site.py, so the editable install's .pth finder never runs; the environment's site-packages
    are put on PYTHONPATH (plain path entries do not execute .pth files), and cwd is outside the repo.
    """
    import os
    import subprocess
    import sysconfig

    paths = sysconfig.get_paths()
    child_env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONPATH"}
    child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    child_env["PYTHONNOUSERSITE"] = "1"
    return subprocess.run(
        [sys.executable, "-S", "-c", ISOLATION_PREAMBLE + code],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def hub_progress_bars(monkeypatch):
    """huggingface_hub's bars on: the Hub fixtures set HF_HUB_DISABLE_PROGRESS_BARS=1, which the library
    reads once at import and which wins over enable_progress_bars(); both are restored afterwards."""
    import sys

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    monkeypatch.setattr(sys.modules["huggingface_hub.utils.tqdm"], "HF_HUB_DISABLE_PROGRESS_BARS", None)
    was_disabled = are_progress_bars_disabled()
    enable_progress_bars()
    yield
    if was_disabled:
        disable_progress_bars()
