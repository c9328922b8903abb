"""The built-in demo: a tiny model trained on a public-domain text, saved exactly like the training script saves.

Used by ``release run`` when no checkpoint is configured, and by the tests, which need real checkpoints in the
training format and a real byte-level BPE tokenizer without network access.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

DEMO_TEXT = "aesop.txt"
ENDOFTEXT = "<|endoftext|>"


def demo_text() -> str:
    """The public-domain text shipped with the project (training data and default evaluation text)."""
    return resources.files("release.data").joinpath(DEMO_TEXT).read_text(encoding="utf-8")


def demo_text_path() -> Path:
    return Path(str(resources.files("release.data").joinpath(DEMO_TEXT)))


def train_tokenizer(text: str, out_dir: Path, *, vocab_size: int = 512) -> Path:
    """Train a GPT-2-style byte-level BPE tokenizer on ``text`` and save it as a transformers tokenizer folder.

    ``<|endoftext|>`` is the last id, as in GPT-2, and serves as bos, eos and pad.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    tok.add_special_tokens([ENDOFTEXT])
    special = dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token"), ENDOFTEXT)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    fast.model_max_length = 1024
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    # transformers 5.x records its own backend class name, which 4.x cannot resolve; name the class both know.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def write_training_checkpoint(
    model,
    path: Path,
    *,
    train_config: dict,
    iter_num: int,
    val_loss: float | None = None,
    best_val_loss: float | None = None,
    optimizer=None,
) -> Path:
    """``torch.save`` a checkpoint dict exactly as the training script does."""
    import torch

    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.get("learning_rate", 1e-3))
    ckpt = {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "iter_num": iter_num,
        "config": dict(train_config),
    }
    if val_loss is not None:
        ckpt["val_loss"] = float(val_loss)
    if best_val_loss is not None:
        ckpt["best_val_loss"] = float(best_val_loss)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def training_config_dict(
    *, n_embd: int, n_head: int, n_layer: int, block_size: int, dropout: float = 0.0, **extra
) -> dict:
    """A training-script config dict (no vocab_size: the training script never recorded it)."""
    return {
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
        "block_size": block_size,
        "dropout": dropout,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "max_iters": 200,
        "eval_interval": 50,
        "use_flash_attn": False,
        "gradient_checkpointing": False,
        **extra,
    }


DEMO_ARCH = {"n_embd": 64, "n_head": 4, "n_layer": 2, "block_size": 64}
DEMO_VOCAB = 320


def build_demo_checkpoint(out_dir: Path, *, iters: int = 100, seed: int = 1337) -> tuple[Path, Path]:
    """Train the demo model briefly on the shipped text; write ``checkpoint.pt`` and ``tokenizer/``.

    Deterministic: fixed seeds, one thread, and a fixed train/validation split (the last tenth of the tokens),
    so the same code gives the same checkpoint bytes and hence the same release.
    Returns (checkpoint path, tokenizer folder).
    """
    import torch

    from modeling.reference import GPTLanguageModel, ReferenceConfig

    out_dir = Path(out_dir)
    tok_dir = train_tokenizer(demo_text(), out_dir / "tokenizer", vocab_size=DEMO_VOCAB)
    from transformers import AutoTokenizer

    ids = torch.tensor(AutoTokenizer.from_pretrained(tok_dir)(demo_text(), verbose=False).input_ids)
    split = int(len(ids) * 0.9)
    train, val = ids[:split], ids[split:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        cfg = ReferenceConfig(vocab_size=DEMO_VOCAB, ffn_type="swiglu", **DEMO_ARCH)
        model = GPTLanguageModel(cfg)
        train_config = training_config_dict(**DEMO_ARCH, learning_rate=1e-2, max_iters=iters, batch_size=16)
        opt = torch.optim.AdamW(model.parameters(), lr=train_config["learning_rate"])
        T = cfg.block_size

        def batch(data: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
            starts = torch.randint(0, len(data) - T - 1, (size,), generator=gen)
            x = torch.stack([data[s : s + T] for s in starts.tolist()])
            y = torch.stack([data[s + 1 : s + T + 1] for s in starts.tolist()])
            return x, y

        model.train()
        for _ in range(iters):
            x, y = batch(train, train_config["batch_size"])
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = sum(model(*batch(val, 16))[1].item() for _ in range(4)) / 4
    finally:
        torch.set_num_threads(threads)
    ckpt = write_training_checkpoint(
        model,
        out_dir / "checkpoint.pt",
        train_config=train_config,
        iter_num=iters,
        val_loss=round(val_loss, 6),
        optimizer=opt,
    )
    return ckpt, tok_dir
