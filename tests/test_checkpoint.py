"""Reading training checkpoints: every accepted format, every refusal, and what is (not) read into memory."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from release.checkpoint import load_reference_model, open_checkpoint
from release.errors import CheckpointError, ConversionError
from tests.conftest import build_reference


def max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> str:
    diff = (actual.float() - expected.float()).abs()
    return f"max abs diff {diff.max().item():.3g}, mean {diff.mean().item():.3g}"


def sample_ids(vocab: int = 384, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


def save_dcp(folder: Path, state: dict) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": that is the point
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder


def optimizer_for(model) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    logits, _ = model(sample_ids())
    logits.sum().backward()
    opt.step()
    model.eval()
    return opt


# --------------------------------------------------------------------------- accepted formats


def test_training_dict_gives_shapes_meta_config_and_lazy_tensors(make_checkpoint):
    ckpt = make_checkpoint(val_loss=2.25, iter_num=1234)
    opened = open_checkpoint(ckpt.path)
    state = ckpt.model.state_dict()
    assert opened.format == "training-dict"
    assert opened.path == ckpt.path
    assert opened.shapes == {k: tuple(v.shape) for k, v in state.items()}
    assert opened.meta == {"iter_num": 1234, "val_loss": 2.25}
    assert opened.train_config == ckpt.train_config
    assert opened.sha256 == hashlib.sha256(ckpt.path.read_bytes()).hexdigest()
    for key, value in state.items():
        assert torch.equal(opened.get(key), value), key
    arch = opened.architecture
    assert (arch.vocab_size, arch.n_layer, arch.n_head, arch.n_embd, arch.block_size, arch.ffn_type) == (
        384,
        2,
        4,
        32,
        64,
        "swiglu",
    )


def test_bare_state_dict(tmp_path):
    model = build_reference(ffn_type="relu")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    opened = open_checkpoint(tmp_path / "sd.pt")
    assert opened.format == "state-dict"
    assert opened.meta == {} and opened.train_config is None
    assert opened.architecture.ffn_type == "relu"
    assert opened.dropout == 0.0


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    model = build_reference()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": state, "iter_num": 1}, tmp_path / "c.pt")
    opened = open_checkpoint(tmp_path / "c.pt")
    assert set(opened.shapes) == set(model.state_dict())
    assert torch.equal(opened.get("lm_head.weight"), model.lm_head.weight)


def test_the_same_key_twice_after_stripping_is_an_error(tmp_path):
    state = build_reference().state_dict()
    state["module.lm_head.bias"] = state["lm_head.bias"].clone()
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"same tensor twice.*lm_head\.bias and module\.lm_head\.bias"):
        open_checkpoint(tmp_path / "c.pt")


def test_losses_stored_as_tensors_become_numbers(tmp_path):
    state = build_reference().state_dict()
    torch.save(
        {"model_state_dict": state, "best_val_loss": torch.tensor(1.5), "iter_num": 3}, tmp_path / "c.pt"
    )
    assert open_checkpoint(tmp_path / "c.pt").meta == {"best_val_loss": 1.5, "iter_num": 3}


def test_legacy_torch_save_format_still_loads(tmp_path, caplog):
    model = build_reference()
    torch.save(
        {"model_state_dict": model.state_dict()}, tmp_path / "old.pt", _use_new_zipfile_serialization=False
    )
    with caplog.at_level(logging.WARNING, logger="release.checkpoint"):
        opened = open_checkpoint(tmp_path / "old.pt")
    assert "legacy" in caplog.text
    assert torch.equal(opened.get("token_embedding.weight"), model.token_embedding.weight)


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_distributed_checkpoint_folder(tmp_path, layout):
    model = build_reference(ffn_type="relu")
    config = {"n_embd": 32, "n_head": 4, "n_layer": 2, "block_size": 64, "dropout": 0.1, "betas": [0.9, 0.95]}
    if layout == "nested":
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer_for(model).state_dict(),
            "iter_num": 700,
            "val_loss": torch.tensor(1.25),
            "config": config,
        }
    else:
        state = dict(model.state_dict())
    folder = save_dcp(tmp_path / "dcp", state)
    opened = open_checkpoint(folder)
    assert opened.format == "dcp"
    assert opened.shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, value in model.state_dict().items():
        assert torch.equal(opened.get(key), value), key
    if layout == "nested":
        assert opened.meta == {"iter_num": 700, "val_loss": 1.25}
        assert opened.train_config == config
        assert opened.dropout == 0.1
    else:
        assert opened.meta == {} and opened.train_config is None
    # The digest covers every file by relative path and content, deterministically.
    assert opened.sha256 == open_checkpoint(folder).sha256
    (folder / "extra.txt").write_text("x")
    assert open_checkpoint(folder).sha256 != opened.sha256


def test_distributed_checkpoint_with_prefixed_model_keys(tmp_path):
    model = build_reference()
    folder = save_dcp(
        tmp_path / "dcp", {"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()}}
    )
    assert set(open_checkpoint(folder).shapes) == set(model.state_dict())


def test_load_reference_model_matches_the_training_module(make_checkpoint):
    ckpt = make_checkpoint()
    model, opened = load_reference_model(ckpt.path)
    assert not model.training
    assert opened.format == "training-dict"
    ids = sample_ids()
    with torch.no_grad():
        expected, actual = ckpt.model(ids)[0], model(ids)[0]
    assert torch.equal(actual, expected), max_abs_diff(actual, expected)


def test_load_reference_model_is_float32_and_takes_dropout_from_the_config(tmp_path):
    from release.demo import training_config_dict, write_training_checkpoint

    model = build_reference().to(torch.bfloat16)
    config = training_config_dict(n_embd=32, n_head=4, n_layer=2, block_size=64, dropout=0.2)
    write_training_checkpoint(model, tmp_path / "c.pt", train_config=config, iter_num=1)
    loaded, _ = load_reference_model(tmp_path / "c.pt")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert loaded.config.dropout == 0.2
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight.float())


def test_load_reference_model_from_dcp(tmp_path):
    model = build_reference()
    folder = save_dcp(tmp_path / "dcp", {"model": model.state_dict()})
    loaded, _ = load_reference_model(folder)
    ids = sample_ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], model(ids)[0])


def test_building_the_reference_on_meta_pulls_in_no_compiler_stack(make_checkpoint):
    # torch's Python meta kernels for tril and the init fills import dynamo and sympy (~800 modules, ~70 MB
    # resident in verify's parent for the rest of the run) for values that the checkpoint replaces anyway.
    ckpt = make_checkpoint()
    code = (
        "import sys, torch; from pathlib import Path; from release.checkpoint import load_reference_model; "
        f"model, _ = load_reference_model(Path({str(ckpt.path)!r})); "
        "assert not any(p.is_meta for p in model.state_dict().values()); "
        "print(sorted(m for m in ('sympy', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_load_reference_model_is_strict(tmp_path):
    state = build_reference().state_dict()
    del state["blocks.1.layer_norm2.bias"]
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ConversionError, match=r"missing: blocks\.1\.layer_norm2\.bias"):
        load_reference_model(tmp_path / "c.pt")


# --------------------------------------------------------------------------- architecture against the config


def test_config_that_disagrees_with_the_tensors_names_both_values(tmp_path):
    from release.demo import training_config_dict, write_training_checkpoint

    config = training_config_dict(n_embd=32, n_head=8, n_layer=3, block_size=64)
    write_training_checkpoint(build_reference(), tmp_path / "c.pt", train_config=config, iter_num=1)
    with pytest.raises(ConversionError) as info:
        _ = open_checkpoint(tmp_path / "c.pt").architecture
    message = str(info.value)
    assert "n_head=8 but the tensors have 4" in message
    assert "n_layer=3 but the tensors have 2" in message


def test_config_with_a_non_integer_dimension_is_an_error(tmp_path):
    state = build_reference().state_dict()
    torch.save({"model_state_dict": state, "config": {"n_embd": "32"}}, tmp_path / "c.pt")
    with pytest.raises(ConversionError, match="config n_embd is '32', not an integer"):
        _ = open_checkpoint(tmp_path / "c.pt").architecture


def test_config_that_is_not_a_dict_is_an_error(tmp_path):
    torch.save({"model_state_dict": build_reference().state_dict(), "config": [1, 2]}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="config is a list, not a dict"):
        open_checkpoint(tmp_path / "c.pt")


# --------------------------------------------------------------------------- refusals


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        open_checkpoint(tmp_path / "nope.pt")


def test_folder_that_is_not_a_dcp_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"not a torch\.distributed\.checkpoint"):
        open_checkpoint(tmp_path)


def test_truncated_file(make_checkpoint, tmp_path):
    data = make_checkpoint().path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        open_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", os.urandom(4096)])
def test_file_that_is_not_a_checkpoint(tmp_path, content):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint|truncated or corrupt"):
        open_checkpoint(tmp_path / "x.pt")


class RunsCode:
    """A pickle payload: unpickling it would call os.system. weights_only must refuse it before that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CustomConfig:
    n_embd = 32


def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    state = build_reference().state_dict()
    torch.save({"model_state_dict": state, "config": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refusing to load .*system.*could run code"):
        open_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    # Control: the payload is real; plain unpickling runs it.
    control = tmp_path / "control-ran"
    pickle.loads(pickle.dumps(RunsCode(control)))  # noqa: S301
    assert control.exists()


def test_custom_class_instance_is_refused(tmp_path):
    torch.save(
        {"model_state_dict": build_reference().state_dict(), "config": CustomConfig()}, tmp_path / "c.pt"
    )
    with pytest.raises(CheckpointError, match=r"refusing to load .*CustomConfig"):
        open_checkpoint(tmp_path / "c.pt")


def test_malicious_dcp_metadata_is_refused_without_running_it(tmp_path):
    folder = save_dcp(tmp_path / "dcp", {"model": build_reference().state_dict()})
    marker = tmp_path / "code-ran"
    (folder / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(CheckpointError, match=r"refusing to load .*\.metadata"):
        open_checkpoint(folder)
    assert not marker.exists()


def test_corrupt_dcp_metadata(tmp_path):
    folder = save_dcp(tmp_path / "dcp", {"model": build_reference().state_dict()})
    (folder / ".metadata").write_bytes((folder / ".metadata").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        open_checkpoint(folder)


@pytest.mark.parametrize(
    "obj, message",
    [
        ([1, 2, 3], "holds a list, not a dict"),
        ({"weights": [1.0]}, "not a checkpoint of this model"),
        ({}, "not a checkpoint of this model"),
        ({"model_state_dict": {"a": 1.0}}, "not tensors: a"),
        ({"model_state_dict": [torch.zeros(1)]}, "model_state_dict is a list"),
        ({"model_state_dict": {"encoder.weight": torch.zeros(2, 2)}}, "not a checkpoint of this model"),
    ],
)
def test_dict_that_is_not_a_checkpoint_of_this_model(tmp_path, obj, message):
    torch.save(obj, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=message):
        _ = open_checkpoint(tmp_path / "c.pt").architecture


# --------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_optimizer_state_is_never_read_into_memory(tmp_path):
    model = build_reference()
    big = 64 * 2**20  # 256 MiB of "AdamW state", 1000x the model
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": {
                "state": {0: {"exp_avg": torch.ones(big), "exp_avg_sq": torch.ones(big)}}
            },
            "scaler_state_dict": {"scale": 65536.0},
            "iter_num": 1,
        },
        tmp_path / "c.pt",
    )
    before = _rss_bytes()
    opened = open_checkpoint(tmp_path / "c.pt")
    for key in opened.shapes:
        opened.get(key).sum()  # touch every model tensor
    grown = _rss_bytes() - before
    assert grown < 32 * 2**20, (
        f"RSS grew by {grown / 2**20:.0f} MiB for a 0.3 MiB model next to 512 MiB of optimizer"
    )
