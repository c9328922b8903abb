"""release verify: a correct conversion passes, and each gate fails when it should, saying where.

Real files throughout: a tiny training checkpoint, converted by ``release.convert.folder``; broken candidates are
copies of that folder with one thing changed (a weight, the order of two heads, a line of the modeling file,
the tokenizer). Most runs use ``Release.fast()`` settings (two prompts, 12 new tokens, a short text); the
correct conversion is verified once with the defaults.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from release.demo import demo_text, train_tokenizer, training_config_dict, write_training_checkpoint
from tests.conftest import build_reference

REPO = "owner/verified-model"
CACHE_LINE = "k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)"
CAUSAL_LINE = "self.is_causal = True"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: threads only add overhead (and thrash on a shared CI machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Release:
    def __init__(self, root: Path, checkpoint: Path, model_dir: Path, tokenizer: Path, short_text: Path):
        self.root, self.checkpoint, self.model_dir, self.tokenizer, self.short_text = (
            root,
            checkpoint,
            model_dir,
            tokenizer,
            short_text,
        )

    def fast(self, **extra) -> dict:
        """Settings for the failure cases: cheap, but every check still runs."""
        return {
            "checkpoint": self.checkpoint,
            "tokenizer": self.tokenizer,
            "prompts": ["The Fox", "Once upon a time"],
            "max_new_tokens": 12,
            "eval_text": self.short_text,
            **extra,
        }

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.model_dir, dest)
        return dest


@pytest.fixture(scope="module")
def release(tmp_path_factory, tokenizer_dir) -> Release:
    from release.convert.folder import convert_checkpoint

    root = tmp_path_factory.mktemp("verify")
    model = build_reference()
    c = model.config
    config = training_config_dict(
        n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer, block_size=c.block_size
    )
    ckpt = write_training_checkpoint(model, root / "ckpt.pt", train_config=config, iter_num=100, val_loss=2.0)
    out = convert_checkpoint(ckpt, root / "dist" / "v1" / "model", tokenizer=tokenizer_dir).out_dir
    short = root / "short.txt"
    short.write_text(demo_text()[:2500], encoding="utf-8")
    return Release(root, ckpt, out, tokenizer_dir, short)


@pytest.fixture(scope="module")
def good(release):
    """The correct conversion verified with the default prompts, text and max_new_tokens; records whether the
    candidate was already gone when the reference was loaded, and how often each model was loaded."""
    import gc
    import weakref

    import release.checkpoint as checkpoint_module
    import release.verify.loading as loading_module
    from release.verify.runner import verify_model

    seen = {"reference_loads": 0, "candidate_loads": 0}
    real_load_reference, real_load_candidate = (
        checkpoint_module.load_reference_model,
        loading_module.load_candidate,
    )

    def load_reference(path):
        gc.collect()
        seen["candidate_alive_at_reference_load"] = seen["candidate"]() is not None
        seen["reference_loads"] += 1
        return real_load_reference(path)

    def load_candidate(source, device=None):
        model, tokenizer = real_load_candidate(source, device)
        seen["candidate"] = weakref.ref(model)
        seen["candidate_loads"] += 1
        return model, tokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint_module, "load_reference_model", load_reference)
        mp.setattr(loading_module, "load_candidate", load_candidate)
        path = release.root / "good" / "verification.json"
        report = verify_model(
            release.model_dir, checkpoint=release.checkpoint, tokenizer=release.tokenizer, report_path=path
        )
    return report, path, seen


def gate(report, name):
    return next(g for g in report.gates if g.name == name)


def failed(report) -> set[str]:
    return {g.name for g in report.gates if not g.passed}


def edit_tensor(folder: Path, name: str, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    tensors[name] = edit(tensors[name].clone())
    save_file(tensors, path, metadata={"format": "pt"})


def edit_modeling(folder: Path, old: str, new: str) -> None:
    path = folder / "modeling_custom_transformer.py"
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


# --------------------------------------------------------------------------- the correct conversion


def test_correct_conversion_passes_every_gate(release, good):
    report, path, seen = good
    assert report.passed and report.failures == [], report.failures
    assert {g.name for g in report.gates} == {
        "hygiene",
        "load",
        "parity.max_abs_diff",
        "parity.top1_agreement",
        "perplexity",
        "generation.greedy",
        "generation.padded_batch",
        "generation.sampling",
        "generation.pipeline",
        "serving.static_cache",  # where the installed transformers has them (release.verify.serving)
        "serving.continuous_batching",
        "card_snippet",  # the card's code, run verbatim in a fresh process (release.verify.snippet)
    }
    assert report.parity.max_abs_diff <= 1e-4 and report.parity.top1_agreement == 1.0
    assert report.parity.first_divergent_layer is None and report.parity.divergence_location is None
    inputs = report.parity.inputs
    # Short random inputs in a batch of two, and one full-context row (the context is 64 tokens): the evaluation
    # text's first window, which each side scores for perplexity in the same forward.
    assert [(i["batch"], i["length"]) for i in inputs if i["kind"] == "random"] == [(2, 1), (2, 8)]
    assert [(i["batch"], i["length"]) for i in inputs if i["kind"] == "text"] == [(1, 64)]
    assert [i["prompt"] for i in inputs if i["kind"] == "prompt"] == [
        "The Fox",
        "Once upon a time",
        "The Lion said",
    ]
    assert report.perplexity.relative_diff <= 1e-3 and report.perplexity.text == "aesop.txt"
    # 2,048 tokens scored by each model (the default), recorded.
    assert report.perplexity.tokens == report.perplexity.candidate_tokens == 2048
    assert report.perplexity.requested_tokens == report.to_dict()["settings"]["perplexity_tokens"] == 2048
    cases = report.generation.cases
    assert [c.prompt for c in cases] == ["The Fox", "Once upon a time", "The Lion said"]
    assert all(c.match and c.candidate_ids == c.reference_ids and c.text for c in cases)
    assert report.generation.padded_batch_match and report.generation.pipeline_ok
    assert report.generation.sampling.stopped in ("eos", "max_new_tokens")
    # Never both models at once: the candidate was collected before the reference was loaded; a passing
    # verification loads each once (the candidate is loaded again only to locate a parity failure).
    assert seen["candidate_alive_at_reference_load"] is False
    assert (seen["candidate_loads"], seen["reference_loads"]) == (1, 1)


def test_report_files_are_complete_sorted_and_name_every_verified_file(release, good):
    from release._io import sha256_file

    report, path, _ = good
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert data["schema_version"] == 1 and data["passed"] is True and data["failures"] == []
    for key in (
        "model",
        "checkpoint",
        "gates",
        "parity",
        "perplexity",
        "generation",
        "hygiene",
        "versions",
        "timings",
    ):
        assert key in data
    files = data["model"]["files"]
    on_disk = sorted(
        p.relative_to(release.model_dir).as_posix() for p in release.model_dir.rglob("*") if p.is_file()
    )
    assert sorted(files) == on_disk
    assert files["model.safetensors"] == sha256_file(release.model_dir / "model.safetensors")
    assert data["model"]["source"] == "folder" and data["model"]["dtype"] == "float32"
    assert data["checkpoint"]["sha256"] == sha256_file(release.checkpoint)
    assert set(data["versions"]) >= {"python", "torch", "transformers", "tokenizers", "huggingface_hub"}
    assert data["timings"]["total"] > 0
    markdown = path.with_suffix(".md").read_text(encoding="utf-8")
    assert markdown == report.markdown() and "Verification passed" in markdown
    assert "| The Fox | yes |" in markdown


def test_report_schema_reads_back_what_verify_wrote_and_names_a_bad_key(good):
    import dataclasses

    from release.errors import ReportError
    from release.verify.report import GATE_REGISTRY, Gates, VerificationReport, read_report

    report, path, _ = good
    data = json.loads(path.read_text(encoding="utf-8"))
    typed = read_report(path)
    assert typed.to_dict() == data and typed.verified
    assert typed.generation.cases[0].candidate_ids == report.generation.cases[0].candidate_ids
    # Every gate is in the one registry, whose thresholds are fields of Gates.
    assert {g.name for g in typed.gates} <= set(GATE_REGISTRY)
    fields = {f.name for f in dataclasses.fields(Gates)}
    assert all(spec.threshold is None or spec.threshold in fields for spec in GATE_REGISTRY.values())
    # What another step adds (compat's section, a new figure) survives a read and a write.
    row = {
        "transformers": "4.46.3",
        "passed": True,
        "stage": None,
        "max_abs_diff": 1e-6,
        "top1_agreement": 1.0,
    }
    row |= {"generation_match": True, "detail": "ok", "environment": {}, "cost": {}, "new_figure": 2}
    compat = {"range": ">=4.46", "versions": [row], "reference": "verification.json", "statement": None}
    data["compat"] = compat | {"failures": [], "passed": True}
    data["parity"]["new_figure"] = 1.5
    assert VerificationReport.from_dict(data).to_dict() == data
    broken = json.loads(json.dumps(data))
    del broken["generation"]["cases"][1]["prompt"]
    with pytest.raises(ReportError, match=r"missing key 'generation\.cases\[1\]\.prompt'"):
        VerificationReport.from_dict(broken)
    broken = {**data, "perplexity": {**data["perplexity"], "tokens": "many"}}
    with pytest.raises(ReportError, match=r"'perplexity\.tokens' must be an integer, found str"):
        VerificationReport.from_dict(broken)
    # A report that says it failed is not trusted even when its gates say otherwise.
    assert not VerificationReport.from_dict({**data, "passed": False}).verified


def test_card_reads_the_report(release, good):
    from release.card.facts import check_verification

    report, _, _ = good
    facts = check_verification(
        report.to_dict(), source="verification.json", checkpoint_sha256=report.checkpoint.sha256
    )
    assert facts["parity"]["max_abs_diff"] == report.parity.max_abs_diff
    assert len(facts["generation"]["cases"]) == 3


# --------------------------------------------------------------------------- each gate fails when it should


def test_corrupt_weight_fails_parity_and_generation_naming_the_layer(release, tmp_path):
    from release.verify.runner import verify_model

    folder = release.copy(tmp_path / "model")

    def corrupt(w):
        w[3, 7] = 25.0
        return w

    edit_tensor(folder, "model.layers.1.mlp.down_proj.weight", corrupt)
    report = verify_model(folder, **release.fast())
    assert not report.passed
    assert {"parity.max_abs_diff", "parity.top1_agreement", "perplexity", "generation.greedy"} <= failed(
        report
    )
    assert report.parity.first_divergent_layer == 1
    lines = report.failures
    parity_line = next(line for line in lines if line.startswith("parity: max abs diff"))
    assert parity_line.endswith("> 1e-04 (first divergent layer: 1)"), parity_line
    assert any(line.startswith("generation: ") and "(first divergent layer: 1)" in line for line in lines), (
        lines
    )
    per_layer = report.parity.per_layer_max_abs_diff
    assert per_layer[0] < 1e-5 and per_layer[1] < 1e-4 and per_layer[2] > 1e-2  # embeddings, layer 0, layer 1


def test_swapped_heads_fail_parity(release, tmp_path):
    from release.verify.runner import verify_model

    folder = release.copy(tmp_path / "model")
    hs = 32 // 4

    def swap_heads_0_and_1(w):  # rows: heads 0..H-1, hs rows each
        h0, h1 = w[:hs].clone(), w[hs : 2 * hs].clone()
        w[:hs], w[hs : 2 * hs] = h1, h0
        return w

    for proj in ("q_proj", "k_proj", "v_proj"):
        edit_tensor(folder, f"model.layers.0.self_attn.{proj}.weight", swap_heads_0_and_1)
    report = verify_model(folder, **release.fast())
    assert "parity.max_abs_diff" in failed(report)
    assert gate(report, "load").passed and gate(report, "hygiene").passed
    assert report.parity.first_divergent_layer == 0
    assert any(line.endswith("(first divergent layer: 0)") for line in report.failures)


def test_cache_path_bug_fails_generation_while_plain_logits_pass(release, tmp_path):
    from release.verify.runner import verify_model

    folder = release.copy(tmp_path / "model")
    # The cache is filled but its result ignored: without a past nothing changes; with one, the past is lost.
    edit_modeling(folder, CACHE_LINE, "cache.update(k, v, self.layer_idx, kwargs=kwargs)")
    report = verify_model(folder, **release.fast())
    assert not report.passed
    for name in ("parity.max_abs_diff", "parity.top1_agreement", "perplexity", "hygiene", "load"):
        assert gate(report, name).passed, name
    assert "generation.greedy" in failed(report)
    assert not any(c.match for c in report.generation.cases)
    assert report.parity.max_abs_diff <= 1e-4


def test_teacher_forcing_equals_greedy_decoding_and_names_the_first_differing_token():
    import torch

    from release.verify.checks import teacher_forced_greedy

    model = build_reference()
    prompt = [5, 17, 42, 7]
    with torch.no_grad():
        greedy = model.generate_greedy(torch.tensor([prompt]), 20)[0, len(prompt) :].tolist()
    check = dict(max_new_tokens=20, eos_token_id=None, tie_margin=0.0, budget=2**20)

    # The reference's own full-recompute decoding passes; the verdict is its tokens.
    same = teacher_forced_greedy(model, prompt, greedy, **check)
    assert same.divergence.match and same.reference_ids == greedy

    # One token changed at position 6: reported there, with the reference's token and the margin it had.
    wrong = list(greedy)
    wrong[6] = (greedy[6] + 1) % model.config.vocab_size
    wrong[9] = (greedy[9] + 1) % model.config.vocab_size  # a later difference does not move the report
    div = teacher_forced_greedy(model, prompt, wrong, **check)
    assert (div.divergence.match, div.divergence.index) == (False, 6)
    assert (div.divergence.expected_token, div.divergence.actual_token) == (greedy[6], wrong[6])
    assert div.divergence.margin > 0 and not div.divergence.tolerated
    assert div.reference_ids == greedy[:7]
    assert div.divergence.describe(20).startswith(
        f"token 6 of 20 differs (expected {greedy[6]}, got {wrong[6]}"
    )
    # Within a tie margin larger than that gap, the same divergence is tolerated.
    loose = teacher_forced_greedy(model, prompt, wrong, **{**check, "tie_margin": div.divergence.margin})
    assert loose.divergence.index == 6 and loose.divergence.tolerated

    # Stopping: short of max_new_tokens without eos, the reference would have gone on; past its eos, not.
    short = teacher_forced_greedy(model, prompt, greedy[:5], **check)
    assert (short.divergence.index, short.divergence.expected_token, short.divergence.actual_token) == (
        5,
        greedy[5],
        None,
    )
    eos = greedy[3]
    stops = teacher_forced_greedy(model, prompt, greedy[:4], **{**check, "eos_token_id": eos})
    assert stops.divergence.match
    if eos not in greedy[:3]:
        past = teacher_forced_greedy(model, prompt, greedy[:6], **{**check, "eos_token_id": eos})
        assert (past.divergence.index, past.divergence.expected_token) == (4, None)


def test_verify_reports_the_position_where_generation_left_the_reference(release, monkeypatch):
    import release.verify.checks as checks
    from release.verify.runner import verify_model

    real = checks.candidate_greedy

    def off_at_five(model, input_ids, **kwargs):  # generate() that goes wrong at its sixth token
        run = real(model, input_ids, **kwargs)
        run.ids[5] = (run.ids[5] + 1) % 384
        return run

    monkeypatch.setattr(checks, "candidate_greedy", off_at_five)
    report = verify_model(release.model_dir, **release.fast())
    # The batch, the pipeline, the serving modes and the card's code now disagree with it too; the model's
    # logits are fine.
    assert failed(report) == {
        "generation.greedy",
        "generation.padded_batch",
        "generation.pipeline",
        "serving.static_cache",
        "serving.continuous_batching",
        "card_snippet",
    }
    for case in report.generation.cases:
        assert case.diverged_at == 5 and not case.match
        assert case.reference_ids[:5] == case.candidate_ids[:5]
        assert case.reference_ids[5] != case.candidate_ids[5]
    line = next(line for line in report.failures if line.startswith("generation: "))
    assert "'The Fox': token 5 of 12 differs (expected " in line, line


def test_a_pipeline_that_raises_fails_its_gate(release, monkeypatch):
    import sys

    import transformers.pipelines  # noqa: F401

    from release.verify.runner import verify_model

    def broken(*args, **kwargs):
        raise RuntimeError("no pipeline for you")

    # transformers.pipelines' first import re-executes transformers/__init__ (processing_utils'
    # direct_transformers_import) and replaces sys.modules["transformers"]: patch the module that is there now.
    monkeypatch.setattr(sys.modules["transformers"], "pipeline", broken)
    report = verify_model(release.model_dir, **release.fast())
    assert failed(report) == {"generation.pipeline"}
    assert report.generation.pipeline_ok is False
    line = next(line for line in report.failures if "pipeline" in line)
    assert 'pipeline("text-generation") raised RuntimeError: no pipeline for you' in line, line


def test_stale_remote_code_module_cannot_mask_a_broken_file(release, tmp_path, monkeypatch):
    import torch
    import transformers.dynamic_module_utils as dynamic_module_utils
    import transformers.utils.hub as hub_utils
    from transformers import AutoModelForCausalLM

    from release.verify.runner import verify_model

    cache = tmp_path / "modules"
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(hub_utils, "HF_MODULES_CACHE", str(cache))
    # Earlier in-process loads (other tests) left their modules caches on sys.path and their package in
    # sys.modules; start this test's own cache from a clean slate so the setup below imports from it.
    monkeypatch.setattr(
        sys, "path", [p for p in sys.path if not (Path(p or ".") / "transformers_modules").is_dir()]
    )
    for name in [
        n for n in sys.modules if n == "transformers_modules" or n.startswith("transformers_modules.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    folder = release.copy(tmp_path / "model")
    edit_modeling(folder, CAUSAL_LINE, "self.is_causal = False")  # attends to the future: logits change

    # Import the broken file as transformers does, then turn the imported module into the correct code while
    # keeping transformers' "already up to date" hash: a stale, correct module sitting in sys.modules.
    cls = dynamic_module_utils.get_class_from_dynamic_module(
        "modeling_custom_transformer.CustomTransformerForCausalLM", str(folder)
    )
    stale = sys.modules[cls.__module__]
    good_source = (release.model_dir / "modeling_custom_transformer.py").read_text(encoding="utf-8")
    exec(compile(good_source, stale.__file__, "exec"), stale.__dict__)

    # Control: a plain load in this process is masked by the stale module and behaves causally.
    masked = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.no_grad():
        assert torch.allclose(masked(ids).logits[:, :3], masked(ids[:, :3]).logits, atol=1e-5)
    del masked

    report = verify_model(folder, **release.fast())
    assert "parity.max_abs_diff" in failed(report), report.failures
    # The caller's world is as it was: the stale module and the modules-cache path are back.
    assert sys.modules[cls.__module__] is stale
    assert dynamic_module_utils.HF_MODULES_CACHE == str(cache)


def test_tokenizer_other_than_the_training_one_fails_perplexity(release, tmp_path):
    from release.verify.runner import verify_model

    folder = release.copy(tmp_path / "model")
    other = train_tokenizer(demo_text(), tmp_path / "other_tokenizer", vocab_size=320)
    for f in other.iterdir():
        shutil.copy2(f, folder / f.name)
    report = verify_model(folder, **release.fast())
    assert "perplexity" in failed(report)
    assert gate(report, "parity.max_abs_diff").passed  # the weights are right; only the tokenizer is not
    line = next(line for line in report.failures if line.startswith("perplexity: "))
    assert "> 1e-03" in line


def test_a_candidate_whose_tokenizer_splits_the_text_otherwise_scores_its_own_windows(release, tmp_path):
    import math

    import torch
    from torch.nn import functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from release.verify.loading import fresh_remote_code_modules
    from release.verify.runner import verify_model

    folder = release.copy(tmp_path / "model")
    other = train_tokenizer(demo_text(), tmp_path / "other_tokenizer", vocab_size=320)
    for f in other.iterdir():
        shutil.copy2(f, folder / f.name)
    # The whole default text: the reference's first window is parity's full-context row, the candidate's is not.
    report = verify_model(folder, **{**release.fast(), "eval_text": None})
    assert [i["kind"] for i in report.parity.inputs].count("text") == 1
    with fresh_remote_code_modules():  # as verify loads it: no modules cache left by another test
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = AutoTokenizer.from_pretrained(folder)(demo_text(), verbose=False)["input_ids"]
    window = report.perplexity.window
    full, rest = divmod(
        2048, window - 1
    )  # windows that score 2,048 tokens: `full` whole ones and `rest` more
    ids = ids[: full * window + rest + 1]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), window):
            w = torch.tensor([ids[start : start + window]])
            logits = model(input_ids=w, use_cache=False).logits[0, :-1].double()
            total += float(F.cross_entropy(logits, w[0, 1:], reduction="sum"))
            count += w.shape[1] - 1
    assert report.perplexity.candidate_tokens == count == 2048
    assert abs(report.perplexity.candidate - math.exp(total / count)) <= 1e-9 * math.exp(total / count)


def test_broken_modeling_file_fails_load_and_hygiene_and_still_reports(release, tmp_path):
    from release.verify.runner import verify_model

    folder = release.copy(tmp_path / "dist" / "model")
    (folder / "modeling_custom_transformer.py").write_text("class Broken(:\n", encoding="utf-8")
    report = verify_model(folder, **release.fast(report_path=tmp_path / "dist" / "verification.json"))
    assert failed(report) == {"hygiene", "load"}
    assert report.failures[0].startswith("hygiene: modeling_custom_transformer.py cannot be parsed")
    assert report.failures[1].startswith("load: from_pretrained(trust_remote_code=True) raised ")
    data = json.loads((tmp_path / "dist" / "verification.json").read_text())
    assert data["parity"]["max_abs_diff"] is None and data["passed"] is False
    assert "Not measured" in (tmp_path / "dist" / "verification.md").read_text()


def test_nan_weights_fail_and_the_report_is_still_valid_json(release, tmp_path):
    from release.verify.runner import verify_model

    folder = release.copy(tmp_path / "model")
    edit_tensor(folder, "model.layers.0.mlp.up_proj.weight", lambda w: w.fill_(float("nan")))
    report = verify_model(folder, **release.fast(report_path=tmp_path / "verification.json"))
    assert {"parity.max_abs_diff", "perplexity", "generation.greedy"} <= failed(report)
    data = json.loads((tmp_path / "verification.json").read_text())  # strict JSON: NaN is written as "nan"
    assert data["parity"]["max_abs_diff"] == "nan" and data["passed"] is False
    assert report.parity.first_divergent_layer == 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_export_passes_its_documented_gates(release, tmp_path, dtype):
    from release.convert.folder import convert_checkpoint
    from release.verify.runner import Gates, verify_model

    folder = convert_checkpoint(
        release.checkpoint, tmp_path / "model", tokenizer=release.tokenizer, dtype=dtype
    ).out_dir
    report = verify_model(folder, **release.fast())
    assert report.passed, report.failures
    assert report.model.dtype == dtype
    assert report.to_dict()["settings"]["gates"] == Gates.for_dtype(dtype).to_dict()
    assert report.parity.max_abs_diff > Gates().max_abs_diff  # the float32 gate would refuse this export


# --------------------------------------------------------------------------- remote-code hygiene (static)


def test_hygiene_names_foreign_imports_and_dangling_auto_map(release, tmp_path):
    from release.verify.hygiene import check_remote_code_hygiene

    folder = release.copy(tmp_path / "model")
    assert check_remote_code_hygiene(folder).problems == []
    modeling = folder / "modeling_custom_transformer.py"
    modeling.write_text(modeling.read_text() + "\nfrom modeling.reference import GPTLanguageModel\n")
    (folder / "extra.py").write_text(
        "import numpy\nfrom .nowhere import x\nimport importlib\nimportlib.import_module('release')\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "modeling_custom_transformer.Missing"
    config["auto_map"]["AutoModel"] = "other/repo--modeling.Model"
    (folder / "config.json").write_text(json.dumps(config))
    problems = check_remote_code_hygiene(folder).problems
    assert any(
        p.startswith("modeling_custom_transformer.py:") and "imports modeling.reference" in p
        for p in problems
    )
    assert any(p.startswith("extra.py:1 imports numpy") for p in problems)
    assert any(p.startswith("extra.py:2 imports .nowhere") for p in problems)
    assert any(p.startswith("extra.py:4 imports release") for p in problems)
    assert any("AutoModelForCausalLM" in p and "does not define class Missing" in p for p in problems)
    assert any("AutoModel ->" in p and "another repo" in p for p in problems)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from release.cli import main

    monkeypatch.chdir(tmp_path)  # no [tool.release] settings from the repo's pyproject
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    invoke.summary = summary
    return invoke


def fast_options(release):
    return [
        *("--checkpoint", release.checkpoint, "--tokenizer", release.tokenizer),
        *("--prompt", "The Fox", "--prompt", "Once upon a time"),
        *("--max-new-tokens", 8, "--eval-text", release.short_text),
    ]


def test_cli_verify_passes_writes_reports_beside_the_model_folder_and_the_step_summary(
    release, tmp_path, cli
):
    folder = release.copy(tmp_path / "dist" / "v1.0.0" / "model")
    result = cli("verify", folder, *fast_options(release), "--perplexity-tokens", 300, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = tmp_path / "dist" / "v1.0.0" / "verification.json"
    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert data["model"]["device"] == "cpu" and data["model"]["dtype"] == "float32"
    assert "float32 on cpu" in (tmp_path / "dist" / "v1.0.0" / "verification.md").read_text()
    assert data["perplexity"]["tokens"] == data["settings"]["perplexity_tokens"] == 300
    assert (tmp_path / "dist" / "v1.0.0" / "verification.md").is_file()
    assert "## Verification passed" in result.stdout
    assert "## Verification passed" in cli.summary.read_text()


def test_cli_verify_fails_with_one_line_per_failed_gate(release, tmp_path, cli):
    folder = release.copy(tmp_path / "model")
    edit_modeling(folder, CACHE_LINE, "cache.update(k, v, self.layer_idx, kwargs=kwargs)")
    result = cli("verify", folder, *fast_options(release), "--report", tmp_path / "out" / "report.json")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    failed_lines = [line for line in lines if line.startswith("FAILED: ")]
    # The cache bug breaks plain generate() and, where this transformers has them, the serving modes too.
    prefixes = ("FAILED: generation: ", "FAILED: serving: ")
    assert failed_lines and all(line.startswith(prefixes) for line in failed_lines), lines
    assert failed_lines[0].startswith("FAILED: generation: "), lines
    assert lines[-1].startswith("Error: verification failed: ") and "report.json" in lines[-1]
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [f"FAILED: {line}" for line in data["failures"]] == failed_lines
    assert "FAILED" in cli.summary.read_text()


def test_cli_verify_usage_errors(release, tmp_path, cli):
    assert cli("verify", "--checkpoint", release.checkpoint).exit_code == 2
    assert (
        cli("verify", release.model_dir, "--repo-id", REPO, "--checkpoint", release.checkpoint).exit_code == 2
    )
    assert (
        cli("verify", release.model_dir, "--revision", "v1", "--checkpoint", release.checkpoint).exit_code
        == 2
    )
    result = cli("verify", release.model_dir, "--checkpoint", release.checkpoint, "--gate", "bogus=1")
    assert result.exit_code == 2 and "unknown gate 'bogus'" in result.stderr
    result = cli("verify", release.model_dir, "--checkpoint", release.checkpoint, "--device", "tpu")
    assert (
        result.exit_code == 2
        and "device (from option) must be auto, cpu, cuda or cuda:N, got 'tpu'" in result.stderr
    )


def test_a_gpu_device_without_a_gpu_is_one_line_before_any_model_loads(release, cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("RELEASE_DEVICE", "cuda")
    result = cli("verify", release.model_dir, *fast_options(release))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: device 'cuda': no CUDA device is visible here; use --device cpu or auto"
    )


def test_devices_resolve_against_the_gpus_free_memory(monkeypatch):
    """``resolve_device`` with a fake ``gpus`` (the one function that asks CUDA): where each spec lands."""
    import types

    from release.errors import UsageError
    from release.verify.loading import DEVICE_MEMORY_SHARE, Device, resolve_device

    gb = 10**9
    none, one, two = (
        (lambda: []),
        (lambda: [(16 * gb, 24 * gb)]),
        (lambda: [(16 * gb, 24 * gb), (8 * gb, 24 * gb)]),
    )
    assert resolve_device("cpu", weights_bytes=gb, gpus=one) == Device("cpu")
    assert resolve_device("auto", weights_bytes=gb, gpus=none) == Device("cpu")
    with pytest.raises(UsageError, match="unknown device 'gpu'"):
        resolve_device("gpu", weights_bytes=gb, gpus=one)
    with pytest.raises(UsageError, match="no CUDA device is visible"):
        resolve_device("cuda:0", weights_bytes=gb, gpus=none)
    monkeypatch.setitem(sys.modules, "accelerate", None)  # not installed
    with pytest.raises(UsageError, match="needs accelerate.*pip install accelerate"):
        resolve_device("cuda", weights_bytes=gb, gpus=one)
    monkeypatch.setitem(sys.modules, "accelerate", types.ModuleType("accelerate"))
    assert resolve_device("auto", weights_bytes=gb, gpus=two) == Device("cuda:0")
    assert resolve_device("CUDA:1", weights_bytes=gb, gpus=two) == Device("cuda:1")
    with pytest.raises(UsageError, match=r"there are 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2", weights_bytes=gb, gpus=two)
    # 20 GB of weights fit no single GPU: accelerate spreads them over every GPU (or GPU 1 only), then the CPU.
    spread = resolve_device("cuda", weights_bytes=20 * gb, gpus=two)
    assert spread.spread and spread.describe() == "cuda (device_map=auto)"
    assert spread.max_memory == {
        0: int(16 * gb / DEVICE_MEMORY_SHARE),
        1: int(8 * gb / DEVICE_MEMORY_SHARE),
        "cpu": 20 * gb,
    }
    assert spread.from_pretrained_kwargs() == {"device_map": "auto", "max_memory": spread.max_memory}
    only = resolve_device("cuda:1", weights_bytes=20 * gb, gpus=two)
    assert only.spread and set(only.max_memory) == {1, "cpu"}
    assert Device("cuda:0").from_pretrained_kwargs() == {"device_map": "cuda:0"}
    assert Device().from_pretrained_kwargs() == {} and Device().describe() == "cpu"


def test_cli_generate_and_generate_text_agree_with_the_verified_continuation(release, good, cli):
    from release.verify.runner import generate_text

    case = good[0].generation.cases[0]
    text = generate_text(release.model_dir, prompt=case.prompt, max_new_tokens=32)
    assert text == case.prompt + case.text
    sampled = ("--temperature", 0.8, "--top-k", 20, "--seed", 3)
    result = cli("generate", release.model_dir, "--prompt", "The Fox", "--max-new-tokens", 5, *sampled)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("The Fox")
    too_long = cli("generate", release.model_dir, "--prompt", "The Fox", "--max-new-tokens", 64)
    assert too_long.exit_code == 2 and "--max-new-tokens" in too_long.stderr


# --------------------------------------------------------------------------- the post-upload gate


def test_check_generation_against_report_passes_on_the_verified_folder(release, good):
    from release.verify.runner import check_generation_against_report

    assert check_generation_against_report(release.model_dir, revision=None, report=good[0].to_dict()) == []


def test_check_generation_against_report_fails_on_a_cache_path_bug(release, good, tmp_path):
    from release.verify.runner import check_generation_against_report

    folder = release.copy(tmp_path / "model")
    edit_modeling(folder, CACHE_LINE, "cache.update(k, v, self.layer_idx, kwargs=kwargs)")
    failures = check_generation_against_report(folder, revision=None, report=good[0].to_dict())
    assert "files: modeling_custom_transformer.py differs from the verified file" in failures[0]
    generation = [line for line in failures if line.startswith("generation: ")]
    assert len(generation) == 3 and "differs from the verified output" in generation[0]


def test_check_generation_against_report_refuses_unusable_reports(release, good):
    from release.verify.runner import check_generation_against_report

    data = good[0].to_dict()
    assert check_generation_against_report(
        release.model_dir, revision=None, report={**data, "passed": False}
    ) == ["report: the verification did not pass; there is nothing verified to compare with"]
    broken = {**data, "generation": {"max_new_tokens": 8, "cases": []}}
    assert check_generation_against_report(release.model_dir, revision=None, report=broken)[0].startswith(
        "report: "
    )


def test_hub_revision_is_verified_and_rechecked_from_a_fresh_cache(release, hub, cli, tmp_path):
    from release.verify.runner import check_generation_against_report, generate_text

    hub.create_repo(REPO)
    files = {p.name: p.read_bytes() for p in release.model_dir.iterdir()}  # convert writes no subfolders
    commit = hub.commit(REPO, files, message="release")
    hub.create_tag(REPO, "v1.0.0", revision=commit)

    result = cli("verify", "--repo-id", REPO, "--revision", "v1.0.0", *fast_options(release))
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "verification.json").read_text())  # ./verification.json for a repo id
    assert data["passed"] and data["model"]["source"] == "hub"
    assert (data["model"]["repo_id"], data["model"]["revision"], data["model"]["commit"]) == (
        REPO,
        "v1.0.0",
        commit,
    )
    assert ".gitattributes" in data["model"]["files"]

    assert check_generation_against_report(REPO, revision=commit, report=data) == []
    case = data["generation"]["cases"][0]
    text = generate_text(REPO, revision="v1.0.0", prompt=case["prompt"], max_new_tokens=8)
    assert text.startswith(case["prompt"])

    source = files["modeling_custom_transformer.py"].decode()
    broken_source = source.replace(CACHE_LINE, "cache.update(k, v, self.layer_idx, kwargs=kwargs)")
    broken = hub.commit(
        REPO, {"modeling_custom_transformer.py": broken_source.encode()}, message="regression"
    )
    failures = check_generation_against_report(REPO, revision=broken, report=data)
    assert "files: modeling_custom_transformer.py differs from the verified file" in failures[0]
    assert any(line.startswith("generation: 'The Fox': token ") for line in failures), failures


# --------------------------------------------------------------------------- small pieces


def test_prompt_and_max_new_tokens_must_fit_the_context(release):
    from release.errors import UsageError
    from release.verify.runner import verify_model

    with pytest.raises(UsageError, match=r"context of 64 tokens: lower --max-new-tokens to \d+ or less"):
        verify_model(release.model_dir, **release.fast(max_new_tokens=64))


def test_parity_gates_judge_what_was_measured_against_the_gates_turned_on():
    """The one place logits figures meet thresholds (compat measures only max abs diff and top-1)."""
    from release.verify.report import Gates, LogitFigures, parity_gates, parity_within

    compat = LogitFigures(max_abs_diff=2e-4, top1_agreement=1.0)
    [max_abs, top1] = parity_gates(compat, Gates(), where=" (first divergent layer: 1)")
    assert (max_abs.name, max_abs.passed, max_abs.threshold) == ("parity.max_abs_diff", False, 1e-4)
    assert max_abs.line == "parity: max abs diff 2.0e-04 > 1e-04 (first divergent layer: 1)"
    assert top1.passed and top1.detail == "top-1 agreement 100.00% >= 100.00%"
    assert not parity_within(compat, Gates()) and parity_within(
        compat, Gates().with_overrides({"max_abs_diff": "3e-4"})
    )
    half = parity_gates(LogitFigures(0.5, 0.01, 0.97, 1e-3), Gates.for_dtype("bfloat16"))
    assert [(g.name, g.passed) for g in half] == [
        ("parity.mean_abs_diff", True),
        ("parity.top1_agreement", True),
        ("parity.kl_divergence", True),
    ]
    assert not parity_gates(LogitFigures(max_abs_diff=float("nan")), Gates())[0].passed


def test_gates_per_dtype_and_overrides():
    from release.errors import UsageError
    from release.verify.runner import Gates

    assert (
        Gates.for_dtype("fp32") == Gates()
        and Gates().max_abs_diff == 1e-4
        and Gates().min_top1_agreement == 1.0
    )
    bf16 = Gates.for_dtype("torch.bfloat16")
    assert bf16.dtype == "bfloat16" and bf16.max_abs_diff is None and bf16.max_kl_divergence is not None
    changed = bf16.with_overrides({"max_abs_diff": "0.5", "max_kl_divergence": "off"})
    assert changed.max_abs_diff == 0.5 and changed.max_kl_divergence is None
    for bad in ({"nope": "1"}, {"max_abs_diff": "x"}, {"max_abs_diff": "-1"}, {"greedy_tie_margin": "off"}):
        with pytest.raises(UsageError):
            Gates().with_overrides(bad)
    with pytest.raises(UsageError, match="no default gates"):
        Gates.for_dtype("int8")


def test_gates_docstring_table_is_the_defaults():
    """The table users read in ``Gates``' docstring (and the README) is what ``for_dtype`` returns."""
    from release.verify.report import Gates

    rows = [
        line.split()
        for line in Gates.__doc__.splitlines()
        if line.strip().startswith(("max_", "mean_", "min_", "greedy_", "hidden_"))
    ]
    assert len(rows) == 7
    for column, dtype in enumerate(("float32", "bfloat16", "float16")):
        gates = Gates.for_dtype(dtype)
        for row in rows:
            cell = row[-3 + column]
            assert getattr(gates, row[0]) == (None if cell == "off" else float(cell)), (dtype, row)


def test_spill_reads_back_row_ranges_and_chunks_cover_every_position():
    import torch

    from release.verify.checks import (
        MIN_LOGITS_BUDGET,
        Spill,
        logits_budget,
        position_chunks,
        rows_per_forward,
    )

    assert position_chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert position_chunks(3, 0) == [(0, 1), (1, 2), (2, 3)]
    assert logits_budget(10) == MIN_LOGITS_BUDGET and logits_budget(16 * 10**8) == 10**8
    assert rows_per_forward(2, 64, width=32, n_layer=2, budget=10**8) == 2
    assert rows_per_forward(2, 1024, width=512, n_layer=8, budget=21 * 10**6) == 1
    x = torch.randn(7, 3, 5)
    with Spill() as spill:
        spill.append("x", x[:4])
        spill.append("x", x[4:])
        assert torch.equal(spill.rows("x", 2, 6), x[2:6])


def test_perplexity_by_position_chunks_is_the_whole_rows_cross_entropy():
    import torch
    from torch.nn import functional as F

    from release.verify import checks

    torch.manual_seed(0)
    ids, logits = torch.randint(0, 50, (2, 9)), torch.randn(2, 9, 50)
    whole = checks.Scores()
    for row in range(2):
        for s, e in checks.position_chunks(9, 4):  # 4 + 4 + 1 positions, as _chunked_logits hands them out
            whole.add(logits[row, s:e], ids[row], s)
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, 50).double(), ids[:, 1:].reshape(-1), reduction="sum"
    )
    assert whole.tokens == 2 * 8  # each row's last position predicts nothing
    assert abs(whole.total - float(expected)) < 1e-9


def test_the_first_text_window_is_the_full_context_parity_row_only_where_it_fills_the_context():
    from release.verify.checks import make_parity_inputs

    window = list(range(16))
    kinds = [(i.kind, i.compared, i.scored) for i in make_parity_inputs(50, 16, ["a"], [[1, 2]], window)]
    assert kinds == [("random", True, False)] * 2 + [("text", True, True), ("prompt", True, False)]
    short = make_parity_inputs(50, 16, ["a"], [[1, 2]], window[:10])  # a text shorter than the context
    assert [(i.kind, tuple(i.ids.shape)) for i in short] == [
        ("random", (2, 1)),
        ("random", (2, 8)),
        ("random", (1, 16)),
        ("prompt", (1, 2)),
    ]


def test_logits_beyond_the_budget_are_compared_by_position_chunks(release, good, monkeypatch):
    import release.verify.checks as checks
    from release.verify.runner import verify_model

    # 20 positions x 384 logits x 4 bytes: a forward may return 20 positions of one row (a 64-token row's
    # activations exceed it too, so rows go one at a time).
    monkeypatch.setattr(checks, "MIN_LOGITS_BUDGET", 20 * 384 * 4)
    forwards, head_positions = [], []
    real = checks.candidate_logits

    def spy(model, *args, **kwargs):
        original, head = model.forward, model.get_output_embeddings()
        original_head = head.forward

        def forward(*a, **kw):
            forwards.append(kw["input_ids"].shape)
            return original(*a, **kw)

        def head_forward(x):
            head_positions.append(x.shape[1])
            return original_head(x)

        model.forward, head.forward = forward, head_forward
        try:
            return real(model, *args, **kwargs)
        finally:
            del model.forward, head.forward

    monkeypatch.setattr(checks, "candidate_logits", spy)
    report = verify_model(release.model_dir, **{**release.fast(), "eval_text": None})  # 2,048 tokens of text
    assert report.passed, report.failures
    # One forward per row of each input (never a prefix again). Perplexity scores 2,048 tokens in whole-context
    # windows of 64 (63 scored each): 32 full windows and one of 33; the first full one is also parity's
    # full-context row, run once. A 64-token row's output layer sees its last position inside the forward, then
    # 20 + 20 + 20 + 4 positions, the 33-token one 20 + 13; the others' logits fit as they are.
    prompt_lengths = [i["length"] for i in report.parity.inputs if i["kind"] == "prompt"]
    assert sorted(shape[1] for shape in forwards) == sorted([1, 8, *[64] * 32, 33, *prompt_lengths])
    assert head_positions.count(20) == 3 * 32 + 1 and head_positions.count(4) == 32
    assert head_positions.count(13) == 1 and 64 not in head_positions
    assert report.perplexity.window == 64 and report.perplexity.tokens == 2048
    assert report.parity.positions == 2 * (1 + 8) + 64 + sum(prompt_lengths)
    assert report.parity.max_abs_diff <= 1e-4 and report.parity.top1_agreement == 1.0
