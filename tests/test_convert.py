"""``release convert``: the folder it writes loads through the Auto classes and matches the training module;
it is deterministic, atomic, and refuses every bad input with one line and no output."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from release._io import sha256_file
from release.cli import main
from release.convert import folder as convert_module
from release.convert.folder import ConversionResult, convert_checkpoint, parse_size
from release.convert.tokenizer import DESCRIBED_FILES, resolve_training_tokenizer
from release.errors import ConversionError, OutputExistsError, ResourceError, TokenizerError, UsageError
from tests.conftest import TOKENIZER_VOCAB, build_reference, run_isolated

FP32_ATOL = 1e-5


def assert_logits_close(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float, what: str = "logits"
) -> None:
    diff = (actual.float() - expected.float()).abs()
    assert diff.max().item() <= atol, (
        f"{what}: max abs diff {diff.max().item():.3g}, mean {diff.mean().item():.3g} (allowed {atol})"
    )


def sample_ids(vocab: int = TOKENIZER_VOCAB, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(seed))


def load_auto(folder: Path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, **kwargs).eval()


def assert_matches_reference(folder: Path, reference, *, atol: float = FP32_ATOL) -> None:
    model = load_auto(folder)
    ids = sample_ids(reference.config.vocab_size)
    with torch.no_grad():
        assert_logits_close(model(ids).logits, reference(ids)[0], atol=atol)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def save_dcp(folder: Path, state: dict) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder


@pytest.fixture
def convert(tokenizer_dir, tmp_path):
    """convert_checkpoint with the offline tokenizer, no progress; ``out`` defaults to tmp_path/"model"."""

    def run(checkpoint: Path, out: Path | None = None, **kwargs) -> ConversionResult:
        kwargs.setdefault("tokenizer", tokenizer_dir)
        kwargs.setdefault("progress", False)
        return convert_checkpoint(checkpoint, out or tmp_path / "model", **kwargs)

    return run


def assert_nothing_left(parent: Path, before: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == before, "conversion left files behind"


# --------------------------------------------------------------------------- parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        ("12345", 12345),
        ("500MB", 500 * 10**6),
        ("2GB", 2 * 10**9),
        ("1GiB", 2**30),
        ("1.5 kb", 1500),
        ("7b", 7),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "five", "-1MB", "0", "1 parsec", "2 GBs"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


# --------------------------------------------------------------------------- loads and matches


@pytest.mark.parametrize("ffn_type", ["swiglu", "relu"])
def test_both_ffn_variants_load_through_the_auto_classes_and_match(make_checkpoint, convert, ffn_type):
    from transformers import AutoTokenizer

    ckpt = make_checkpoint(ffn_type=ffn_type, vocab_size=400)
    result = convert(ckpt.path)
    out = result.out_dir
    assert result.architecture.ffn_type == ffn_type and result.architecture.vocab_size == 400
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "configuration_custom_transformer.py",
        "generation_config.json",
        "model.safetensors",
        "modeling_custom_transformer.py",
        "release.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert_matches_reference(out, ckpt.model)
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert len(tok) == TOKENIZER_VOCAB
    model = load_auto(out)
    assert model.config.ffn_type == ffn_type
    greedy = model.generate(
        sample_ids()[:1, :4], max_new_tokens=6, do_sample=False, pad_token_id=model.config.pad_token_id
    )
    expected = ckpt.model.generate_greedy(sample_ids()[:1, :4], 6, eos_token_id=model.config.eos_token_id)
    assert torch.equal(greedy, expected)


def test_sharded_output(make_checkpoint, convert):
    from safetensors import safe_open

    ckpt = make_checkpoint()
    limit = 20_000
    result = convert(ckpt.path, max_shard_size=limit)
    out = result.out_dir
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert list(index["weight_map"]) == sorted(index["weight_map"])
    assert set(index["weight_map"].values()) == set(shards)
    total = 0
    for shard in shards:
        with safe_open(out / shard, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            sizes = [f.get_slice(k).get_shape() for k in f.keys()]
            nbytes = sum(4 * int(torch.tensor(s).prod()) for s in sizes)
            assert nbytes <= limit or len(sizes) == 1  # only a tensor bigger than the limit stands alone
            total += nbytes
            assert {k: shard for k in f.keys()} == {
                k: v for k, v in index["weight_map"].items() if v == shard
            }
    assert index["metadata"]["total_size"] == total
    assert_matches_reference(out, ckpt.model)


def test_dcp_input(tmp_path, convert):
    from release.demo import training_config_dict

    model = build_reference(ffn_type="relu")
    optimizer = torch.optim.AdamW(model.parameters())
    config = training_config_dict(n_embd=32, n_head=4, n_layer=2, block_size=64)
    folder = save_dcp(
        tmp_path / "dcp", {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": config}
    )
    result = convert(folder, max_shard_size=50_000)
    assert_matches_reference(result.out_dir, model)
    release = json.loads((result.out_dir / "release.json").read_text())
    assert release["checkpoint"]["format"] == "dcp"
    assert release["checkpoint"]["train_config"] == config


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_prefixed_keys(tmp_path, convert, prefix):
    model = build_reference()
    torch.save(
        {"model_state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, tmp_path / "c.pt"
    )
    assert_matches_reference(convert(tmp_path / "c.pt").out_dir, model)


def test_bare_state_dict(tmp_path, convert):
    model = build_reference(ffn_type="relu")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    result = convert(tmp_path / "sd.pt")
    assert_matches_reference(result.out_dir, model)
    release = json.loads((result.out_dir / "release.json").read_text())
    assert release["checkpoint"]["format"] == "state-dict"
    assert release["checkpoint"]["train_config"] is None


def test_bfloat16_output(make_checkpoint, convert):
    """bf16 weights are the fp32 weights rounded once.

    Loaded back in fp32 they match a reference whose weights were rounded the same way to 1e-5; run natively
    in bf16 the logits stay within bf16's precision (0.05 here).
    """
    from safetensors import safe_open

    ckpt = make_checkpoint()
    out = convert(ckpt.path, dtype="bfloat16").out_dir
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    native = load_auto(out)
    assert native.dtype == torch.bfloat16
    rounded = build_reference()
    rounded.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in ckpt.model.state_dict().items()})
    ids = sample_ids()
    with torch.no_grad():
        expected = rounded(ids)[0]
        assert_logits_close(load_auto(out, dtype=torch.float32)(ids).logits, expected, atol=FP32_ATOL)
        assert_logits_close(native(ids).logits, expected, atol=0.05, what="bf16 logits")


def test_float16_overflow_is_an_error(tmp_path, convert):
    model = build_reference()
    with torch.no_grad():
        model.lm_head.bias[3] = 1e6  # fine in fp32, inf in fp16
    torch.save(model.state_dict(), tmp_path / "c.pt")
    with pytest.raises(ConversionError, match=r"lm_head\.bias \(values beyond the range of float16\)"):
        convert(tmp_path / "c.pt", dtype="float16")
    assert not (tmp_path / "model").exists()
    convert(tmp_path / "c.pt", dtype="float32")  # the same weights are fine in fp32


def test_loads_in_a_process_where_this_repo_is_not_importable(make_checkpoint, convert, tmp_path):
    ckpt = make_checkpoint()
    out = convert(ckpt.path, max_shard_size=30_000).out_dir
    ids = sample_ids()
    torch.save(ids, tmp_path / "ids.pt")
    code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)
assert len(tok) == {TOKENIZER_VOCAB}, len(tok)
with torch.no_grad():
    logits = model(torch.load({str(tmp_path / "ids.pt")!r})).logits
torch.save(logits, {str(tmp_path / "logits.pt")!r})
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("HF_MODULES_CACHE", None)
    proc = run_isolated(code, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        assert_logits_close(torch.load(tmp_path / "logits.pt"), ckpt.model(ids)[0], atol=FP32_ATOL)


# --------------------------------------------------------------------------- contents of the folder


def test_config_and_generation_config(tmp_path, convert):
    import transformers

    from release.demo import training_config_dict, write_training_checkpoint

    model = build_reference(ffn_type="relu", vocab_size=400)
    config = training_config_dict(n_embd=32, n_head=4, n_layer=2, block_size=64, dropout=0.1)
    write_training_checkpoint(model, tmp_path / "c.pt", train_config=config, iter_num=5)
    out = convert(tmp_path / "c.pt", dtype="float16").out_dir
    text = (out / "config.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert data["auto_map"] == {
        "AutoConfig": "configuration_custom_transformer.CustomTransformerConfig",
        "AutoModel": "modeling_custom_transformer.CustomTransformerModel",
        "AutoModelForCausalLM": "modeling_custom_transformer.CustomTransformerForCausalLM",
    }
    assert data["architectures"] == ["CustomTransformerForCausalLM"]
    assert data["model_type"] == "custom_transformer"
    assert data["dtype"] == data["torch_dtype"] == "float16"
    assert data["transformers_version"] == transformers.__version__
    assert data["dropout"] == 0.1
    expected_dims = {
        "vocab_size": 400,
        "n_positions": 64,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "ffn_type": "relu",
    }
    assert {k: data[k] for k in expected_dims} == expected_dims
    eos = TOKENIZER_VOCAB - 1  # the demo tokenizer's <|endoftext|>
    assert (data["bos_token_id"], data["eos_token_id"], data["pad_token_id"]) == (eos, eos, eos)
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        eos,
        eos,
        eos,
    )


def test_modeling_and_tokenizer_files_are_copied_byte_for_byte(make_checkpoint, convert, tokenizer_dir):
    """The vocabulary is the training tokenizer's byte for byte; only the config files describe the model."""
    out = convert(make_checkpoint().path).out_dir
    for name in ("configuration_custom_transformer.py", "modeling_custom_transformer.py"):
        assert (out / name).read_bytes() == resources.files("modeling").joinpath(name).read_bytes()
    vocabulary = [p for p in tokenizer_dir.iterdir() if p.name not in DESCRIBED_FILES]
    assert [p.name for p in vocabulary] == ["tokenizer.json"]
    for source in vocabulary:
        assert (out / source.name).read_bytes() == source.read_bytes()
    source_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    shipped_config = json.loads((out / "tokenizer_config.json").read_text())
    described = {"model_max_length", "model_input_names", "bos_token", "eos_token", "pad_token"}
    for key in set(source_config) - described:
        assert shipped_config[key] == source_config[key], key


# --------------------------------------------------------------------------- the shipped tokenizer


def gpt2_like_tokenizer(tokenizer_dir: Path, dest: Path) -> Path:
    """The training tokenizer as GPT-2's Hub repo has it: no pad token, no model_max_length, and a
    special_tokens_map.json (which transformers 4.x lets override tokenizer_config.json)."""
    import shutil

    shutil.copytree(tokenizer_dir, dest)
    config = json.loads((dest / "tokenizer_config.json").read_text())
    for key in ("pad_token", "model_max_length"):
        config.pop(key)
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (dest / "special_tokens_map.json").write_text(json.dumps(special))
    return dest


@pytest.fixture(params=["demo", "gpt2-like"])
def training_tokenizer(request, tokenizer_dir, tmp_path) -> Path:
    if request.param == "demo":
        return tokenizer_dir
    return gpt2_like_tokenizer(tokenizer_dir, tmp_path / "gpt2-like")


def test_shipped_tokenizer_context_length_is_the_models(make_checkpoint, convert, training_tokenizer):
    """model_max_length = n_positions, so truncation=True cuts a long text where the model's context ends."""
    from transformers import AutoTokenizer

    out = convert(make_checkpoint(block_size=48).path, tokenizer=training_tokenizer).out_dir
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 48
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert tok.model_max_length == json.loads((out / "config.json").read_text())["n_positions"] == 48
    long_text = "The Fox and the Grapes. " * 40
    assert len(tok(long_text, verbose=False)["input_ids"]) > 48
    assert len(tok(long_text, truncation=True)["input_ids"]) == 48


def test_shipped_tokenizer_gives_only_what_the_model_takes(make_checkpoint, convert, training_tokenizer):
    """No token_type_ids: model.generate(**tokenizer(...)) must not get a kwarg the model does not use."""
    from transformers import AutoTokenizer

    out = convert(make_checkpoint().path, tokenizer=training_tokenizer).out_dir
    assert json.loads((out / "tokenizer_config.json").read_text())["model_input_names"] == [
        "input_ids",
        "attention_mask",
    ]
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert set(tok("The Fox", return_tensors="pt")) == {"input_ids", "attention_mask"}
    model = load_auto(out)
    model.generate(**tok("The Fox", return_tensors="pt"), max_new_tokens=2, do_sample=False)


def test_shipped_special_tokens_are_the_models(make_checkpoint, convert, training_tokenizer):
    """bos/eos/pad of the shipped tokenizer are the ids config.json and generation_config.json use."""
    from transformers import AutoTokenizer

    out = convert(make_checkpoint().path, tokenizer=training_tokenizer).out_dir
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    eos = TOKENIZER_VOCAB - 1  # <|endoftext|>
    for source in (config, generation):
        assert (source["bos_token_id"], source["eos_token_id"], source["pad_token_id"]) == (eos, eos, eos)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (eos, eos, eos)
    assert tok.pad_token == "<|endoftext|>"
    if (training_tokenizer / "special_tokens_map.json").is_file():  # 4.x reads it over the config
        assert json.loads((out / "special_tokens_map.json").read_text())["pad_token"] == "<|endoftext|>"


def test_shipped_vocabulary_is_the_training_tokenizers(make_checkpoint, convert, training_tokenizer):
    from transformers import AutoTokenizer

    from release.demo import demo_text

    out = convert(make_checkpoint().path, tokenizer=training_tokenizer).out_dir
    assert (out / "tokenizer.json").read_bytes() == (training_tokenizer / "tokenizer.json").read_bytes()
    shipped = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    training = AutoTokenizer.from_pretrained(training_tokenizer)
    assert shipped.get_vocab() == training.get_vocab() and len(shipped) == len(training) == TOKENIZER_VOCAB
    text = demo_text()[:4000]
    assert shipped(text, verbose=False)["input_ids"] == training(text, verbose=False)["input_ids"]


def test_release_json_records_the_local_tokenizer_folder(make_checkpoint, convert, tokenizer_dir):
    """So `release verify DIR --checkpoint CKPT` can use it without --tokenizer (see test_verify)."""
    out = convert(make_checkpoint().path, tokenizer=tokenizer_dir).out_dir
    recorded = json.loads((out / "release.json").read_text())["tokenizer"]
    assert recorded["path"] == str(tokenizer_dir.resolve()) and recorded["name"] == tokenizer_dir.name


def test_release_json_records_a_tokenizer_inside_the_project_relative_to_it(
    make_checkpoint, convert, tokenizer_dir, monkeypatch
):
    """No machine's home-directory path in a published file; the same project checkout gives the same bytes."""
    from release.convert.tokenizer import resolve_training_tokenizer

    ckpt = make_checkpoint().path
    monkeypatch.chdir(tokenizer_dir.parent)
    out = convert(ckpt, tokenizer=tokenizer_dir.resolve()).out_dir
    assert json.loads((out / "release.json").read_text())["tokenizer"]["path"] == tokenizer_dir.name
    chosen = resolve_training_tokenizer(out, explicit=None, configured=None)
    assert (chosen.name, chosen.origin) == (tokenizer_dir.name, "release.json")


def test_resolve_training_tokenizer_order(make_checkpoint, convert, tokenizer_dir, tmp_path):
    out = convert(make_checkpoint().path, tokenizer=tokenizer_dir).out_dir
    local = str(tokenizer_dir.resolve())
    assert resolve_training_tokenizer(out, explicit="x/y", configured="a/b").origin == "--tokenizer"
    from_record = resolve_training_tokenizer(out, explicit=None, configured="a/b")
    assert (from_record.name, from_record.origin) == (local, "release.json")
    bare = tmp_path / "bare"
    bare.mkdir()
    assert resolve_training_tokenizer(bare, explicit=None, configured="a/b").origin == "settings"
    default = resolve_training_tokenizer(bare, explicit=None, configured=None)
    assert (default.name, default.origin) == ("gpt2", "default (GPT-2's)")
    release = json.loads((out / "release.json").read_text())
    release["tokenizer"]["path"] = str(tmp_path / "moved-away")
    (out / "release.json").write_text(json.dumps(release))
    with pytest.raises(TokenizerError, match=r"moved-away, which is not on this machine; pass --tokenizer"):
        resolve_training_tokenizer(out, explicit=None, configured=None)
    assert resolve_training_tokenizer(out, explicit=None, configured="a/b").origin == "settings"


def test_release_json_records_provenance(make_checkpoint, convert):
    import safetensors
    import transformers

    ckpt = make_checkpoint(val_loss=2.5, iter_num=1000)
    result = convert(ckpt.path, max_shard_size=30_000)
    out = result.out_dir
    text = (out / "release.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    sha = hashlib.sha256(ckpt.path.read_bytes()).hexdigest()
    assert data["checkpoint"] == {
        "filename": "ckpt.pt",
        "sha256": sha,
        "size": ckpt.path.stat().st_size,
        "format": "training-dict",
        "iter_num": 1000,
        "val_loss": 2.5,
        "best_val_loss": None,
        "train_config": ckpt.train_config,
    }
    assert result.checkpoint_sha256 == sha
    assert data["converter"]["name"] == "custom-transformer-release"
    assert data["converter"]["git_commit"] is None or len(data["converter"]["git_commit"]) == 40
    assert data["dtype"] == "float32"
    assert data["architecture"]["vocab_size"] == TOKENIZER_VOCAB
    assert data["libraries"]["transformers"] == transformers.__version__
    assert data["libraries"]["safetensors"] == safetensors.__version__
    assert set(data["libraries"]) == {"torch", "transformers", "safetensors", "tokenizers", "python"}
    assert data["tokenizer"]["source"] == "local" and data["tokenizer"]["size"] == TOKENIZER_VOCAB
    on_disk = {p.name for p in out.iterdir()} - {"release.json"}
    assert set(data["files"]) == on_disk
    for name, record in data["files"].items():
        assert record == {"sha256": sha256_file(out / name), "size": (out / name).stat().st_size}, name
    assert set(result.files) == on_disk | {"release.json"}
    assert result.files["release.json"].sha256 == sha256_file(out / "release.json")


def test_release_json_of_a_dcp_folder_and_non_finite_losses(tmp_path, convert):
    from release.checkpoint import checkpoint_digest

    model = build_reference()
    folder = save_dcp(
        tmp_path / "dcp", {"model": model.state_dict(), "iter_num": 7, "best_val_loss": float("inf")}
    )
    data = json.loads((convert(folder).out_dir / "release.json").read_text())
    assert data["checkpoint"]["sha256"] == checkpoint_digest(folder)
    assert data["checkpoint"]["size"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert (data["checkpoint"]["iter_num"], data["checkpoint"]["best_val_loss"]) == (7, None)


# --------------------------------------------------------------------------- deterministic and atomic


def test_converting_twice_gives_byte_identical_files(make_checkpoint, convert, tmp_path):
    ckpt = make_checkpoint()
    first = convert(ckpt.path, tmp_path / "a", max_shard_size=40_000).out_dir
    second = convert(ckpt.path, tmp_path / "b", max_shard_size=40_000).out_dir
    assert folder_bytes(first) == folder_bytes(second)


def test_existing_non_empty_output_is_refused_unless_forced(make_checkpoint, convert, tmp_path):
    ckpt = make_checkpoint()
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty; pass --force"):
        convert(ckpt.path, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    before = {p.name for p in tmp_path.iterdir()}
    convert(ckpt.path, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert {p.name for p in tmp_path.iterdir()} == before  # the old folder was deleted, nothing else left


def test_existing_empty_output_folder_is_used(make_checkpoint, convert, tmp_path):
    (tmp_path / "model").mkdir()
    assert (convert(make_checkpoint().path).out_dir / "model.safetensors").exists()


def test_output_that_is_a_file_is_refused(make_checkpoint, convert, tmp_path):
    (tmp_path / "model").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        convert(make_checkpoint().path, force=True)


def _fail_after_first_shard(monkeypatch, exc: BaseException):
    real_close = convert_module.SafetensorsWriter.close
    calls = []

    def close(self):
        real_close(self)
        calls.append(self.path.name)
        raise exc

    monkeypatch.setattr(convert_module.SafetensorsWriter, "close", close)
    return calls


@pytest.mark.parametrize(
    "exc,raised",
    [
        (OSError(errno.ENOSPC, "No space left on device"), ResourceError),  # names the folder and the bytes
        (KeyboardInterrupt(), KeyboardInterrupt),
        (RuntimeError("boom"), RuntimeError),
    ],
    ids=["disk-full", "ctrl-c", "bug"],
)
def test_failure_mid_write_leaves_nothing_behind(
    make_checkpoint, convert, tmp_path, monkeypatch, exc, raised
):
    ckpt = make_checkpoint()
    parent = tmp_path / "dist" / "v1"
    calls = _fail_after_first_shard(monkeypatch, exc)
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(raised):
        convert(ckpt.path, parent / "model", max_shard_size=30_000)
    assert len(calls) == 1 and calls[0].startswith("model-00001-of-")
    assert not (tmp_path / "dist").exists()  # the parents it created are gone too
    assert_nothing_left(tmp_path, before)


def test_failure_with_force_keeps_the_old_folder(make_checkpoint, convert, tmp_path, monkeypatch):
    ckpt = make_checkpoint()
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("previous release")
    before = {p.name for p in tmp_path.iterdir()}
    _fail_after_first_shard(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(ResourceError, match="not enough free disk"):
        convert(ckpt.path, out, force=True, max_shard_size=30_000)
    assert (out / "keep.txt").read_text() == "previous release"
    assert_nothing_left(tmp_path, before)


# --------------------------------------------------------------------------- bad weights and keys


def test_nan_and_inf_weights_are_errors_listing_every_key(tmp_path, convert):
    model = build_reference()
    with torch.no_grad():
        model.blocks[0].self_attention.heads[2].value_proj.weight[0, 0] = float("nan")
        model.blocks[1].feed_forward.w3.bias[1] = float("inf")
    torch.save(model.state_dict(), tmp_path / "c.pt")
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(ConversionError, match=r"non-finite weights in 2 checkpoint tensor\(s\)") as info:
        convert(tmp_path / "c.pt", max_shard_size=30_000)
    message = str(info.value)
    assert "blocks.0.self_attention.heads.2.value_proj.weight (NaN/Inf)" in message
    assert "blocks.1.feed_forward.w3.bias (NaN/Inf)" in message
    assert "heads.1" not in message  # only the offending head, not the whole fused QKV
    assert_nothing_left(tmp_path, before)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.pop("blocks.1.feed_forward.w2.bias"), r"missing: blocks\.1\.feed_forward\.w2\.bias"),
        (
            lambda sd: sd.update({"blocks.0.extra.weight": torch.zeros(2)}),
            r"unexpected: blocks\.0\.extra\.weight",
        ),
        (
            lambda sd: sd.update({"layer_norm.bias": torch.zeros(31)}),
            r"misshapen: layer_norm\.bias is \(31,\), expected \(32,\)",
        ),
        (
            lambda sd: sd.pop("blocks.0.self_attention.heads.1.tril"),
            r"missing: blocks\.0\.self_attention\.heads\.1\.tril",
        ),
    ],
    ids=["missing", "unexpected", "misshapen", "missing-tril"],
)
def test_keys_that_do_not_fit_are_errors_listing_them(tmp_path, convert, change, message):
    state = dict(build_reference().state_dict())
    change(state)
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ConversionError, match=message):
        convert(tmp_path / "c.pt")
    assert not (tmp_path / "model").exists()


def test_a_tril_buffer_that_is_not_causal_is_an_error(tmp_path, convert):
    state = dict(build_reference().state_dict())
    state["blocks.1.self_attention.heads.0.tril"] = torch.ones(64, 64)
    torch.save(state, tmp_path / "c.pt")
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(
        ConversionError, match=r"not lower-triangular ones: blocks\.1\.self_attention\.heads\.0\.tril"
    ):
        convert(tmp_path / "c.pt")
    assert_nothing_left(tmp_path, before)


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_whose_vocabulary_does_not_fit_is_refused(make_checkpoint, convert, tmp_path):
    ckpt = make_checkpoint(vocab_size=300)
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(TokenizerError, match="has 384 tokens but the model's embedding has 300 rows"):
        convert(ckpt.path)
    assert_nothing_left(tmp_path, before)


def test_missing_tokenizer_folder(make_checkpoint, convert, tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer folder not found"):
        convert(make_checkpoint().path, tokenizer=tmp_path / "no-such-tokenizer")


def test_folder_without_tokenizer_files(make_checkpoint, convert, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        convert(make_checkpoint().path, tokenizer=tmp_path / "empty")


def test_default_tokenizer_unavailable_says_to_pass_one(make_checkpoint, convert, hub, hf_home):
    with pytest.raises(TokenizerError, match=r"'gpt2' \(the default, GPT-2's\).*pass --tokenizer"):
        convert(make_checkpoint().path, tokenizer=None)


def test_tokenizer_from_the_hub_is_copied_byte_for_byte(
    make_checkpoint, convert, hub, hf_home, tokenizer_dir
):
    hub.create_repo("acme/tokenizer")
    sha = hub.commit("acme/tokenizer", {p.name: p.read_bytes() for p in tokenizer_dir.iterdir()})
    out = convert(make_checkpoint().path, tokenizer="acme/tokenizer").out_dir
    for source in tokenizer_dir.iterdir():
        if source.name not in DESCRIBED_FILES:
            assert (out / source.name).read_bytes() == source.read_bytes()
    recorded = json.loads((out / "release.json").read_text())["tokenizer"]
    assert (recorded["source"], recorded["name"], recorded["revision"]) == ("hub", "acme/tokenizer", sha)
    assert recorded["path"] is None
    training = resolve_training_tokenizer(out, explicit=None, configured=None)
    assert (training.name, training.revision, training.origin) == ("acme/tokenizer", sha, "release.json")


# --------------------------------------------------------------------------- progress


def test_progress_on_request_and_quiet_when_not_a_tty(
    make_checkpoint, convert, tmp_path, capsys, hub_progress_bars
):
    ckpt = make_checkpoint()
    convert(ckpt.path, tmp_path / "a", progress=None, max_shard_size=30_000)
    assert capsys.readouterr().err == ""
    convert(ckpt.path, tmp_path / "b", progress=True, max_shard_size=30_000)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    shards = sorted(p.name for p in (tmp_path / "b").glob("model-*.safetensors"))
    n_tensors = len(json.loads((tmp_path / "b" / "model.safetensors.index.json").read_text())["weight_map"])
    assert [line for line in lines if line.startswith("wrote ")] == [f"wrote {s}" for s in shards]
    assert lines[-1].startswith(f"converting {n_tensors} tensors: 100%")


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_converts(make_checkpoint, tokenizer_dir, tmp_path):
    ckpt = make_checkpoint()
    result = run_cli(
        "convert", ckpt.path, "--out", tmp_path / "m", "--tokenizer", tokenizer_dir, "--dtype", "bfloat16"
    )
    assert result.exit_code == 0, result.output
    assert "Converted" in result.stdout
    assert json.loads((tmp_path / "m" / "release.json").read_text())["dtype"] == "bfloat16"


def _bad_inputs(tmp_path: Path, make_checkpoint) -> dict[str, tuple[Path, list[str]]]:
    good = make_checkpoint().path
    cases: dict[str, tuple[Path, list[str]]] = {"missing file": (tmp_path / "nope.pt", [])}
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 3])
    cases["truncated"] = (tmp_path / "truncated.pt", [])
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    cases["corrupt"] = (tmp_path / "corrupt.pt", [])
    torch.save({"model_state_dict": {}, "config": _RunsCode(tmp_path / "ran")}, tmp_path / "code.pt")
    cases["code"] = (tmp_path / "code.pt", [])
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "other.pt")
    cases["not a checkpoint"] = (tmp_path / "other.pt", [])
    state = dict(build_reference().state_dict())
    for name, change in {
        "missing key": lambda sd: sd.pop("lm_head.bias"),
        "unexpected key": lambda sd: sd.update({"extra.weight": torch.zeros(1)}),
        "misshapen key": lambda sd: sd.update({"lm_head.bias": torch.zeros(3)}),
        "nan": lambda sd: sd.update({"layer_norm.weight": torch.full((32,), float("nan"))}),
    }.items():
        sd = dict(state)
        change(sd)
        torch.save(sd, tmp_path / f"{name}.pt")
        cases[name] = (tmp_path / f"{name}.pt", [])
    torch.save({"model_state_dict": state, "config": {"n_embd": 64}}, tmp_path / "config.pt")
    cases["config disagrees"] = (tmp_path / "config.pt", [])
    torch.save(build_reference(vocab_size=100).state_dict(), tmp_path / "small-vocab.pt")
    cases["tokenizer does not fit"] = (tmp_path / "small-vocab.pt", [])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    cases["existing output"] = (good, ["--out", str(tmp_path / "taken")])
    return cases


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cli_bad_inputs_give_one_line_exit_1_and_no_output(make_checkpoint, tokenizer_dir, tmp_path):
    cases = _bad_inputs(tmp_path, make_checkpoint)
    expected = {
        "missing file": "checkpoint not found",
        "truncated": "truncated or corrupt",
        "corrupt": "not a PyTorch checkpoint",
        "code": "could run code",
        "not a checkpoint": "not a checkpoint of this model",
        "missing key": "missing: lm_head.bias",
        "unexpected key": "unexpected: extra.weight",
        "misshapen key": "misshapen: lm_head.bias",
        "nan": "non-finite weights",
        "config disagrees": "n_embd=64 but the tensors have 32",
        "tokenizer does not fit": "384 tokens but the model's embedding has 100 rows",
        "existing output": "pass --force",
    }
    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    for name, (path, extra) in cases.items():
        args = ["convert", path, "--tokenizer", tokenizer_dir, *(extra or ["--out", out_parent / "model"])]
        result = run_cli(*args)
        assert result.exit_code == 1, (name, result.output)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (name, result.stderr)
        assert expected[name] in lines[0], (name, lines[0])
        assert list(out_parent.iterdir()) == [], name
    assert not (tmp_path / "ran").exists()
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["x"]


@pytest.mark.parametrize(
    "option, value", [("--dtype", "float64"), ("--max-shard-size", "lots"), ("--max-shard-size", "0")]
)
def test_cli_usage_errors_exit_2(make_checkpoint, tokenizer_dir, tmp_path, option, value):
    result = run_cli(
        "convert",
        make_checkpoint().path,
        "--out",
        tmp_path / "m",
        "--tokenizer",
        tokenizer_dir,
        option,
        value,
    )
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "m").exists()


def test_a_digest_computed_by_the_caller_is_recorded_without_rehashing(
    make_checkpoint, tokenizer_dir, tmp_path
):
    """The pipeline's fetch step hashed the file as it wrote it; convert records that digest as its own."""
    import json

    from release._io import sha256_file
    from release.convert.folder import convert_checkpoint

    ckpt = make_checkpoint()
    digest = sha256_file(ckpt.path)
    hashed = convert_checkpoint(ckpt.path, tmp_path / "hashed", tokenizer=tokenizer_dir)
    given = convert_checkpoint(
        ckpt.path, tmp_path / "given", tokenizer=tokenizer_dir, checkpoint_sha256=digest
    )
    assert hashed.checkpoint_sha256 == given.checkpoint_sha256 == digest
    assert (tmp_path / "hashed" / "release.json").read_bytes() == (
        tmp_path / "given" / "release.json"
    ).read_bytes()
    assert json.loads((tmp_path / "given" / "release.json").read_text())["checkpoint"]["sha256"] == digest


def test_a_tokenizer_saved_by_transformers_5_is_renamed_for_4x(make_checkpoint, tokenizer_dir, tmp_path):
    """5.x writes tokenizer_class "TokenizersBackend", which 4.x cannot resolve; the release ships a name both load."""
    import json
    import shutil

    from release.convert.folder import convert_checkpoint

    tok5 = tmp_path / "tok5"
    shutil.copytree(tokenizer_dir, tok5)
    config = json.loads((tok5 / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="TokenizersBackend", backend="tokenizers")
    (tok5 / "tokenizer_config.json").write_text(json.dumps(config))
    convert_checkpoint(make_checkpoint().path, tmp_path / "out", tokenizer=tok5)
    shipped = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert shipped["tokenizer_class"] == "PreTrainedTokenizerFast" and "backend" not in shipped
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tok5 / "tokenizer.json").read_bytes()
