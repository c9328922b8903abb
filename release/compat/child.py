"""One cell of the compatibility matrix, run in one transformers version's environment (``run_child``).

Started by path where this project is not installed, so it imports only the standard library, torch,
transformers and safetensors. Writes ``COMPAT_STAGE <stage>`` as each stage starts and one
``COMPAT_RESULT <json>`` line of figures at the end; the parent applies the gates (``judge_child_result``).
"""

import importlib
import importlib.util
import json
import sys
import traceback
from pathlib import Path

RESULT_MARK = "COMPAT_RESULT "
STAGE_MARK = "COMPAT_STAGE "


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def last_line(exc):
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def main(model_dir, ref_dir, device="cpu"):
    result = {"error": None, "error_stage": None}

    def finish():
        emit(RESULT_MARK + json.dumps(result))

    emit(STAGE_MARK + "load")
    try:
        import torch
        import transformers
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except Exception as exc:
        result.update(error=f"import: {last_line(exc)}", error_stage="load")
        return finish()
    result["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__}
    for name in ("huggingface_hub", "tokenizers", "safetensors"):
        result["versions"][name] = getattr(importlib.import_module(name), "__version__", "?")
    ref = json.loads((ref_dir / "reference.json").read_text(encoding="utf-8"))
    tensor_file = ref_dir / "reference.safetensors"
    tensors = load_file(str(tensor_file)) if tensor_file.is_file() else None
    major_minor = tuple(int(p) for p in transformers.__version__.split(".")[:2])
    dtype_arg = "dtype" if major_minor >= (4, 56) else "torch_dtype"  # renamed in 4.56
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, trust_remote_code=True, output_loading_info=True, **{dtype_arg: "auto"}
        )
        bad = {k: sorted(v) for k, v in info.items() if v}
        if bad:
            raise RuntimeError("weights did not load cleanly: " + json.dumps(bad)[:500])
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
        if dtypes != [ref["dtype"]]:
            raise RuntimeError(
                f"{dtype_arg}='auto' loaded the weights as {dtypes}, the folder declares {ref['dtype']}"
            )
        model = model.eval()
        if ref["upcast"]:
            model = model.float()
        if device != "cpu" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device}: this environment's torch sees no CUDA device")
        model = model.to(device)
    except Exception as exc:
        result.update(error=f"model: {last_line(exc)}", error_stage="load")
        return finish()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
        result["tokenizer_ids"] = [
            tokenizer(t, add_special_tokens=False)["input_ids"] for t in ref["prompt_texts"]
        ]
    except Exception as exc:  # recorded; the model's stages still run
        result["tokenizer_error"] = f"tokenizer: {last_line(exc)}"

    emit(STAGE_MARK + "logits")
    try:
        # Teacher forcing: one forward over prompt + recorded continuation. Causal attention makes position t's
        # logits depend on tokens <= t only, so greedy decoding gives the recorded tokens iff every argmax
        # here is the next recorded token; "gap" is how far the recorded token's logit is below the maximum.
        forced = []
        with torch.no_grad():
            for ids, new in zip(ref["prompt_ids"], ref["greedy_ids"], strict=True):
                if not new:
                    forced.append({"argmax": [], "gap": []})
                    continue
                seq = torch.tensor([ids + new[:-1]], dtype=torch.long, device=model.device)
                logits = model(input_ids=seq).logits[0, len(ids) - 1 :].float()
                want = torch.tensor(new, dtype=torch.long, device=model.device)
                gap = logits.max(-1).values - logits.gather(-1, want[:, None])[:, 0]
                forced.append({"argmax": logits.argmax(-1).tolist(), "gap": gap.tolist()})
        result["teacher_forced"] = forced
    except Exception as exc:
        result.update(error=last_line(exc), error_stage="logits")
        return finish()

    emit(STAGE_MARK + "generation")
    try:
        config = model.generation_config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        pad = pad[0] if isinstance(pad, list) else pad
        pad = 0 if pad is None else int(pad)
        settings = dict(do_sample=False, max_new_tokens=ref["max_new_tokens"], pad_token_id=pad)
        alone = []
        with torch.no_grad():
            for ids in ref["prompt_ids"]:
                prompt = torch.tensor([ids], dtype=torch.long, device=model.device)
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
                alone.append(out[0, prompt.shape[1] :].tolist())
            width = max(len(ids) for ids in ref["prompt_ids"])
            batch = torch.tensor(
                [[pad] * (width - len(ids)) + ids for ids in ref["prompt_ids"]],
                dtype=torch.long,
                device=model.device,
            )
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in ref["prompt_ids"]]).to(
                batch
            )
            out = model.generate(batch, attention_mask=mask, **settings)
        result["generated"] = alone
        result["generated_batch"] = out[:, width:].tolist()
        result["pad_token_id"] = pad
    except Exception as exc:  # the logits below are still compared: they tell a cache bug from a model bug
        result.update(error=last_line(exc), error_stage="generation")

    emit(STAGE_MARK + "serving")
    try:  # the static cache and continuous batching where this version has them (release/verify/serving.py)
        path = Path(__file__).resolve().parents[1] / "verify" / "serving.py"
        spec = importlib.util.spec_from_file_location("_compat_serving", path)
        serving = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = serving  # dataclasses look their module up there
        spec.loader.exec_module(serving)
        new_tokens = min(16, ref["max_new_tokens"])
        checks = (serving.check_static_cache, serving.check_continuous_batching)
        result["serving"] = [vars(check(model, ref["prompt_ids"], new_tokens=new_tokens)) for check in checks]
    except Exception as exc:
        result["serving_error"] = last_line(exc)

    if tensors is not None:  # the training module's logits (needs the checkpoint): last, it upcasts in place
        emit(STAGE_MARK + "logits")
        try:
            model = model.float()
            with torch.no_grad():
                logits = model(input_ids=tensors["input_ids"].to(model.device)).logits.float().cpu()
            reference = tensors["logits"]
            if logits.shape != reference.shape:
                raise RuntimeError(
                    f"logits have shape {tuple(logits.shape)}, the reference {tuple(reference.shape)}"
                )
            result["max_abs_diff"] = float((logits - reference).abs().max())
            result["top1_agreement"] = float((logits.argmax(-1) == reference.argmax(-1)).double().mean())
        except Exception as exc:
            if not result["error"]:
                result.update(error=last_line(exc), error_stage="logits")
    return finish()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
