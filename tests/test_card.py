"""Model card: rendering, checks, metrics files, the golden card, and the diff against a card on the local Hub.

The golden file ``tests/golden/model_card.md`` pins the full rendered card for the fixed inputs built here.
When a template change is intended, regenerate it and review the diff like code:

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_card.py -k golden
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from release.errors import CardError, SettingsError, UsageError

GOLDEN = Path(__file__).parent / "golden"
VERSION = "v1.2.0"
CHECKPOINT_SHA = "3f" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"

SETTINGS = {
    "model_name": "Aesop Tiny",
    "repo_id": "fable-lab/aesop-tiny",
    "license": "apache-2.0",
    "languages": ["en"],
    "datasets": ["fable-lab/aesop-fables"],
    "tags": ["gpt", "tiny", "fables"],
    "description": (
        "A very small GPT-style language model trained on Aesop's fables. It writes short, fable-like "
        "prose and is meant for teaching and for testing release tooling, not for production use."
    ),
    "intended_use": (
        "Demonstrations, tests of training and release pipelines, and teaching how small decoder-only "
        "language models behave."
    ),
    "limitations": (
        "- Trained on a single small corpus: it knows nothing beyond the fables and repeats them.\n"
        "- Its English is 19th-century translation prose, and it has no safety tuning."
    ),
    "citation": "@misc{aesop_tiny,\n  title  = {{Aesop Tiny}},\n  author = {Fable Lab},\n  year   = {2025}\n}",
    "source_url": "https://github.com/fable-lab/aesop-tiny",
}

PLAIN_METRICS = {"val_perplexity": 12.1828, "arc_easy/acc": 0.4102}

LM_EVAL_RESULTS = {
    "results": {
        "hellaswag": {
            "alias": "hellaswag",
            "acc,none": 0.2611,
            "acc_stderr,none": 0.004383,
            "acc_norm,none": 0.2702,
            "acc_norm_stderr,none": 0.004431,
        },
        "lambada_openai": {
            "alias": "lambada_openai",
            "perplexity,none": 3812.77,
            "perplexity_stderr,none": 201.4,
            "acc,none": 0.0213,
            "acc_stderr,none": "N/A",
        },
        "mmlu": {"alias": "mmlu", "acc,none": 0.2295, "acc_stderr,none": 0.00354},
        "mmlu_anatomy": {"alias": " - anatomy", "acc,none": 0.2, "acc_stderr,none": 0.03},
        "fables_cloze": {"alias": "fables_cloze", "acc,none": 0.31},
    },
    "group_subtasks": {"mmlu": ["mmlu_anatomy"], "hellaswag": [], "lambada_openai": [], "fables_cloze": []},
    "configs": {"fables_cloze": {"dataset_path": "fable-lab/fables-cloze", "test_split": "test"}},
    "n-shot": {"hellaswag": 0, "lambada_openai": 0, "mmlu": 5, "mmlu_anatomy": 5, "fables_cloze": 0},
    "versions": {"hellaswag": 1.0, "lambada_openai": 1.0, "mmlu": 2, "fables_cloze": 1.0},
    "lm_eval_version": "0.4.8",
    "date": 1735689600.0,
    "total_evaluation_time_seconds": "123.4",
}

# The shape release/verify.py writes (schema_version 1), with fixed figures. The second greedy continuation holds
# a control byte, a fence and words the placeholder check would reject in prose: model output is quoted verbatim.
VERIFICATION = {
    "schema_version": 1,
    "passed": True,
    "failures": [],
    "model": {
        "dtype": "float32",
        "class": "CustomTransformerForCausalLM",
        "path": "/tmp/x/model",
        "source": "folder",
    },
    "checkpoint": {"sha256": CHECKPOINT_SHA, "path": "/tmp/x/ckpt.pt"},
    "gates": [
        {
            "name": "hygiene",
            "passed": True,
            "value": 0,
            "threshold": 0,
            "detail": "imports are self-contained",
        },
        {
            "name": "load",
            "passed": True,
            "value": "float32",
            "threshold": None,
            "detail": "loaded as float32",
        },
        {
            "name": "parity.max_abs_diff",
            "passed": True,
            "value": 6.556510925292969e-07,
            "threshold": 0.0001,
            "detail": "",
        },
        {"name": "parity.top1_agreement", "passed": True, "value": 1.0, "threshold": 1.0, "detail": ""},
        {
            "name": "perplexity",
            "passed": True,
            "value": 2.3863133100331204e-10,
            "threshold": 0.001,
            "detail": "",
        },
        {"name": "generation.greedy", "passed": True, "value": 1.0, "threshold": 1.0, "detail": "2/2"},
        {
            "name": "generation.sampling",
            "passed": True,
            "value": "max_new_tokens",
            "threshold": "eos or max_new_tokens",
            "detail": "",
        },
    ],
    "parity": {
        "max_abs_diff": 6.556510925292969e-07,
        "mean_abs_diff": 5.055718273103942e-08,
        "top1_agreement": 1.0,
        "kl_divergence": None,
        "positions": 214,
    },
    "perplexity": {
        "text": "aesop.txt",
        "text_sha256": "f29934efbf2744263ea05cd91fc95c169e9e29527d9e2a52c709cddbc81c8142",
        "tokens": 5011,
        "reference": 451.8715734868916,
        "candidate": 451.87157337906086,
        "candidate_tokens": 5011,
        "relative_diff": 2.3863133100331204e-10,
        "method": "non-overlapping windows of 64 tokens",
    },
    "generation": {
        "max_new_tokens": 16,
        "eos_token_id": 383,
        "cases": [
            {
                "prompt": "The Fox",
                "text": " and the Grapes. A Fox one day spied",
                "match": True,
                "tolerated": False,
            },
            {
                "prompt": "Once upon a time",
                "text": " a Lion\x0e said None TODO ```",
                "match": True,
                "tolerated": False,
            },
        ],
        "sampling": {
            "prompt": "The Fox",
            "seed": 0,
            "temperature": 0.8,
            "top_k": 40,
            "tokens": 16,
            "stopped": "max_new_tokens",
            "text": " was hungry, and he saw a Crow",
        },
    },
    "compat": {
        "range": ">=4.46,<6",
        "passed": True,
        "versions": [{"transformers": "5.0.0", "passed": True}, {"transformers": "4.46.3", "passed": True}],
    },
    "versions": {"torch": "2.5.1"},
    "timings": {"parity": 1.234, "total": 12.5},
}


def write_model_folder(root: Path) -> Path:
    """A converted folder built by hand: tiny config, a real safetensors file, release.json, tokenizer.json."""
    import torch
    from safetensors.torch import save_file

    model_dir = root / "model"
    model_dir.mkdir(parents=True)
    config = {
        "architectures": ["CustomTransformerForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_custom_transformer.CustomTransformerConfig",
            "AutoModelForCausalLM": "modeling_custom_transformer.CustomTransformerForCausalLM",
        },
        "model_type": "custom_transformer",
        "vocab_size": 400,
        "n_positions": 64,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "ffn_type": "swiglu",
        "intermediate_size": 128,
        "dtype": "float32",
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {
        "model.embed_tokens.weight": torch.zeros(400, 32),
        "model.embed_positions.weight": torch.zeros(64, 32),
        "lm_head.weight": torch.zeros(400, 32),
        "lm_head.bias": torch.zeros(400),
    }
    for i in range(2):
        tensors[f"model.layers.{i}.attn.qkv_proj.weight"] = torch.zeros(96, 32)
        tensors[f"model.layers.{i}.mlp.w1.weight"] = torch.zeros(128, 32)
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    vocab = {f"t{i}": i for i in range(383)}
    (model_dir / "tokenizer.json").write_text(
        json.dumps(
            {
                "model": {"type": "BPE", "vocab": vocab},
                "added_tokens": [{"id": 383, "content": "<|endoftext|>"}],
            }
        )
    )
    release = {
        "converter": {
            "name": "custom-transformer-release",
            "version": "0.1.0",
            "git_commit": COMMIT,
            "dirty": False,
        },
        "checkpoint": {
            "filename": "ckpt.pt",
            "sha256": CHECKPOINT_SHA,
            "size": 1_234_567,
            "format": "training-dict",
            "iter_num": 5000,
            "val_loss": 2.5,
            "best_val_loss": 2.4875,
            "train_config": {
                "batch_size": 12,
                "block_size": 64,
                "learning_rate": 0.001,
                "dropout": 0.0,
                "wandb": None,
            },
        },
        "architecture": {"n_layer": 2},
        "dtype": "float32",
        "libraries": {"transformers": "5.0.0", "torch": "2.5.1", "python": "3.11.9", "safetensors": "0.4.5"},
        "files": {
            "config.json": {"sha256": "cd" * 32, "size": 512},
            "model.safetensors": {"sha256": "ef" * 32, "size": 140_000},
        },
    }
    (model_dir / "release.json").write_text(json.dumps(release, indent=2))
    return model_dir


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return write_model_folder(tmp_path)


@pytest.fixture
def settings():
    from release.card.model_card import CardSettings

    return CardSettings.from_mapping(SETTINGS)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


@pytest.fixture
def metrics_files(tmp_path) -> list[Path]:
    return [
        write_json(tmp_path / "metrics.json", PLAIN_METRICS),
        write_json(tmp_path / "results.json", LM_EVAL_RESULTS),
    ]


def render(model_dir, settings, **kwargs):
    from release.card.model_card import render_model_card

    kwargs.setdefault("version", VERSION)
    return render_model_card(model_dir, settings=settings, **kwargs)


def verification() -> dict:
    return json.loads(json.dumps(VERIFICATION))


@pytest.fixture
def full_card(model_dir, settings, metrics_files):
    return render(model_dir, settings, metrics_files=metrics_files, verification=verification())


# --- the rendered card --------------------------------------------------------------------------------


def test_front_matter_parses_and_model_index_round_trips(full_card):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard(full_card.text)
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["language"] == ["en"]
    assert data["datasets"] == ["fable-lab/aesop-fables"]
    assert data["tags"] == ["gpt", "tiny", "fables"]
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert card.data.eval_results == full_card.card_data.eval_results
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "Aesop Tiny"
    assert results == full_card.card_data.eval_results
    by_key = {(r.dataset_type, r.metric_type): r for r in results}
    assert by_key[("Rowan/hellaswag", "acc_norm")].metric_value == 0.2702
    assert by_key[("Rowan/hellaswag", "acc_norm")].dataset_args == {"num_few_shot": 0}
    assert by_key[("cais/mmlu", "acc")].dataset_config == "all"
    assert by_key[("fable-lab/aesop-fables", "loss")].metric_value == 2.5  # the checkpoint's val_loss
    assert (
        by_key[("fable-lab/fables-cloze", "acc")].dataset_split == "test"
    )  # unknown task: its lm-eval config
    assert ("cais/mmlu", "mmlu_anatomy") not in {(r.dataset_type, r.dataset_name) for r in results}


def test_card_has_no_template_syntax_and_renders_byte_identically(
    model_dir, settings, metrics_files, full_card
):
    for marker in ("{{", "}}", "{%", "%}", "{#"):
        body = full_card.text.replace("{{Aesop Tiny}}", "")  # the BibTeX title braces are the user's
        assert marker not in body
    again = render(model_dir, settings, metrics_files=metrics_files, verification=verification())
    assert again.text.encode() == full_card.text.encode()
    assert again.eval_results == full_card.eval_results


def test_card_sections_and_pinned_usage(full_card):
    text = full_card.text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Model details",
        "## How to use",
        "## Serving",
        "## Evaluation",
        "## Verification",
        "## Sample generations",
        "## Training details",
        "## Uses",
        "## Provenance",
        "## License",
        "## Citation",
    ]
    assert 'revision = "v1.2.0"' in text
    assert "trust_remote_code=True" in text
    # Both loads trust the remote code: transformers 5 reads config.json in AutoTokenizer and would ask first.
    assert "AutoTokenizer.from_pretrained(repo_id, revision=revision, trust_remote_code=True)" in text
    assert "AutoModelForCausalLM.from_pretrained(repo_id, revision=revision, trust_remote_code=True)" in text
    assert "| Parameters | 42,384 (42.4K) |" in text
    assert "Tested with `transformers` 4.46.3 and 5.0.0 (supported: `>=4.46,<6`)." in text
    assert "\\x0e" in text and "\x0e" not in text  # control bytes from the model are shown, not emitted
    assert "1.234" not in text and "12.5" not in text  # timings never reach the card
    assert "actions/runs" not in text  # the workflow run URL changes per run: kept out of the card


def test_parameter_count_is_the_sum_of_the_safetensors_tensors(model_dir, full_card):
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        expected = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert full_card.context["model"]["parameters"] == expected == 42_384


def test_golden_card(full_card):
    """The full card for the fixed inputs. To accept a deliberate change: UPDATE_GOLDEN=1 pytest -k golden."""
    golden = GOLDEN / "model_card.md"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(full_card.text.encode("utf-8"))
    assert golden.is_file(), f"{golden} is missing; create it with UPDATE_GOLDEN=1"
    assert full_card.text == golden.read_text(encoding="utf-8"), (
        "the rendered card differs from tests/golden/model_card.md; if the change is intended, "
        "regenerate it with UPDATE_GOLDEN=1 and review the diff"
    )


def test_eval_results_files_for_known_benchmarks(model_dir, full_card):
    import yaml
    from huggingface_hub import EvalResultEntry, parse_eval_result_entries

    from release.card.model_card import write_model_card

    assert sorted(full_card.eval_results) == [
        ".eval_results/hellaswag.yaml",
        ".eval_results/lambada_openai.yaml",
        ".eval_results/mmlu.yaml",
    ]  # arc_easy came as a plain "arc_easy/acc", not its headline acc_norm; fables_cloze is no benchmark
    entries = parse_eval_result_entries(
        yaml.safe_load(full_card.eval_results[".eval_results/hellaswag.yaml"])
    )
    assert entries == [full_card.eval_result_entries[".eval_results/hellaswag.yaml"]]
    assert entries[0] == EvalResultEntry(
        dataset_id="Rowan/hellaswag",
        task_id="hellaswag",
        value=0.2702,
        notes="lm-evaluation-harness, 0-shot, accuracy (length-normalized)",
    )
    assert entries[0].date is None  # no date: re-rendering gives the same bytes

    (model_dir / ".eval_results").mkdir()
    (model_dir / ".eval_results" / "stale.yaml").write_text("- old\n")
    written = write_model_card(model_dir, full_card)
    assert written[0] == model_dir / "README.md"
    assert (model_dir / "README.md").read_text(encoding="utf-8") == full_card.text
    assert sorted(p.name for p in (model_dir / ".eval_results").iterdir()) == [
        "hellaswag.yaml",
        "lambada_openai.yaml",
        "mmlu.yaml",
    ]
    assert not [p for p in model_dir.iterdir() if p.name.endswith(".tmp") or ".old." in p.name]


def test_write_without_eval_results_removes_the_old_folder(model_dir, settings):
    from release.card.model_card import write_model_card

    (model_dir / ".eval_results").mkdir()
    (model_dir / ".eval_results" / "hellaswag.yaml").write_text("- stale\n")
    written = write_model_card(model_dir, render(model_dir, settings))
    assert written == [model_dir / "README.md"]
    assert not (model_dir / ".eval_results").exists()


def test_card_without_verification_claims_none(model_dir, settings):
    text = render(model_dir, settings).text
    assert "## Verification" not in text
    assert "## Sample generations" not in text
    assert "verified" not in text.lower()
    assert "Tested with" not in text
    assert "## Evaluation" in text  # the checkpoint's validation loss is still reported


def test_card_without_any_metric_has_no_evaluation_section_or_model_index(model_dir, settings):
    from huggingface_hub import ModelCard

    release = json.loads((model_dir / "release.json").read_text())
    release["checkpoint"].update(val_loss=None, best_val_loss=None, iter_num=None, train_config=None)
    (model_dir / "release.json").write_text(json.dumps(release))
    rendered = render(model_dir, settings)
    assert "## Evaluation" not in rendered.text
    assert "model-index" not in rendered.text
    assert ModelCard(rendered.text).data.eval_results is None
    assert "does not record its training state" in rendered.text


def test_best_val_loss_is_used_when_val_loss_is_missing(model_dir, settings):
    release = json.loads((model_dir / "release.json").read_text())
    release["checkpoint"]["val_loss"] = None
    (model_dir / "release.json").write_text(json.dumps(release))
    rendered = render(model_dir, settings)
    [metric] = rendered.metrics
    assert (metric.metric, metric.value, metric.label) == (
        "loss",
        2.4875,
        "cross-entropy loss (best of the run)",
    )


# --- metrics files ------------------------------------------------------------------------------------


def test_plain_metrics_file(tmp_path):
    from release.card.metrics import read_metrics_file

    path = write_json(
        tmp_path / "m.json", {"val_ppl": 11.5, "hellaswag": 0.3, "gsm8k/exact_match,strict-match": 0.01}
    )
    parsed = read_metrics_file(path, datasets=["a/b", "c/d"])
    assert parsed.kind == "plain"
    held_out, hellaswag, gsm8k = parsed.metrics
    assert (held_out.metric, held_out.dataset_id, held_out.on_hub) == ("val_ppl", "held-out", False)
    assert (hellaswag.metric, hellaswag.dataset_id, hellaswag.is_headline) == (
        "acc_norm",
        "Rowan/hellaswag",
        True,
    )
    assert (gsm8k.metric, gsm8k.filter, gsm8k.is_headline) == ("exact_match", "strict-match", True)


def test_lm_eval_results_file(tmp_path):
    from release.card.metrics import read_metrics_file

    parsed = read_metrics_file(write_json(tmp_path / "results.json", LM_EVAL_RESULTS), datasets=[])
    assert parsed.kind == "lm-eval"
    assert parsed.harness_version == "0.4.8"
    got = {(m.task, m.metric): (m.value, m.stderr, m.n_shot) for m in parsed.metrics}
    assert got[("hellaswag", "acc_norm")] == (0.2702, 0.004431, 0)
    assert got[("lambada_openai", "acc")] == (0.0213, None, 0)  # stderr "N/A" -> none
    assert got[("mmlu", "acc")] == (0.2295, 0.00354, 5)
    assert ("mmlu_anatomy", "acc") not in got  # a group's subtask
    assert [m.metric for m in parsed.metrics if m.task == "hellaswag"] == [
        "acc_norm",
        "acc",
    ]  # headline first


def test_missing_metrics_file_is_a_clear_error(model_dir, settings, tmp_path):
    with pytest.raises(CardError, match=r"metrics file not found: .*nope\.json"):
        render(model_dir, settings, metrics_files=[tmp_path / "nope.json"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"bad\.json: not valid JSON \(.* line 1"),
        ("[1, 2]", r"bad\.json: expected a JSON object, found an array"),
        ("{}", r"bad\.json: the metrics file is empty"),
        ('{"acc": "0.5"}', r"bad\.json: metric values must be numbers, but 'acc' \(the string '0\.5'\)"),
        ('{"acc": true}', r"bad\.json: metric values must be numbers, but 'acc' \(a boolean\)"),
        ('{"ppl": NaN}', r"bad\.json: metric 'ppl' is nan, not a finite number"),
        ('{"results": {}}', r"bad\.json: 'results' is empty"),
        ('{"results": {"hellaswag": 0.3}}', r"bad\.json: results\.hellaswag must be an object"),
        (
            '{"results": {"piqa": {"acc,none": "high"}}}',
            r"bad\.json: results\.piqa\.'acc,none' must be a number",
        ),
        ('{"results": {"piqa": {"acc,none": Infinity}}}', r"bad\.json: results\.piqa\.'acc,none' is inf"),
        ('{"results": {"piqa": {"alias": "piqa"}}}', r"bad\.json: results\.piqa holds no numeric metric"),
    ],
)
def test_malformed_metrics_are_clear_errors(model_dir, settings, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(CardError, match=message):
        render(model_dir, settings, metrics_files=[bad])


def test_the_same_metric_twice_names_both_files(model_dir, settings, tmp_path):
    a = write_json(tmp_path / "a.json", {"hellaswag/acc": 0.3})
    b = write_json(tmp_path / "b.json", {"results": {"hellaswag": {"acc,none": 0.31}}})
    with pytest.raises(CardError, match=r"given twice \(a\.json and b\.json\)"):
        render(model_dir, settings, metrics_files=[a, b])


def test_one_dataset_with_two_settings_is_refused(model_dir, settings, tmp_path):
    a = write_json(tmp_path / "a.json", {"results": {"mmlu": {"acc,none": 0.3}}, "n-shot": {"mmlu": 0}})
    b = write_json(tmp_path / "b.json", {"results": {"mmlu": {"acc_norm,none": 0.31}}, "n-shot": {"mmlu": 5}})
    with pytest.raises(
        CardError, match=r"cais/mmlu is reported with different settings \(MMLU, 0-shot in a\.json"
    ):
        render(model_dir, settings, metrics_files=[a, b])


# --- templates ----------------------------------------------------------------------------------------


def test_custom_template_with_builtin_partials_and_extra(model_dir, settings, tmp_path):
    template = tmp_path / "my_card.md.j2"
    template.write_text(
        "---\n{{ front_matter }}\n---\n\n# {{ settings.model_name }} ({{ extra.team }})\n\n"
        "{{ model.parameters | thousands }} parameters.\n\n"
        '{% include "card/usage.md.j2" %}\n'
    )
    rendered = render(model_dir, settings, template=template, extra={"team": "Fable Lab research"})
    assert rendered.text.startswith("---\n")
    assert "# Aesop Tiny (Fable Lab research)\n\n42,384 parameters.\n\n## How to use" in rendered.text
    assert "## Provenance" not in rendered.text


def test_custom_template_can_override_a_partial(model_dir, settings, tmp_path):
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "license.md.j2").write_text(
        "## License\n\nAll rights reserved by {{ settings.model_name }}.\n"
    )
    template = tmp_path / "model_card.md.j2"
    template.write_text(
        '---\n{{ front_matter }}\n---\n\n# Card\n\nText.\n\n{% include "card/license.md.j2" %}\n'
    )
    assert render(model_dir, settings, template=template).text.endswith(
        "## License\n\nAll rights reserved by Aesop Tiny.\n"
    )


def test_template_from_settings(model_dir, tmp_path):
    from release.card.model_card import CardSettings

    template = tmp_path / "settings_card.md.j2"
    template.write_text("---\n{{ front_matter }}\n---\n\n# From settings\n\nBody.\n")
    settings = CardSettings.from_mapping({**SETTINGS, "template": str(template)})
    assert "# From settings" in render(model_dir, settings).text


def test_undefined_value_names_template_line_and_variable(model_dir, settings, tmp_path):
    template = tmp_path / "strict.md.j2"
    template.write_text("---\n{{ front_matter }}\n---\n\n# Title\n\nSize: {{ model.hidden_width }}\n")
    with pytest.raises(CardError) as info:
        render(model_dir, settings, template=template)
    message = str(info.value)
    assert message.startswith("strict.md.j2, line 7: undefined value:")
    assert "hidden_width" in message
    assert "{{ model.hidden_width }}" in message


def test_undefined_value_in_a_partial_names_the_partial(model_dir, settings, tmp_path):
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "usage.md.j2").write_text("## How to use\n\nCall {{ usage.entry_point }}.\n")
    template = tmp_path / "model_card.md.j2"
    template.write_text('---\n{{ front_matter }}\n---\n\n# T\n\nx\n\n{% include "card/usage.md.j2" %}\n')
    with pytest.raises(CardError, match=r"^card/usage\.md\.j2, line 3: undefined value: .*entry_point"):
        render(model_dir, settings, template=template)


def test_template_syntax_error_and_missing_template(model_dir, settings, tmp_path):
    broken = tmp_path / "broken.md.j2"
    broken.write_text("---\n{{ front_matter }}\n---\n\n{% if model %}\nunclosed\n")
    with pytest.raises(CardError, match=r"^broken\.md\.j2, line \d+: template syntax error"):
        render(model_dir, settings, template=broken)
    with pytest.raises(CardError, match=r"template not found: .*absent\.md\.j2"):
        render(model_dir, settings, template=tmp_path / "absent.md.j2")


def test_template_without_the_front_matter_is_refused(model_dir, settings, tmp_path):
    template = tmp_path / "no_front.md.j2"
    template.write_text("# {{ settings.model_name }}\n\nText.\n")
    with pytest.raises(CardError, match="no front matter"):
        render(model_dir, settings, template=template)
    other = tmp_path / "own_front.md.j2"
    other.write_text("---\nlicense: mit\n---\n\n# {{ settings.model_name }}\n\nText.\n")
    with pytest.raises(CardError, match="front matter differs from the card data"):
        render(model_dir, settings, template=other)


# --- placeholders and empty sections ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('model = load("YOUR_USERNAME/aesop")', "placeholder 'YOUR_USERNAME'"),
        ("Trained by <your-name>.", "placeholder '<your-name>'"),
        ("Limitations: TODO", "placeholder 'TODO'"),
        ("[More Information Needed]", "placeholder '[More Information Needed]'"),
        ("| Parameters | None |", "missing value '| None'"),
        ("Base model: None", "missing value ': None'"),
        ('model = load(revision="None")', "missing value '=\"None\"'"),
        ("See [the docs]().", "empty link '[the docs]()'"),
        ("Left {{ over }}", "unresolved template syntax '{{'"),
        ("## Empty\n\n## Next\n\ntext", "empty section '## Empty'"),
        ("text\n\n## Last", "empty section '## Last'"),
    ],
)
def test_placeholders_fail_the_render(model_dir, settings, tmp_path, body, problem):
    template = tmp_path / "card.md.j2"
    template.write_text("---\n{{ front_matter }}\n---\n\n# Title\n\n{% raw %}" + body + "{% endraw %}\n")
    with pytest.raises(CardError) as info:
        render(model_dir, settings, template=template)
    assert "README.md is not ready to publish" in str(info.value)
    assert problem in str(info.value)


def test_placeholder_in_a_setting_fails_the_render(model_dir):
    from release.card.model_card import CardSettings

    settings = CardSettings.from_mapping({**SETTINGS, "limitations": "FIXME: write the limitations"})
    with pytest.raises(CardError, match=r"line \d+: placeholder 'FIXME'"):
        render(model_dir, settings)


def test_check_card_text_rules():
    from release.render import check_card_text

    check_card_text("# A\n\n## B\n\n### C\n\ntext\n")  # a heading followed by a deeper one is not empty
    check_card_text("# A\n\n```python\n# a comment, not a heading\n```\n")
    check_card_text("# A\n\n<details>\n<summary>More</summary>\n\nx\n\n</details>\n")
    check_card_text("# A\n\nThe model said: TODO None\n", verbatim=["TODO None"])
    check_card_text("# A\n\n```python\nmodel.generate(ids, eos_token_id=None)\n```\n")  # Python, not a hole
    check_card_text("# A\n\n```bibtex\n@misc{x, title={{X}}}\n```\n", literal=["@misc{x, title={{X}}}"])
    with pytest.raises(CardError, match="line 5: placeholder 'TODO'"):
        check_card_text(
            "# A\n\n```bibtex\n@misc{x, title={{X}}}\nTODO\n```\n", literal=["@misc{x, title={{X}}}\nTODO"]
        )
    with pytest.raises(CardError, match="heading without a title"):
        check_card_text("# A\n\n##\n\ntext\n")


# --- settings, version, inputs -------------------------------------------------------------------------


def test_settings_validation():
    from release.card.model_card import CardSettings

    hyphens = CardSettings.from_mapping({k.replace("_", "-"): v for k, v in SETTINGS.items()})
    assert hyphens == CardSettings.from_mapping(SETTINGS)
    assert hyphens.languages == ("en",)
    with pytest.raises(SettingsError, match=r"unknown key\(s\) colour, licence"):
        CardSettings.from_mapping({**SETTINGS, "licence": "mit", "colour": "red"})
    with pytest.raises(SettingsError, match="missing description, limitations"):
        CardSettings.from_mapping(
            {k: v for k, v in SETTINGS.items() if k not in ("description", "limitations")}
        )
    with pytest.raises(
        SettingsError, match=r'languages must be a list of non-empty strings, e\.g\. languages = \["\.\.\."\]'
    ):
        CardSettings.from_mapping({**SETTINGS, "languages": "en"})
    with pytest.raises(SettingsError, match="repo_id looks like a placeholder"):
        CardSettings.from_mapping({**SETTINGS, "repo_id": "YOUR_USERNAME/aesop-tiny"})
    with pytest.raises(SettingsError, match="repo_id 'aesop-tiny' is not OWNER/NAME"):
        CardSettings.from_mapping({**SETTINGS, "repo_id": "aesop-tiny"})
    with pytest.raises(SettingsError, match="model_name must be a non-empty string"):
        CardSettings.from_mapping({**SETTINGS, "model_name": "  "})
    with pytest.raises(SettingsError, match="source_url"):
        CardSettings.from_mapping({**SETTINGS, "source_url": "http://github.com/x/y/"})


def test_card_settings_from_release_settings(tmp_path):
    from release.card.model_card import card_settings_from
    from release.settings import load_settings

    pyproject = tmp_path / "pyproject.toml"
    card_table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in SETTINGS.items() if k != "repo_id")
    pyproject.write_text(
        f'[tool.release]\nrepo_id = "fable-lab/from-release"\n\n[tool.release.card]\n{card_table}\ntemplate = "t.md.j2"\n'
    )
    release_settings = load_settings(pyproject=pyproject, env={})
    card = card_settings_from(
        release_settings, overrides={"license": "mit", "model_name": None}, base_dir=tmp_path
    )
    assert card.repo_id == "fable-lab/from-release"
    assert card.license == "mit"
    assert card.model_name == "Aesop Tiny"
    assert card.template == str(tmp_path / "t.md.j2")
    overridden = load_settings(pyproject=pyproject, env={}, overrides={"repo_id": "fable-lab/cli"})
    assert card_settings_from(overridden).repo_id == "fable-lab/cli"


@pytest.mark.parametrize("version", ["1.2.0", "v1.2", "v01.2.0", "v1.2.0-", "v1.2.0+build", "latest"])
def test_bad_versions_are_usage_errors(model_dir, settings, version):
    with pytest.raises(UsageError, match="invalid version .*expected vMAJOR.MINOR.PATCH"):
        render(model_dir, settings, version=version)


def test_prerelease_version_is_pinned(model_dir, settings):
    assert 'revision = "v1.2.0-rc.1"' in render(model_dir, settings, version="v1.2.0-rc.1").text


def test_missing_release_json_and_config_keys(model_dir, settings):
    config = json.loads((model_dir / "config.json").read_text())
    del config["n_head"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CardError, match=r"config\.json: missing key 'n_head'"):
        render(model_dir, settings)
    (model_dir / "release.json").unlink()
    with pytest.raises(CardError, match="is not a folder written by `release convert`"):
        render(model_dir, settings)


def test_verification_for_another_checkpoint_or_failed_is_refused(model_dir, settings):
    other = verification()
    other["checkpoint"]["sha256"] = "00" * 32
    with pytest.raises(
        CardError, match="verifies checkpoint 000000000000…, but the model folder was converted from"
    ):
        render(model_dir, settings, verification=other)
    failed = verification()
    failed.update(passed=False, failures=["parity: max abs diff 3e-2 > 1e-4"])
    with pytest.raises(CardError, match=r"verification failed \(parity: max abs diff 3e-2 > 1e-4\)"):
        render(model_dir, settings, verification=failed)
    unknown = verification()
    unknown["schema_version"] = 2
    with pytest.raises(CardError, match="unsupported schema_version 2"):
        render(model_dir, settings, verification=unknown)


# --- review in PRs ------------------------------------------------------------------------------------


def test_diff_against_a_card_on_the_local_hub(hub, hub_token, full_card):
    from huggingface_hub import HfApi

    from release.card.model_card import published_card, review_card

    api = HfApi()
    api.create_repo("fable-lab/aesop-tiny")
    old_card = full_card.text.replace("2.5000", "2.6000")
    api.upload_file(
        path_or_fileobj=old_card.encode(), path_in_repo="README.md", repo_id="fable-lab/aesop-tiny"
    )
    api.create_tag("fable-lab/aesop-tiny", tag="v1.1.0")

    text, description = published_card("fable-lab/aesop-tiny@v1.1.0")
    assert text == old_card
    assert description == "the card published at fable-lab/aesop-tiny@v1.1.0"

    review = review_card(
        full_card.text, "fable-lab/aesop-tiny", version=VERSION, repo_id="fable-lab/aesop-tiny"
    )
    assert review.old_description == "the card published at fable-lab/aesop-tiny@main"
    assert review.diff.startswith("--- a/README.md (fable-lab/aesop-tiny)\n+++ b/README.md (v1.2.0)\n")
    changed = [
        line for line in review.diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert changed == [
        "-| Held-out validation | cross-entropy loss ↓ | 2.6000 | — | [fable-lab/aesop-fables](https://huggingface.co/datasets/fable-lab/aesop-fables) (validation) |",
        "+| Held-out validation | cross-entropy loss ↓ | 2.5000 | — | [fable-lab/aesop-fables](https://huggingface.co/datasets/fable-lab/aesop-fables) (validation) |",
        "-- **Validation loss at this checkpoint:** 2.6000",
        "+- **Validation loss at this checkpoint:** 2.5000",
    ]
    comment = review.comment
    assert comment.splitlines()[0] == "<!-- release-card-preview -->"
    assert "Changes against the card published at fable-lab/aesop-tiny@main: **+2 −2** lines." in comment
    assert "<summary>Diff of README.md (+2 −2)</summary>" in comment
    assert "\n```diff\n--- a/README.md" in comment
    assert "\n`````markdown\n---\n" in comment or "\n````markdown\n---\n" in comment

    same = review_card(old_card, "fable-lab/aesop-tiny", version=VERSION, repo_id="fable-lab/aesop-tiny")
    assert same.diff == ""
    assert (
        "No changes: the new card is identical to the card published at fable-lab/aesop-tiny@main."
        in same.comment
    )


def test_diff_against_a_repo_or_revision_that_does_not_exist_yet(hub, hub_token, full_card):
    from huggingface_hub import HfApi

    from release.card.model_card import published_card, review_card

    text, description = published_card("fable-lab/not-yet")
    assert text == ""
    assert description == (
        "no card is published at fable-lab/not-yet@main yet (the repo fable-lab/not-yet does not exist, or this "
        "token cannot see it); the diff is against an empty card"
    )
    HfApi().create_repo("fable-lab/empty")
    assert published_card("fable-lab/empty") == (
        "",
        "no card is published at fable-lab/empty@main yet (fable-lab/empty has no README.md at main); "
        "the diff is against an empty card",
    )
    assert published_card("fable-lab/empty@v9.9.9")[1].startswith(
        "no card is published at fable-lab/empty@v9.9.9 yet (fable-lab/empty has no revision v9.9.9)"
    )
    review = review_card(full_card.text, "fable-lab/not-yet", version=VERSION, repo_id="fable-lab/not-yet")
    assert review.diff.startswith(
        "--- a/README.md (fable-lab/not-yet)\n+++ b/README.md (v1.2.0)\n@@ -0,0 +1,"
    )
    assert "No card is published at fable-lab/not-yet@main yet" in review.comment
    assert "the diff is against an empty card." in review.comment


def test_published_card_from_a_file_and_bad_sources(tmp_path):
    from release.card.model_card import published_card

    path = tmp_path / "README.md"
    path.write_text("# Old\n")
    assert published_card(str(path)) == ("# Old\n", f"the card in {path}")
    with pytest.raises(CardError, match="is neither a file nor a Hub repo id"):
        published_card(str(tmp_path / "missing" / "README.md"))
    with pytest.raises(CardError, match="is neither a file nor a Hub repo id"):
        published_card("cards/README.md")


def test_pr_comment_stays_under_githubs_limit():
    from release.card.model_card import MAX_COMMENT_CHARS, diff_cards, render_pr_comment

    old = "".join(f"line {i} old ```\n" for i in range(6000))
    new = "".join(f"line {i} new\n" for i in range(6000))
    diff = diff_cards(new, old, old_label="a/README.md", new_label="b/README.md")
    comment = render_pr_comment(
        new, diff, version=VERSION, repo_id="a/b", old_description="the card in old.md"
    )
    assert len(comment) <= MAX_COMMENT_CHARS
    assert comment.startswith("<!-- release-card-preview -->\n")
    assert "The diff is cut here to fit in a comment:" in comment
    assert "of 12003 lines shown" in comment
    fences = [line for line in comment.splitlines() if line.startswith("```")]
    assert len(fences) % 2 == 0  # every block is closed


def test_diff_cards_marks_a_missing_final_newline():
    from release.card.model_card import diff_cards

    diff = diff_cards("a\nb", "a\n", old_label="old", new_label="new")
    assert diff.endswith("+b\n\\ No newline at end of file\n")
    assert diff_cards("same\n", "same\n", old_label="x", new_label="y") == ""


# --- release notes, job summary -----------------------------------------------------------------------


def test_release_notes_link_the_hub_revision(full_card):
    from release.card.model_card import render_release_notes

    notes = render_release_notes(
        full_card,
        revision_url="https://huggingface.co/fable-lab/aesop-tiny/tree/v1.2.0",
        hub_commit="ab" * 20,
        run_url="https://github.com/fable-lab/aesop-tiny/actions/runs/42",
    )
    assert notes.startswith("## Aesop Tiny v1.2.0\n")
    assert (
        "**[fable-lab/aesop-tiny@v1.2.0](https://huggingface.co/fable-lab/aesop-tiny/tree/v1.2.0)**" in notes
    )
    assert "(Hub commit `abababababab`)" in notes
    assert "[this workflow run](https://github.com/fable-lab/aesop-tiny/actions/runs/42)" in notes
    assert f"SHA-256 `{CHECKPOINT_SHA}`" in notes
    assert "| HellaSwag | accuracy (length-normalized) | 0.2702 | 0 |" in notes
    assert 'revision = "v1.2.0"' in notes
    assert "{{" not in notes and "{%" not in notes


def test_job_summary():
    from release.card.model_card import render_job_summary

    summary = render_job_summary(
        {
            "version": VERSION,
            "repo_id": "fable-lab/aesop-tiny",
            "dry_run": True,
            "steps": [
                {"name": "fetch", "status": "ok", "seconds": 0.41, "detail": "cache"},
                {
                    "name": "publish",
                    "status": "skipped",
                    "seconds": None,
                    "detail": "dry run | nothing pushed",
                },
            ],
            "card_path": "dist/v1.2.0/model/README.md",
            "verification": VERIFICATION,
            "run_url": "https://github.com/o/r/actions/runs/1",
        }
    )
    assert summary.startswith("## 🧪 Dry run of release v1.2.0 → `fable-lab/aesop-tiny`\n")
    assert "> Dry run: nothing was pushed to the Hub and no tag was created." in summary
    assert "| fetch | ✅ ok | 0.4 s | cache |" in summary
    assert "| publish | ⏭️ skipped | — | dry run \\| nothing pushed |" in summary
    assert "| parity.max_abs_diff | ✅ | 6.557e-07 | 0.0001 |" in summary
    assert "[Workflow run](https://github.com/o/r/actions/runs/1)" in summary

    failed = render_job_summary(
        {
            "version": VERSION,
            "repo_id": "a/b",
            "dry_run": False,
            "steps": [{"name": "verify", "status": "failed"}],
        }
    )
    assert failed.startswith("## ❌ Release v1.2.0 failed → `a/b`")
    with pytest.raises(CardError, match="job summary: missing steps"):
        render_job_summary({"version": VERSION, "repo_id": "a/b", "dry_run": False})
    with pytest.raises(CardError, match=r"job summary: unknown key\(s\) colour"):
        render_job_summary({"version": VERSION, "repo_id": "a/b", "dry_run": False, "steps": [], "colour": 1})


def test_github_run_url():
    from release.github import run_url as github_run_url

    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "o/r",
        "GITHUB_RUN_ID": "7",
    }
    assert github_run_url(env) == "https://github.com/o/r/actions/runs/7"
    assert github_run_url({**env, "GITHUB_ACTIONS": "false"}) is None
    assert github_run_url({}) is None


# --- the command --------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with [tool.release.card] in its pyproject.toml, as the working directory."""
    root = tmp_path / "project"
    root.mkdir()
    card_table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in SETTINGS.items())
    (root / "pyproject.toml").write_text(f"[tool.release]\n\n[tool.release.card]\n{card_table}\n")
    monkeypatch.chdir(root)
    for name in [n for n in os.environ if n.startswith("RELEASE_")]:
        monkeypatch.delenv(name)
    return root


def test_cli_card_writes_the_card_and_prints_where(project, model_dir, metrics_files):
    from release.cli import main

    (model_dir.parent / "verification.json").write_text(json.dumps(VERIFICATION))
    args = ["card", str(model_dir), "--version", VERSION]
    for path in metrics_files:
        args += ["--metrics", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Wrote {model_dir / 'README.md'}",
        f"Wrote {model_dir / '.eval_results' / 'hellaswag.yaml'}",
        f"Wrote {model_dir / '.eval_results' / 'lambada_openai.yaml'}",
        f"Wrote {model_dir / '.eval_results' / 'mmlu.yaml'}",
        f"Wrote {model_dir / 'SHA256SUMS'}",  # as `release run` writes it: the folder is complete
    ]
    text = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "## Verification" in text  # found next to the folder
    golden = GOLDEN / "model_card.md"
    if golden.is_file():
        assert text == golden.read_text(encoding="utf-8")


def test_cli_card_overrides_and_diff_against_a_file(project, model_dir):
    from release.cli import main

    old = project / "published.md"
    old.write_text("---\nlicense: mit\n---\n\n# Old card\n")
    result = CliRunner().invoke(
        main,
        ["card", str(model_dir), "--version", VERSION, "--license", "mit", "--diff-against", str(old)],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"--- a/README.md ({old})\n+++ b/README.md (v1.2.0)\n")
    assert "-# Old card" in result.stdout
    assert f"Compared with the card in {old}" in result.stderr
    assert f"Wrote {model_dir / 'README.md'}" in result.stderr
    comment = (model_dir.parent / "pr_comment.md").read_text(encoding="utf-8")
    assert comment.startswith("<!-- release-card-preview -->\n")
    assert "license: mit" in (model_dir / "README.md").read_text(encoding="utf-8")


def test_cli_card_errors_are_one_line(project, model_dir, tmp_path):
    from release.cli import main

    bad = write_json(tmp_path / "bad.json", {"acc": "high"})
    result = CliRunner().invoke(main, ["card", str(model_dir), "--version", VERSION, "--metrics", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert "bad.json: metric values must be numbers" in result.stderr
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["card", str(model_dir), "--version", "1.2"])
    assert result.exit_code == 2
    assert "invalid version" in result.stderr
    assert not (model_dir / "README.md").exists()


def test_cli_card_help():
    from release.cli import main

    result = CliRunner().invoke(main, ["card", "--help"])
    assert result.exit_code == 0
    assert "Render the model card DIR/README.md" in result.output
    assert "--diff-against REPO_ID[@REV]|FILE" in result.output


def test_card_states_a_long_compat_matrix_as_a_range(model_dir, settings):
    """Issue #16: every minor is many versions; the card says their span and count in one line."""
    data = verification()
    minors = [f"4.{m}.0" for m in range(46, 58)] + [f"5.{m}.0" for m in range(0, 25)]
    data["compat"]["versions"] = [{"transformers": v, "passed": True} for v in minors]
    text = render(model_dir, settings, verification=data).text
    assert "Tested on `transformers` 4.46–5.24: 37 versions (supported: `>=4.46,<6`)." in text
    assert "4.47.0" not in text
