"""Write a training-format checkpoint of any size without holding it in memory.

The file is what the training script's ``torch.save`` writes (the same ``data.pkl``, the same records in the
same order, the same zip layout and CRCs, since torch's own zip writer writes it): a dict with
``model_state_dict`` (the reference module's parameters and per-head ``tril`` buffers), ``optimizer_state_dict``
(AdamW after training: ``step``, ``exp_avg``, ``exp_avg_sq`` per parameter, the real ``param_groups``),
``scaler_state_dict`` (an enabled GradScaler's), ``config``, ``iter_num``, ``val_loss``, ``best_val_loss``.

``torch.save`` needs every tensor in memory at once (13 GB at 1B parameters). Here the pickle is made from
placeholder tensors whose pages are never touched (``torch.empty`` of a large size is a lazy anonymous mapping),
then each record is generated from a seeded generator, written through ``PyTorchFileWriter`` and dropped: memory
stays around the largest record. The values are random but seeded, so the same arguments give the same bytes.
"""

from __future__ import annotations

import io
import math
import pickle
import sys
from pathlib import Path

VOCAB = 50257  # GPT-2 BPE, what the training script uses
WIDTHS = (  # (n_embd, n_head) by scale
    (2048, 16),
    (1024, 16),
    (512, 8),
    (256, 4),
)


def per_layer_params(n_embd: int) -> int:
    attn = 3 * n_embd * n_embd + n_embd * n_embd + n_embd
    ffn = 2 * (n_embd * 4 * n_embd + 4 * n_embd) + 4 * n_embd * n_embd + n_embd
    return attn + ffn + 4 * n_embd


def dims_for(params: float, *, vocab_size: int = VOCAB, block_size: int = 1024) -> dict:
    """The reference model's shapes closest to ``params`` parameters (SwiGLU, GPT-2 vocabulary).

    The width is the largest whose embeddings take at most a quarter of the budget; the depth fills the rest.
    ``1e9`` gives n_embd 2048, 16 heads, 12 layers: 1.013B parameters.
    """
    for n_embd, n_head in WIDTHS:
        embeddings = 2 * vocab_size * n_embd + vocab_size + block_size * n_embd + 2 * n_embd
        if embeddings <= params / 4 or n_embd == WIDTHS[-1][0]:
            n_layer = max(1, round((params - embeddings) / per_layer_params(n_embd)))
            return {
                "vocab_size": vocab_size,
                "n_embd": n_embd,
                "n_head": n_head,
                "n_layer": n_layer,
                "block_size": block_size,
            }
    raise AssertionError("unreachable")


def _fill(name: str, kind: str, shape: tuple[int, ...], dtype, generator):
    """The seeded values of one record: weights like a trained model's, AdamW moments of realistic scale."""
    import torch

    if kind == "tril":
        return torch.tril(torch.ones(shape, dtype=dtype))
    t = torch.empty(shape, dtype=dtype)
    if kind == "exp_avg":
        return t.normal_(0.0, 1e-4, generator=generator)
    if kind == "exp_avg_sq":
        return t.normal_(0.0, 1e-4, generator=generator).square_()
    if "layer_norm" in name and name.endswith(".weight"):
        return t.normal_(1.0, 0.02, generator=generator)
    if name.endswith(".bias") or "layer_norm" in name:
        return t.normal_(0.0, 0.01, generator=generator)
    return t.normal_(0.0, 0.02, generator=generator)


def write_scale_checkpoint(dims: dict, path: Path, *, seed: int = 0, iter_num: int = 60000) -> dict:
    """Write the checkpoint; return its parameter count, the fp32 weights' bytes and the file's size."""
    import torch

    from modeling.reference import GPTLanguageModel, ReferenceConfig
    from release.demo import training_config_dict

    with torch.device("meta"):
        model = GPTLanguageModel(ReferenceConfig(**dims, ffn_type="swiglu"))
    params = dict(model.named_parameters())
    records: list[tuple[str, str, tuple[int, ...], torch.dtype]] = []  # name, kind, shape, dtype per storage
    placeholders: dict[int, int] = {}  # id(placeholder storage) -> index in records

    def placeholder(name: str, kind: str, shape, dtype=torch.float32):
        # never touched, so never resident: only the pickle needs a storage to point at
        t = torch.empty(math.prod(shape) if shape else 1, dtype=dtype).view(shape)
        placeholders[t.untyped_storage()._cdata] = len(records)
        records.append((name, kind, tuple(shape), dtype))
        return t

    state_dict = model.state_dict()
    model_sd = type(state_dict)()
    model_sd._metadata = state_dict._metadata  # type: ignore[attr-defined]
    for name, t in state_dict.items():
        model_sd[name] = placeholder(name, "tril" if name.endswith(".tril") else "param", t.shape)
    optimizer = torch.optim.AdamW(params.values(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    optimizer_sd = optimizer.state_dict()  # the real param_groups
    optimizer_sd["state"] = {
        i: {
            "step": torch.tensor(float(iter_num)),
            "exp_avg": placeholder(name, "exp_avg", p.shape),
            "exp_avg_sq": placeholder(name, "exp_avg_sq", p.shape),
        }
        for i, (name, p) in enumerate(params.items())
    }
    config = training_config_dict(
        n_embd=dims["n_embd"],
        n_head=dims["n_head"],
        n_layer=dims["n_layer"],
        block_size=dims["block_size"],
        dropout=0.1,
        learning_rate=3e-4,
        max_iters=100000,
        batch_size=32,
    )
    ckpt = {
        "model_state_dict": model_sd,
        "optimizer_state_dict": optimizer_sd,
        "scaler_state_dict": {
            "scale": 32768.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 1234,
        },
        "iter_num": iter_num,
        "config": config,
        "val_loss": 2.9134,
        "best_val_loss": 2.9134,
    }

    # What torch.serialization._save does, with each storage's bytes produced only when it is written.
    order: list[object] = []  # storage per key, in the order the pickler met them (data/0, data/1, ...)
    keys: dict[int, str] = {}

    def persistent_id(obj):
        if isinstance(obj, torch.storage.TypedStorage) or torch.is_storage(obj):
            storage = obj._untyped_storage if isinstance(obj, torch.storage.TypedStorage) else obj
            storage_type = getattr(torch, obj._pickle_storage_type())
            key = keys.setdefault(storage._cdata, str(len(keys)))
            if int(key) == len(order):
                order.append(storage)
            return ("storage", storage_type, key, "cpu", obj._size())
        return None

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return persistent_id(obj)

    buf = io.BytesIO()
    Pickler(buf, protocol=torch.serialization.DEFAULT_PROTOCOL).dump(ckpt)
    data_pkl = buf.getvalue()
    plan = []  # (key, record index or the real small storage)
    for key, storage in enumerate(order):
        index = placeholders.get(storage._cdata)
        plan.append((key, index if index is not None else storage))
    del ckpt, model_sd, optimizer_sd, buf  # the placeholders go here
    order.clear()
    placeholders.clear()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer names the archive's folder after the file's stem, as torch.save does: keep the final name
    tmp_dir = path.parent / f".{path.name}.writing"
    tmp_dir.mkdir(exist_ok=True)
    tmp = tmp_dir / path.name
    writer = torch._C.PyTorchFileWriter(str(tmp), True, torch.serialization._get_storage_alignment())
    writer.write_record("data.pkl", data_pkl, len(data_pkl))
    writer.write_record(".format_version", "1", 1)
    alignment = str(torch.serialization._get_storage_alignment())
    writer.write_record(".storage_alignment", alignment, len(alignment))
    writer.write_record("byteorder", sys.byteorder, len(sys.byteorder))
    for key, what in plan:
        if isinstance(what, int):
            name, kind, shape, dtype = records[what]
            generator = torch.Generator().manual_seed(seed * 1_000_003 + what)
            storage = _fill(name, kind, shape, dtype, generator).untyped_storage()
        else:
            storage = what
        writer.write_record(f"data/{key}", storage, storage.nbytes())
        del storage
    writer.write_end_of_file()
    del writer
    tmp.replace(path)
    tmp_dir.rmdir()
    n_params = sum(math.prod(p.shape) for p in params.values())
    return {
        "parameters": n_params,
        "weights_bytes": n_params * 4,
        "checkpoint_bytes": path.stat().st_size,
        "dims": dims,
    }
