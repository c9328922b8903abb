"""Metrics for the model card: from the checkpoint, plain metrics files and lm-evaluation-harness results.

Each becomes a :class:`Metric`: a row of the card's table, an ``EvalResult`` of its ``model-index`` and, on a
known Hub benchmark dataset, an ``EvalResultEntry`` in the Hub's ``.eval_results/*.yaml``.

Two kinds of metrics file are read, told apart by their shape:

- plain: a JSON object of name -> number, e.g. ``{"val_loss": 2.31, "hellaswag/acc_norm": 0.29}``.
  A name ``TASK`` or ``TASK/METRIC`` where TASK is a known benchmark (see ``BENCHMARKS``) is reported on
  that benchmark (``TASK`` alone means its headline metric); any other name is a figure measured on the
  training data's held-out split, like the checkpoint's validation loss.
- lm-evaluation-harness results: an object with a ``"results"`` object of task -> {"acc,none": x, ...}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from release.card.facts import _json_type, read_json_object
from release.errors import CardError

TASK_TYPE = "text-generation"
TASK_NAME = "Text Generation"

# Stand-ins for the held-out split when the settings do not name exactly one training dataset.
HELD_OUT_DATASET = "held-out"
HELD_OUT_NAME = "Held-out split of the training data"
HELD_OUT_TITLE = "Held-out validation"


@dataclass(frozen=True)
class Benchmark:
    """An lm-evaluation-harness task and the Hub dataset it evaluates on."""

    task: str  # lm-eval task name, also the ``task_id`` of its ``.eval_results`` entry
    title: str
    dataset_id: str
    config: str | None
    split: str
    headline: str  # the metric reported to the Hub's eval results (metric[,filter] as lm-eval names it)


BENCHMARKS = {
    b.task: b
    for b in (
        Benchmark("hellaswag", "HellaSwag", "Rowan/hellaswag", None, "validation", "acc_norm"),
        Benchmark("arc_easy", "ARC-Easy", "allenai/ai2_arc", "ARC-Easy", "test", "acc_norm"),
        Benchmark("arc_challenge", "ARC-Challenge", "allenai/ai2_arc", "ARC-Challenge", "test", "acc_norm"),
        Benchmark("piqa", "PIQA", "ybisk/piqa", None, "validation", "acc_norm"),
        Benchmark("winogrande", "WinoGrande", "allenai/winogrande", "winogrande_xl", "validation", "acc"),
        Benchmark(
            "lambada_openai", "LAMBADA (OpenAI)", "EleutherAI/lambada_openai", "default", "test", "acc"
        ),
        Benchmark("mmlu", "MMLU", "cais/mmlu", "all", "test", "acc"),
        Benchmark("openbookqa", "OpenBookQA", "allenai/openbookqa", "main", "test", "acc_norm"),
        Benchmark("boolq", "BoolQ", "google/boolq", None, "validation", "acc"),
        Benchmark("sciq", "SciQ", "allenai/sciq", None, "test", "acc_norm"),
        Benchmark(
            "truthfulqa_mc2",
            "TruthfulQA (MC2)",
            "truthfulqa/truthful_qa",
            "multiple_choice",
            "validation",
            "acc",
        ),
        Benchmark("gsm8k", "GSM8K", "openai/gsm8k", "main", "test", "exact_match,strict-match"),
        Benchmark(
            "wikitext",
            "WikiText-2",
            "EleutherAI/wikitext_document_level",
            "wikitext-2-raw-v1",
            "test",
            "word_perplexity",
        ),
    )
}

METRIC_LABELS = {
    "acc": "accuracy",
    "acc_norm": "accuracy (length-normalized)",
    "exact_match": "exact match",
    "perplexity": "perplexity",
    "word_perplexity": "word perplexity",
    "byte_perplexity": "byte perplexity",
    "bits_per_byte": "bits per byte",
    "loss": "cross-entropy loss",
    "f1": "F1",
    "mcc": "Matthews correlation",
}
LOWER_IS_BETTER = {"loss", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"}


@dataclass(frozen=True)
class Metric:
    """One figure in the card's evaluation table (and one ``EvalResult`` in the model-index)."""

    source: str  # "checkpoint" or the metrics file's name
    task: str  # lm-eval task name, "validation" for held-out figures
    title: str  # what the table calls it: "HellaSwag", "Validation loss"
    metric: str  # metric id: "acc_norm", "loss", or the plain file's name
    value: float
    dataset_id: str  # Hub dataset id, or a stand-in (HELD_OUT_DATASET, an unknown task's name)
    dataset_name: str
    on_hub: bool  # dataset_id is a real Hub dataset the card can link to
    filter: str | None = None  # lm-eval filter ("strict-match"), None for "none"
    qualifier: str | None = None  # added to the label: "best of the run"
    stderr: float | None = None
    n_shot: int | None = None
    dataset_config: str | None = None
    dataset_split: str | None = None
    benchmark: Benchmark | None = None  # known benchmark: this metric may go to .eval_results

    @property
    def label(self) -> str:
        label = METRIC_LABELS.get(self.metric, self.metric)
        extra = ", ".join(q for q in (self.filter, self.qualifier) if q)
        return f"{label} ({extra})" if extra else label

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    @property
    def metric_key(self) -> str:
        return f"{self.metric},{self.filter}" if self.filter else self.metric

    @property
    def is_headline(self) -> bool:
        return self.benchmark is not None and self.benchmark.headline == self.metric_key

    @property
    def identity(self) -> tuple:
        return (self.dataset_id, self.dataset_config, self.dataset_split, self.task, self.metric_key)


def held_out_metric(
    *, source: str, metric: str, value: float, datasets: Sequence[str], qualifier: str | None = None
) -> Metric:
    """A figure measured on the training data's held-out split (validation loss and the like)."""
    on_hub = len(datasets) == 1  # else the HELD_OUT_* stand-ins
    return Metric(
        source=source,
        task="validation",
        title=HELD_OUT_TITLE,
        metric=metric,
        qualifier=qualifier,
        value=value,
        dataset_id=datasets[0] if on_hub else HELD_OUT_DATASET,
        dataset_name=f"{datasets[0]} (held-out split)" if on_hub else HELD_OUT_NAME,
        dataset_split="validation",
        on_hub=on_hub,
    )


def checkpoint_metrics(
    *, val_loss: float | None, best_val_loss: float | None, datasets: Sequence[str]
) -> list[Metric]:
    """The checkpoint's validation loss (``val_loss``, else ``best_val_loss``) as a held-out metric."""
    if val_loss is not None:
        value, qualifier = val_loss, None
    elif best_val_loss is not None:
        value, qualifier = best_val_loss, "best of the run"
    else:
        return []
    return [
        held_out_metric(
            source="checkpoint", metric="loss", value=value, qualifier=qualifier, datasets=datasets
        )
    ]


@dataclass(frozen=True)
class MetricsFile:
    path: Path
    kind: str  # "plain" or "lm-eval"
    metrics: tuple[Metric, ...]
    harness_version: str | None  # lm-eval's version when the results file records it


def read_metrics_file(path: Path, *, datasets: Sequence[str]) -> MetricsFile:
    """Read a plain or lm-evaluation-harness metrics file; CardError names the file and what is wrong."""
    path = Path(path)
    data = read_json_object(path, what="metrics file")
    if not data:
        raise CardError(f"{path}: the metrics file is empty")
    if isinstance(data.get("results"), Mapping):
        metrics, version = _read_lm_eval(path, data)
        return MetricsFile(path=path, kind="lm-eval", metrics=tuple(metrics), harness_version=version)
    return MetricsFile(
        path=path, kind="plain", metrics=tuple(_read_plain(path, data, datasets)), harness_version=None
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_plain(path: Path, data: Mapping, datasets: Sequence[str]) -> list[Metric]:
    bad = [k for k, v in data.items() if not _number(v)]
    if bad:
        shown = ", ".join(f"'{k}' ({_describe(data[k])})" for k in bad[:5])
        raise CardError(
            f"{path}: metric values must be numbers, but {shown} are not "
            "(a plain metrics file is a JSON object of name -> number; lm-evaluation-harness "
            'results need a "results" object)'
        )
    metrics = []
    for name, value in data.items():
        if not math.isfinite(value):
            raise CardError(f"{path}: metric '{name}' is {value}, not a finite number")
        if not name.strip():
            raise CardError(f"{path}: a metric has an empty name")
        task, _, metric_key = name.partition("/")
        benchmark = BENCHMARKS.get(task)
        if benchmark is not None:
            metrics.append(
                _benchmark_metric(path.name, benchmark, metric_key or benchmark.headline, value, None, None)
            )
            continue
        metrics.append(held_out_metric(source=path.name, metric=name, value=float(value), datasets=datasets))
    return metrics


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 20 else "a string"
    return _json_type(value)


def _split_key(key: str) -> tuple[str, str | None]:
    """lm-eval 0.4 names metrics "acc,none" / "exact_match,strict-match"; older versions just "acc"."""
    metric, _, flt = key.partition(",")
    return metric, (flt if flt and flt != "none" else None)


def _benchmark_metric(
    source: str, benchmark: Benchmark, metric_key: str, value: float, stderr: float | None, n_shot: int | None
) -> Metric:
    metric, flt = _split_key(metric_key)
    return Metric(
        source=source,
        task=benchmark.task,
        title=benchmark.title,
        metric=metric,
        filter=flt,
        value=float(value),
        stderr=stderr,
        n_shot=n_shot,
        dataset_id=benchmark.dataset_id,
        dataset_name=benchmark.title,
        dataset_config=benchmark.config,
        dataset_split=benchmark.split,
        on_hub=True,
        benchmark=benchmark,
    )


def _read_lm_eval(path: Path, data: Mapping) -> tuple[list[Metric], str | None]:
    results = data["results"]
    if not results:
        raise CardError(f"{path}: 'results' is empty")
    n_shots = data.get("n-shot") if isinstance(data.get("n-shot"), Mapping) else {}
    configs = data.get("configs") if isinstance(data.get("configs"), Mapping) else {}
    # Groups (mmlu) list their subtasks; the card reports the group, not its 57 subtasks.
    subtasks = set()
    for members in (data.get("group_subtasks") or {}).values():
        if isinstance(members, list):
            subtasks.update(m for m in members if isinstance(m, str))

    metrics = []
    for task in sorted(results):
        if task in subtasks:
            continue
        scores = results[task]
        if not isinstance(scores, Mapping):
            raise CardError(f"{path}: results.{task} must be an object of metric -> number")
        n_shot = n_shots.get(task)
        n_shot = n_shot if isinstance(n_shot, int) and not isinstance(n_shot, bool) else None
        values: dict[str, float] = {}
        stderrs: dict[str, float | None] = {}
        for key, value in scores.items():
            if key in ("alias", "name", "samples", "sample_len"):
                continue
            metric, flt = _split_key(key)
            if metric.endswith("_stderr"):
                stderr_key = metric[: -len("_stderr")] + (f",{flt}" if flt else "")
                # lm-eval writes "N/A" (or NaN) when it could not compute a stderr.
                stderrs[stderr_key] = float(value) if _number(value) and math.isfinite(value) else None
                continue
            if not _number(value):
                raise CardError(f"{path}: results.{task}.'{key}' must be a number, found {_describe(value)}")
            if not math.isfinite(value):
                raise CardError(f"{path}: results.{task}.'{key}' is {value}, not a finite number")
            values[metric + (f",{flt}" if flt else "")] = float(value)
        if not values:
            raise CardError(f"{path}: results.{task} holds no numeric metric")

        benchmark = BENCHMARKS.get(task)
        # Headline metric first, then the others in a fixed order.
        keys = sorted(values, key=lambda k: (benchmark is None or k != benchmark.headline, k))
        for key in keys:
            if benchmark is not None:
                metrics.append(
                    _benchmark_metric(path.name, benchmark, key, values[key], stderrs.get(key), n_shot)
                )
                continue
            metric, flt = _split_key(key)
            dataset_id, config, split, on_hub = _unknown_task_dataset(task, configs.get(task))
            metrics.append(
                Metric(
                    source=path.name,
                    task=task,
                    title=str(scores.get("alias") or task).strip(" -") or task,
                    metric=metric,
                    filter=flt,
                    value=values[key],
                    stderr=stderrs.get(key),
                    n_shot=n_shot,
                    dataset_id=dataset_id,
                    dataset_name=task,
                    dataset_config=config,
                    dataset_split=split,
                    on_hub=on_hub,
                )
            )
    version = data.get("lm_eval_version")
    return metrics, version if isinstance(version, str) else None


def _unknown_task_dataset(task: str, config: Any) -> tuple[str, str | None, str | None, bool]:
    """For a task not in BENCHMARKS, use the dataset its lm-eval config names, if it names a Hub id."""
    if isinstance(config, Mapping):
        dataset_path = config.get("dataset_path")
        if isinstance(dataset_path, str) and dataset_path.count("/") == 1:
            name = config.get("dataset_name")
            split = config.get("test_split") or config.get("validation_split")
            return (
                dataset_path,
                name if isinstance(name, str) else None,
                split if isinstance(split, str) else None,
                True,
            )
    return task, None, None, False


def collect_metrics(*, checkpoint: Sequence[Metric], files: Sequence[MetricsFile]) -> list[Metric]:
    """All metrics in card order; the same metric given twice is an error naming both sources."""
    seen: dict[tuple, Metric] = {}
    ordered = []
    for metric in [*checkpoint, *(m for f in files for m in f.metrics)]:
        if metric.identity in seen:
            first = seen[metric.identity]
            raise CardError(
                f"metric '{metric.title} {metric.metric_key}' is given twice ({first.source} and {metric.source}); "
                "keep one"
            )
        seen[metric.identity] = metric
        ordered.append(metric)
    # The model-index groups results by dataset: keep each dataset's metrics together, in first-seen order,
    # so that parsing the model-index back gives the same list.
    groups: dict[tuple, list[Metric]] = {}
    for metric in ordered:
        group = groups.setdefault(_model_index_key(metric), [])
        if group and (group[0].dataset_name, group[0].n_shot) != (metric.dataset_name, metric.n_shot):
            first = group[0]
            raise CardError(
                f"{metric.dataset_id} is reported with different settings ({_setting(first)} in {first.source}, "
                f"{_setting(metric)} in {metric.source}); the model-index takes one setting per dataset"
            )
        group.append(metric)
    return [m for group in groups.values() for m in group]


def _setting(metric: Metric) -> str:
    shots = "shots unspecified" if metric.n_shot is None else f"{metric.n_shot}-shot"
    return f"{metric.title}, {shots}"


def _model_index_key(metric: Metric) -> tuple:
    # huggingface_hub's EvalResult.unique_identifier, which eval_results_to_model_index groups by.
    return (TASK_TYPE, metric.dataset_id, metric.dataset_config, metric.dataset_split, None)


def eval_results(metrics: Sequence[Metric]):
    """The ``EvalResult`` list for ``ModelCardData`` (-> the card's ``model-index``)."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type=TASK_TYPE,
            task_name=TASK_NAME,
            dataset_type=m.dataset_id,
            dataset_name=m.dataset_name,
            dataset_config=m.dataset_config,
            dataset_split=m.dataset_split,
            dataset_args={"num_few_shot": m.n_shot} if m.n_shot is not None else None,
            metric_type=m.metric,
            metric_name=m.label,
            metric_config=m.filter,
            metric_value=m.value,
        )
        for m in metrics
    ]


def eval_result_entries(metrics: Sequence[Metric]) -> dict[str, Any]:
    """``.eval_results/<task>.yaml`` path -> ``EvalResultEntry``: one headline figure per known benchmark.

    No ``date`` is written (the Hub then uses the commit's time), so re-rendering gives the same bytes.
    """
    from huggingface_hub import EvalResultEntry

    entries = {}
    for m in metrics:
        if not m.is_headline:
            continue
        notes = f"{m.n_shot}-shot, {m.label}" if m.n_shot is not None else m.label
        path = f".eval_results/{m.task}.yaml"
        if path in entries:
            raise CardError(
                f"two results for the {m.title} benchmark ({m.metric_key}); the Hub's eval results take one "
                "per benchmark: pass one metrics file per benchmark setting"
            )
        entries[path] = EvalResultEntry(
            dataset_id=m.dataset_id, task_id=m.task, value=m.value, notes=f"lm-evaluation-harness, {notes}"
        )
    return entries
