"""GPU check of ``release verify --device``: a 1B-class release verified on CUDA against the same release on CPU.

Run on a machine with a CUDA GPU, torch (CUDA build), transformers and accelerate installed, from the repo root:

    python benchmarks/gpu_verify_check.py                  # 1B class (n_embd 2048, 12 layers): ~5 minutes
    python benchmarks/gpu_verify_check.py --params 1e8     # a quick run
    python benchmarks/gpu_verify_check.py --dtype bfloat16 # a bf16 release: its gates are bfloat16's

Steps (each timed): write a training checkpoint of ``--params`` parameters (weights and AdamW state,
``scale_checkpoint``), convert it, then ``release verify DIR --device cuda`` and ``release verify DIR --device
cpu`` each in its own process. Checks, each printed as ``ok`` or ``FAILED``:

- both reports have the same gates with the same verdicts, and name the device they ran on;
- a float32 release passes every gate on the GPU: the candidate's logits against the training module's, both on
  the GPU, within the float32 thresholds (``Gates()``: max abs diff 1e-4, top-1 agreement 1.0);
- across devices: the candidate's logits on the GPU against the training module's on the CPU (one full-context
  row and every prompt), within the same float32 thresholds; the greedy continuations are the same tokens; the
  reference perplexities agree to 1e-4 relative.

Exits 1 when a check fails. Prints the seconds of each verify and the ratio, and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import work_folder  # noqa: E402
from scale_checkpoint import dims_for, write_scale_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("The Fox", "Once upon a time", "The Lion said")


def verify(device: str, model: Path, checkpoint: Path, tokenizer: Path, report: Path, workdir: Path) -> dict:
    """``release verify`` in a child process; its wall time, exit code and report."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HOME": str(workdir / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(workdir / "tmp"),
    }
    command = [sys.executable, "-m", "release", "verify", str(model), "--checkpoint", str(checkpoint)]
    command += ["--tokenizer", str(tokenizer), "--report", str(report), "--device", device]
    for prompt in PROMPTS:
        command += ["--prompt", prompt]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if not report.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"release verify --device {device} wrote no report (exit {done.returncode}): {tail}")
    return {"seconds": seconds, "exit_code": done.returncode, "report": json.loads(report.read_text())}


def cross_device_logits(model: Path, checkpoint: Path, tokenizer: Path, device: str = "cuda:0") -> dict:
    """The candidate on ``device`` against the training module on the CPU: one full-context row and each
    prompt."""
    import torch
    from transformers import AutoTokenizer

    from release.checkpoint import load_reference_model
    from release.verify.loading import CandidateSource, Device, fresh_remote_code_modules, load_candidate

    reference, ckpt = load_reference_model(checkpoint)
    config = reference.config
    tok = AutoTokenizer.from_pretrained(tokenizer)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, config.vocab_size, (1, config.block_size), generator=generator)]
    inputs += [torch.tensor([tok(p)["input_ids"]]) for p in PROMPTS]
    with torch.no_grad():
        expected = [reference(ids)[0].double() for ids in inputs]
    del reference
    ckpt.close()
    source = CandidateSource(kind="folder", folder=model.resolve(), load_id=str(model.resolve()))
    max_abs, agree, positions = 0.0, 0, 0
    with fresh_remote_code_modules():
        candidate, _ = load_candidate(source, Device(device))
        with torch.no_grad():
            for ids, ref in zip(inputs, expected, strict=True):
                got = candidate(input_ids=ids.to(device), use_cache=False).logits.double().cpu()
                max_abs = max(max_abs, float((got - ref).abs().max()))
                agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
                positions += ref.shape[1]
        del candidate
    return {"max_abs_diff": max_abs, "top1_agreement": agree / positions, "positions": positions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1e9)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: a temporary folder, removed after"
    )
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible: this check needs a GPU")
    from release.convert.folder import convert_checkpoint
    from release.demo import demo_text, train_tokenizer
    from release.verify.report import Gates

    timings: dict[str, float] = {}
    with work_folder(options.workdir, "gpu-verify-check-") as workdir:
        (workdir / "tmp").mkdir(exist_ok=True)
        t = time.perf_counter()
        checkpoint = workdir / "best_model.pt"
        info = write_scale_checkpoint(dims_for(options.params), checkpoint)
        timings["write_checkpoint"] = time.perf_counter() - t
        t = time.perf_counter()
        tokenizer = train_tokenizer(demo_text(), workdir / "tokenizer", vocab_size=384)
        model = workdir / "dist" / "model"
        convert_checkpoint(checkpoint, model, tokenizer=tokenizer, dtype=options.dtype, progress=False)
        timings["convert"] = time.perf_counter() - t
        gpu = verify("cuda", model, checkpoint, tokenizer, workdir / "gpu" / "verification.json", workdir)
        cpu = verify("cpu", model, checkpoint, tokenizer, workdir / "cpu" / "verification.json", workdir)
        t = time.perf_counter()
        cross = cross_device_logits(model, checkpoint, tokenizer) if options.dtype == "float32" else None
        timings["cross_device_logits"] = time.perf_counter() - t

    g, c = gpu["report"], cpu["report"]
    float32 = Gates()
    checks = {
        "same gates and verdicts": [(x["name"], x["passed"]) for x in g["gates"]]
        == [(x["name"], x["passed"]) for x in c["gates"]],
        "devices named": g["model"].get("device", "").startswith("cuda")
        and c["model"].get("device") == "cpu",
        "greedy tokens equal across devices": [x["candidate_ids"] for x in g["generation"]["cases"]]
        == [x["candidate_ids"] for x in c["generation"]["cases"]],
        "reference perplexity equal across devices (1e-4 relative)": abs(
            g["perplexity"]["reference"] - c["perplexity"]["reference"]
        )
        <= 1e-4 * c["perplexity"]["reference"],
    }
    if options.dtype == "float32":
        checks["float32 release passes every gate on the GPU"] = g["passed"] is True
        checks["GPU candidate vs CPU training module within float32 gates"] = (
            cross["max_abs_diff"] <= float32.max_abs_diff
            and cross["top1_agreement"] >= float32.min_top1_agreement
        )
    else:
        checks[f"{options.dtype} release passes its dtype's gates on the GPU"] = g["passed"] is True
    results = {
        "parameters": info["parameters"],
        "weights_bytes": info["weights_bytes"],
        "dtype": options.dtype,
        "device": torch.cuda.get_device_name(0),
        "seconds": {
            **{k: round(v, 1) for k, v in timings.items()},
            "verify_cuda": round(gpu["seconds"], 1),
            "verify_cpu": round(cpu["seconds"], 1),
        },
        "verify_timings_cuda": g["timings"],
        "verify_timings_cpu": c["timings"],
        "parity_cuda": {k: g["parity"][k] for k in ("max_abs_diff", "top1_agreement", "kl_divergence")},
        "parity_cpu": {k: c["parity"][k] for k in ("max_abs_diff", "top1_agreement", "kl_divergence")},
        "cross_device": cross,
        "checks": checks,
        "failures_cuda": g["failures"],
        "failures_cpu": c["failures"],
    }
    print(f"{info['parameters'] / 1e9:.2f}B parameters, {options.dtype}, on {results['device']}")
    print(
        f"verify --device cuda {gpu['seconds']:.1f} s, --device cpu {cpu['seconds']:.1f} s "
        f"(cpu / cuda = {cpu['seconds'] / gpu['seconds']:.1f}x); exit codes {gpu['exit_code']}, {cpu['exit_code']}"
    )
    print(f"parity on cuda {results['parity_cuda']}, on cpu {results['parity_cpu']}; across devices {cross}")
    for name, ok in checks.items():
        print(f"  {'ok    ' if ok else 'FAILED'} {name}")
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if not all(checks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
