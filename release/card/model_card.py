"""The model card (``README.md`` and the Hub's ``.eval_results/*.yaml``), the PR preview comment, the release
notes and the job summary, rendered from ``templates/``.

Every card is checked before it is returned (front matter round-trips through huggingface_hub, no placeholder,
template tag or empty heading), and the same inputs give the same bytes, so a re-release uploads nothing new.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from release._io import write_text_atomic
from release.card.facts import (
    FFN_LABELS,
    check_verification,
    git_head_commit,
    read_model_facts,
    read_release_facts,
)
from release.card.metrics import (
    Metric,
    checkpoint_metrics,
    collect_metrics,
    eval_result_entries,
    eval_results,
    read_metrics_file,
)
from release.errors import CardError, SettingsError
from release.render import check_card_text, render_template
from release.settings import repo_id_problem
from release.verify.usage import usage_context
from release.versions import parse_version

HUB_URL = "https://huggingface.co"  # links in the card point at the public Hub, whatever HF_ENDPOINT says
CARD_TEMPLATE = "model_card.md.j2"
EVAL_RESULTS_DIR = ".eval_results"
PR_COMMENT_MARKER = "<!-- release-card-preview -->"
MAX_COMMENT_CHARS = 65536  # GitHub's limit for an issue or PR comment body
NO_CARD_PREFIX = "no card is published"  # how published_card() describes a missing card

_PLACEHOLDER_VALUE = re.compile(r"YOUR_|<[^>]*>|\bTODO\b|\bFIXME\b|^(?:None|null|nan|undefined)$", re.I)


# --- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardSettings:
    """What the card says that the model folder cannot know (``[tool.release.card]`` in pyproject.toml)."""

    model_name: str  # the card's title and the model-index name
    repo_id: str  # OWNER/NAME on the Hub
    license: str  # a Hub license id, e.g. "apache-2.0"
    description: str  # the summary paragraph (Markdown)
    intended_use: str  # Markdown
    limitations: str  # Markdown
    languages: tuple[str, ...] = ()  # ISO 639 codes, e.g. ("en",)
    datasets: tuple[str, ...] = ()  # Hub dataset ids of the training data
    tags: tuple[str, ...] = ()
    citation: str | None = None  # BibTeX
    base_model: str | None = None  # Hub id of the model this one derives from, if any
    source_url: str | None = None  # the code repository (https://github.com/OWNER/REPO): commit and tag links
    template: str | None = None  # a custom card template (path)

    REQUIRED = ("model_name", "repo_id", "license", "description", "intended_use", "limitations")
    LISTS = ("languages", "datasets", "tags")
    OPTIONAL = ("citation", "base_model", "source_url", "template")
    # One-line values checked for placeholders here; Markdown fields are checked in the rendered card.
    IDENTIFIERS = ("model_name", "repo_id", "license", "base_model", "source_url")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "[tool.release.card]") -> CardSettings:
        """Build settings from a mapping (TOML table plus overrides); SettingsError names every bad key.

        Keys may use ``-`` or ``_`` (``model-name`` = ``model_name``); a key given as None is ignored.
        """
        values = {str(key).replace("-", "_"): value for key, value in data.items() if value is not None}
        known = set(cls.REQUIRED) | set(cls.LISTS) | set(cls.OPTIONAL)
        problems = []
        unknown = sorted(set(values) - known)
        if unknown:
            problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        missing = [k for k in cls.REQUIRED if k not in values]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        for key in (*cls.REQUIRED, *cls.OPTIONAL):
            value = values.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{key} must be a non-empty string")
            elif key in cls.IDENTIFIERS and _PLACEHOLDER_VALUE.search(value.strip()):
                problems.append(f"{key} looks like a placeholder: {value.strip()!r}")
        for key in cls.LISTS:
            value = values.get(key, [])
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, str) and v.strip() for v in value
            ):
                problems.append(f'{key} must be a list of non-empty strings, e.g. {key} = ["..."]')
            else:
                values[key] = tuple(v.strip() for v in value)
        repo_id = values.get("repo_id")
        if isinstance(repo_id, str) and (problem := repo_id_problem(repo_id)):
            problems.append(f"repo_id {problem}")
        url = values.get("source_url")
        if isinstance(url, str) and not re.match(r"^https://[^\s/]+/\S+[^/]$", url):
            problems.append(f"source_url {url!r} must be an https:// URL without a trailing slash")
        if problems:
            raise SettingsError(f"{source}: " + "; ".join(problems))
        return cls(
            **{k: (v.strip() if isinstance(v, str) and k != "citation" else v) for k, v in values.items()}
        )


def card_settings_from(
    release_settings, *, overrides: Mapping[str, Any] | None = None, base_dir: Path | None = None
) -> CardSettings:
    """Card settings from the effective release settings (``release.settings.load_settings()``).

    The values come from its ``card`` table (``[tool.release.card]``); ``repo_id`` is the release's own
    (option > ``RELEASE_REPO_ID`` > ``[tool.release]``), else the card table's. ``overrides`` (CLI options,
    None = not given) win over the table. A relative ``template`` is resolved against ``base_dir`` (the
    pyproject's folder).
    """
    table = dict(release_settings.card)
    if getattr(release_settings, "repo_id", None):
        table.pop("repo-id", None)
        table["repo_id"] = release_settings.repo_id
    table.update({k: v for k, v in (overrides or {}).items() if v is not None})
    template = table.get("template")
    if isinstance(template, str) and base_dir is not None and not Path(template).is_absolute():
        table["template"] = str(Path(base_dir) / template)
    return CardSettings.from_mapping(table)


# --- rendering the card ------------------------------------------------------------------------------


@dataclass
class RenderedCard:
    """A checked card, ready to write or upload."""

    text: str  # README.md
    eval_results: dict[str, str]  # ".eval_results/<task>.yaml" -> YAML text
    card_data: Any  # huggingface_hub.ModelCardData (the front matter)
    eval_result_entries: dict[str, Any]  # same keys as eval_results -> huggingface_hub.EvalResultEntry
    metrics: list[Metric] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)  # what the templates saw (release notes reuse it)


@dataclass(frozen=True)
class Carded:
    """The card step's result: the rendered card and every file written into the model folder, ``SHA256SUMS``
    last (the folder is complete once the card is in it)."""

    rendered: RenderedCard
    written: list[Path]


def card_release(
    model_dir: Path,
    *,
    version: str,
    settings: CardSettings,
    verification=None,
    metrics_files: Sequence[Path] = (),
    template: Path | None = None,
) -> Carded:
    """Render the card, write it with ``.eval_results/`` into ``model_dir``, then write ``SHA256SUMS``.

    ``release card`` and ``release run`` both call this, so a folder carded by hand publishes exactly what the
    pipeline would. ``verification`` is a ``release.verify.VerificationReport`` (or None: no verification
    section). Raises what ``render_model_card`` raises.
    """
    from release.sign.checksums import write_checksums

    rendered = render_model_card(
        model_dir,
        version=version,
        settings=settings,
        metrics_files=metrics_files,
        verification=verification,
        template=template,
    )
    written = write_model_card(model_dir, rendered)
    written.append(write_checksums(Path(model_dir)))
    return Carded(rendered=rendered, written=written)


def render_model_card(
    model_dir: Path,
    *,
    version: str,
    settings: CardSettings,
    metrics_files: Sequence[Path] = (),
    verification=None,
    template: Path | None = None,
    extra: dict | None = None,
) -> RenderedCard:
    """Render and check the model card for the converted folder ``model_dir``.

    Args:
        model_dir: A folder written by ``release convert`` (config.json, *.safetensors, release.json).
        version: The release, ``vMAJOR.MINOR.PATCH[-prerelease]``; code in the card pins ``revision=version``.
        settings: Card settings (name, repo id, license, description...).
        metrics_files: Plain ``{name: number}`` JSON files and lm-evaluation-harness results files.
        verification: The ``VerificationReport``; without it the card has no verification section.
        template: A custom main template (default: ``settings.template``, else the built-in one).
        extra: Additional values for a custom template, available to it as ``extra``.

    Raises:
        UsageError: ``version`` is malformed.
        CardError: A file is missing or malformed, the template fails, or the result does not pass the checks.
    """
    from huggingface_hub import ModelCardData, eval_result_entries_to_yaml

    parse_version(version)  # UsageError unless vMAJOR.MINOR.PATCH[-prerelease]
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CardError(f"model folder not found: {model_dir}")
    release_data, release = read_release_facts(model_dir)
    model = read_model_facts(model_dir, release_data)
    checked = None
    if verification is not None:
        checked = check_verification(
            verification, source="verification report", checkpoint_sha256=release.checkpoint_sha256
        )

    files = [read_metrics_file(Path(p), datasets=settings.datasets) for p in metrics_files]
    metrics = collect_metrics(
        checkpoint=checkpoint_metrics(
            val_loss=release.val_loss, best_val_loss=release.best_val_loss, datasets=settings.datasets
        ),
        files=files,
    )
    results = eval_results(metrics)
    entries = eval_result_entries(metrics)
    card_data = ModelCardData(
        base_model=settings.base_model,
        datasets=list(settings.datasets) or None,
        language=list(settings.languages) or None,
        library_name="transformers",
        license=settings.license,
        pipeline_tag="text-generation",
        tags=list(settings.tags) or None,
        model_name=settings.model_name,
        eval_results=results or None,
    )
    eval_yaml = {path: _yaml(eval_result_entries_to_yaml([entry])) for path, entry in entries.items()}

    commit, commit_source = release.git_commit, "release.json"
    if commit is None:
        commit, commit_source = git_head_commit(model_dir), "git"
    context = _card_context(
        version=version,
        settings=settings,
        model=model,
        release=release,
        commit=commit,
        commit_source=commit_source,
        metrics=metrics,
        files=files,
        eval_paths=sorted(eval_yaml),
        verification=checked,
        front_matter=card_data.to_yaml(),
        extra=dict(extra or {}),
    )
    template = template or (Path(settings.template) if settings.template else None)
    text = render_template(CARD_TEMPLATE, context, template=template)

    verbatim = []
    if checked is not None:
        for case in checked["generation"]["cases"]:
            verbatim += [case["prompt"], case["text"]]
        sampling = checked["generation"]["sampling"]
        if sampling is not None:
            verbatim += [sampling["text"], sampling["prompt"] or ""]
    check_card_text(text, verbatim=verbatim, literal=[settings.citation or ""])
    _check_front_matter(text, card_data)
    return RenderedCard(
        text=text,
        eval_results=eval_yaml,
        card_data=card_data,
        eval_result_entries=entries,
        metrics=metrics,
        context=context,
    )


def _yaml(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _check_front_matter(text: str, card_data) -> None:
    """The card's front matter must parse with huggingface_hub and give back exactly our card data."""
    from huggingface_hub import ModelCard

    if not text.startswith("---\n"):
        raise CardError(
            "the card has no front matter: a card template must start with ---, {{ front_matter }}, ---"
        )
    try:
        parsed = ModelCard(text).data
    except Exception as exc:  # huggingface_hub raises ValueError or yaml errors
        raise CardError(f"the card's front matter does not parse with huggingface_hub: {exc}") from None
    if parsed.to_dict() != card_data.to_dict():
        raise CardError(
            "the card's front matter differs from the card data; the template must use {{ front_matter }}"
        )
    if (parsed.eval_results or None) != (card_data.eval_results or None):
        raise CardError(
            "the model-index does not round-trip to the same eval results (two results on one dataset "
            "with different settings?)"
        )


def _card_context(
    *,
    version,
    settings: CardSettings,
    model,
    release,
    commit,
    commit_source,
    metrics,
    files,
    eval_paths,
    verification,
    front_matter,
    extra,
) -> dict[str, Any]:
    """The template context. Every key is always present (StrictUndefined); optional values are None.

    For custom templates:

    - ``version`` (``"v1.2.0"``), ``front_matter`` (YAML from ``ModelCardData``: put it between ``---`` lines),
      ``extra`` (the caller's ``extra`` dict).
    - ``settings``: model_name, repo_id, license, languages, datasets, tags, description, intended_use,
      limitations, citation, base_model, source_url.
    - ``model``: model_type, architectures, parameters, n_layer, n_head, n_embd, head_dim, n_positions,
      vocab_size, tokenizer_vocab_size, ffn_type, ffn_label, intermediate_size, dtype, weights_size,
      weight_files [{name, size, parameters, tensors}].
    - ``training``: iter_num, val_loss, best_val_loss, config [(key, value)], datasets.
    - ``metrics`` [{title, task, metric, label, value, stderr, n_shot, lower_is_better, dataset_id, dataset_name,
      dataset_config, dataset_split, dataset_url, source, benchmark, headline}], ``metrics_sources``
      [{name, kind, harness_version}], ``eval_results_files`` [path].
    - ``verification`` (None without a report): passed, dtype, gates [{name, title, passed, value, threshold,
      detail}], parity {max_abs_diff, mean_abs_diff, top1_agreement, kl_divergence}, perplexity {text,
      text_sha256, tokens, reference, candidate, relative_diff}, generation {max_new_tokens, cases [{prompt,
      text, match, tolerated}], sampling {text, prompt, settings [(name, value)]} or None}, compat_versions,
      compat_failed, compat_range.
    - ``release``: version, tag, commit, commit_source, dirty, converter_name, converter_version, checkpoint
      {filename, sha256, size, format}, libraries [(name, version)], files [{path, sha256, size}].
    - ``usage``: prompt, max_new_tokens. ``links``: hub, repo_url, revision_url, files_url, commit_url, tag_url.

    Filters: thousands, count, bytes, num, pct, value, measure, cell, code, fence(lang), pystr.
    """
    repo_url = f"{HUB_URL}/{settings.repo_id}"
    source_url = settings.source_url
    train_config = release.train_config
    return {
        "version": version,
        "front_matter": front_matter,
        "settings": {
            **{k: getattr(settings, k) for k in (*settings.REQUIRED, *settings.OPTIONAL) if k != "template"},
            **{k: list(getattr(settings, k)) for k in CardSettings.LISTS},
        },
        "model": {
            **_fields(model),
            "architectures": list(model.architectures),
            "head_dim": model.n_embd // model.n_head,
            "ffn_label": FFN_LABELS.get(model.ffn_type, model.ffn_type),
            "weights_size": sum(f.size for f in model.weight_files),
            "weight_files": [
                {"name": f.name, "size": f.size, "parameters": f.parameters, "tensors": f.tensors}
                for f in model.weight_files
            ],
        },
        "training": {
            "iter_num": release.iter_num,
            "val_loss": release.val_loss,
            "best_val_loss": release.best_val_loss,
            "config": sorted(train_config.items()) if train_config else [],
            "datasets": list(settings.datasets),
        },
        "metrics": [_metric_row(m) for m in metrics],
        "metrics_sources": [
            {"name": f.path.name, "kind": f.kind, "harness_version": f.harness_version} for f in files
        ],
        "eval_results_files": eval_paths,
        "verification": verification,
        "release": {
            "version": version,
            "tag": version,
            "commit": commit,
            "commit_source": commit_source,
            "dirty": release.dirty,
            "converter_name": release.converter_name,
            "converter_version": release.converter_version,
            "checkpoint": {
                "filename": release.checkpoint_filename,
                "sha256": release.checkpoint_sha256,
                "size": release.checkpoint_size,
                "format": release.checkpoint_format,
            },
            "libraries": [list(pair) for pair in release.libraries],
            "files": [{"path": p, "sha256": s, "size": n} for p, s, n in release.files],
        },
        "usage": usage_context(verification, n_positions=model.n_positions),
        "links": {
            "hub": HUB_URL,
            "repo_url": repo_url,
            "revision_url": f"{repo_url}/tree/{version}",
            "files_url": f"{repo_url}/tree/{version}",
            "commit_url": f"{source_url}/commit/{commit}" if source_url and commit else None,
            "tag_url": f"{source_url}/releases/tag/{version}" if source_url else None,
        },
        "extra": extra,
    }


def _fields(obj) -> dict[str, Any]:
    """A dataclass's fields as a dict, shallow (``dataclasses.asdict`` would copy nested values)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _metric_row(m: Metric) -> dict[str, Any]:
    return {
        **_fields(m),
        "label": m.label,
        "lower_is_better": m.lower_is_better,
        "dataset_url": f"{HUB_URL}/datasets/{m.dataset_id}" if m.on_hub else None,
        "benchmark": m.benchmark is not None,
        "headline": m.is_headline,
    }


# --- writing -----------------------------------------------------------------------------------------


def write_model_card(model_dir: Path, rendered: RenderedCard) -> list[Path]:
    """Write ``README.md`` and replace ``.eval_results/`` in ``model_dir``; return the paths written.

    Each file is written to a temporary name and renamed. ``.eval_results/`` is rebuilt as a whole so a
    metric dropped from this release does not linger from the last one.
    """
    model_dir = Path(model_dir)
    written = [write_text_atomic(model_dir / "README.md", rendered.text)]
    target = model_dir / EVAL_RESULTS_DIR
    staging = Path(tempfile.mkdtemp(prefix=f"{EVAL_RESULTS_DIR}.", suffix=".tmp", dir=model_dir))
    try:
        for rel, text in sorted(rendered.eval_results.items()):
            name = Path(rel).relative_to(EVAL_RESULTS_DIR)
            (staging / name).write_text(text, encoding="utf-8", newline="")
            written.append(target / name)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{EVAL_RESULTS_DIR}.old.", dir=model_dir))
            os.replace(target, old / "x")
            shutil.rmtree(old)
        if rendered.eval_results:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


# --- review in PRs -----------------------------------------------------------------------------------


def published_card(source: str) -> tuple[str, str]:
    """The card currently published at ``source``: a file, or a Hub model repo ``REPO_ID[@REVISION]``.

    Returns ``(text, description)``. A repo, revision or README that does not exist yet gives
    ``("", "no card is published at ... yet; the diff is against an empty card")``.

    Raises:
        CardError: ``source`` is neither a file nor a repo id, the repo is gated, or the Hub cannot be reached.
    """
    path = Path(source)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), f"the card in {source}"
        except (OSError, UnicodeDecodeError) as exc:
            raise CardError(f"cannot read {source}: {exc}") from None
    repo_id, _, revision = source.partition("@")
    if repo_id_problem(repo_id) or repo_id.endswith(".md") or (source.count("@") > 1):
        raise CardError(f"{source!r} is neither a file nor a Hub repo id (OWNER/NAME[@REVISION])")
    revision = revision or None
    label = f"{repo_id}@{revision or 'main'}"
    empty = f"{NO_CARD_PREFIX} at {label} yet ({{why}}); the diff is against an empty card"

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from release.auth import read_token

    with tempfile.TemporaryDirectory(prefix="release-card-") as cache:
        try:
            downloaded = hf_hub_download(
                repo_id, "README.md", revision=revision, cache_dir=cache, token=read_token()
            )
            text = Path(downloaded).read_text(encoding="utf-8")
        except GatedRepoError:
            raise CardError(
                f"{repo_id} is gated; set HF_TOKEN to a token with access to read its card"
            ) from None
        except RepositoryNotFoundError:
            return "", empty.format(why=f"the repo {repo_id} does not exist, or this token cannot see it")
        except RevisionNotFoundError:
            return "", empty.format(why=f"{repo_id} has no revision {revision}")
        except RemoteEntryNotFoundError:
            return "", empty.format(why=f"{repo_id} has no README.md at {revision or 'main'}")
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
            raise CardError(f"cannot reach the Hub to read the card at {label}: {exc}") from None
        except HfHubHTTPError as exc:
            raise CardError(f"cannot read the card at {label}: {exc}") from None
    return text, f"the card published at {label}"


def diff_cards(new_text: str, old_text: str, *, old_label: str, new_label: str) -> str:
    """Unified diff from ``old_text`` to ``new_text`` ('' when they are equal)."""
    old = old_text.splitlines(keepends=True)
    new = new_text.splitlines(keepends=True)
    lines = []
    for line in difflib.unified_diff(old, new, fromfile=old_label, tofile=new_label):
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        lines.append(line)
    return "".join(lines)


def _diff_stats(diff_text: str) -> tuple[int, int]:
    lines = diff_text.splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return added, removed


def _truncate_lines(text: str, limit: int) -> dict[str, Any]:
    """``text`` cut at a line boundary to at most ``limit`` characters, with the lines kept and in all."""
    lines = text.splitlines(keepends=True)
    kept, size = [], 0
    for line in lines:
        if size + len(line) > limit:
            break
        kept.append(line)
        size += len(line)
    return {
        "text": "".join(kept),
        "kept": len(kept),
        "total": len(lines),
        "truncated": len(kept) < len(lines),
    }


def render_pr_comment(
    card_text: str, diff_text: str, *, version: str, repo_id: str, old_description: str
) -> str:
    """The PR preview comment: a hidden marker line, the diff and the card, each in a collapsed block.

    The first line is ``<!-- release-card-preview -->`` so a workflow can find and update one comment.
    The body stays under GitHub's 65,536-character limit: the diff and then the card are cut at a line
    boundary with a note saying how much is shown.
    """
    added, removed = _diff_stats(diff_text)

    def render(diff_limit: int, card_limit: int) -> str:
        context = {
            "marker": PR_COMMENT_MARKER,
            "version": version,
            "repo_id": repo_id,
            "old_description": old_description,
            "published": not old_description.startswith(NO_CARD_PREFIX),
            "changed": bool(diff_text),
            "added": added,
            "removed": removed,
            "diff": _truncate_lines(diff_text, diff_limit),
            "card": _truncate_lines(card_text, card_limit),
        }
        return render_template("pr_comment.md.j2", context)

    body = render(len(diff_text), len(card_text))
    if len(body) <= MAX_COMMENT_CHARS:
        return body
    overhead = len(render(0, 0)) + 200  # the truncation notes grow a little with the numbers in them
    budget = MAX_COMMENT_CHARS - overhead
    # The diff is what a reviewer needs; give it most of the room, the card the rest.
    diff_budget = min(len(diff_text), max(budget * 3 // 4, budget - len(card_text)))
    card_budget = max(0, budget - diff_budget)
    body = render(diff_budget, card_budget)
    if len(body) > MAX_COMMENT_CHARS:  # pragma: no cover - the margin above makes this unreachable
        raise CardError(f"the PR comment is {len(body)} characters, over GitHub's {MAX_COMMENT_CHARS}")
    return body


@dataclass(frozen=True)
class CardReview:
    """A new card compared with the published one, for a pull request."""

    diff: str  # unified diff, '' when nothing changed
    comment: str  # the PR comment (Markdown)
    old_description: str  # what the diff is against, in words


def review_card(card_text: str, against: str, *, version: str, repo_id: str) -> CardReview:
    """Diff ``card_text`` against the card published at ``against`` (``REPO_ID[@REV]`` or a file) and render
    the PR comment. A card that is not published yet is compared with an empty one, and the comment says so.
    """
    old_text, old_description = published_card(against)
    diff = diff_cards(
        card_text, old_text, old_label=f"a/README.md ({against})", new_label=f"b/README.md ({version})"
    )
    comment = render_pr_comment(
        card_text, diff, version=version, repo_id=repo_id, old_description=old_description
    )
    return CardReview(diff=diff, comment=comment, old_description=old_description)


def write_pr_comment(path: Path, comment: str) -> Path:
    """Write the PR comment atomically (the preview workflow posts this file)."""
    return write_text_atomic(Path(path), comment)


# --- release notes and job summary -------------------------------------------------------------------


def render_release_notes(
    card: RenderedCard,
    *,
    revision_url: str,
    hub_commit: str | None = None,
    run_url: str | None = None,
    digests: Mapping[str, str] | None = None,
    release_digest: str | None = None,
) -> str:
    """GitHub Release notes for a published card: links to the Hub revision, key facts, how to load it.

    Args:
        card: The card that was published (its context supplies the facts).
        revision_url: The Hub revision, e.g. ``https://huggingface.co/OWNER/NAME/tree/v1.2.0``.
        hub_commit: The Hub commit the version tag points at.
        run_url: The workflow run that published it (``release.github.run_url``; never in README.md, which a
            re-release must leave unchanged).
        digests: ``{path: sha256}`` of the release's files (its SHA256SUMS), listed in the notes.
        release_digest: The SHA-256 of SHA256SUMS itself.
    """
    context = dict(card.context)
    context.update({"revision_url": revision_url, "hub_commit": hub_commit, "run_url": run_url})
    context.update({"digests": dict(digests or {}), "release_digest": release_digest})
    return render_template("release_notes.md.j2", context)


JOB_SUMMARY_REQUIRED = ("version", "repo_id", "dry_run", "steps")
JOB_SUMMARY_OPTIONAL = ("revision_url", "hub_commit", "commit", "card_path", "verification", "run_url")


def render_job_summary(context: Mapping[str, Any]) -> str:
    """The Markdown job summary of ``release run`` (for ``$GITHUB_STEP_SUMMARY``).

    ``context`` is a plain dict:

    - ``version`` (str), ``repo_id`` (str), ``dry_run`` (bool): required.
    - ``steps`` (list, required): ``{"name": str, "status": "ok" | "skipped" | "failed", "seconds": float | None,
      "detail": str | None}`` in the order they ran.
    - ``revision_url`` (str): the published Hub revision (absent or None on a dry run).
    - ``hub_commit`` (str): the Hub commit the tag points at.
    - ``commit`` (str): the git commit of the release tool.
    - ``card_path`` (str): where README.md was written.
    - ``verification`` (dict): the verification report (``verification.json``); its ``passed``, ``gates``,
      ``parity`` and ``perplexity`` are shown.
    - ``run_url`` (str): this workflow run.

    Raises:
        CardError: A required key is missing or ``steps`` is malformed.
    """
    missing = [k for k in JOB_SUMMARY_REQUIRED if k not in context]
    if missing:
        raise CardError(f"job summary: missing {', '.join(missing)}")
    unknown = sorted(set(context) - set(JOB_SUMMARY_REQUIRED) - set(JOB_SUMMARY_OPTIONAL))
    if unknown:
        raise CardError(f"job summary: unknown key(s) {', '.join(unknown)}")
    steps = []
    for i, step in enumerate(context["steps"]):
        if not isinstance(step, Mapping) or not isinstance(step.get("name"), str) or "status" not in step:
            raise CardError(f"job summary: steps[{i}] needs a name and a status")
        steps.append(
            {
                "name": step["name"],
                "status": str(step["status"]),
                "seconds": step.get("seconds"),
                "detail": step.get("detail") or "",
            }
        )
    values = {k: context.get(k) for k in (*JOB_SUMMARY_REQUIRED, *JOB_SUMMARY_OPTIONAL)}
    values["dry_run"] = bool(values["dry_run"])
    values["steps"] = steps
    values["failed"] = [s["name"] for s in steps if s["status"] == "failed"]
    verification = values["verification"]
    if verification is not None:
        if not isinstance(verification, Mapping):
            raise CardError("job summary: verification must be the verification report (a dict)")
        perplexity = verification.get("perplexity")
        if not (isinstance(perplexity, Mapping) and {"reference", "candidate"} <= set(perplexity)):
            perplexity = None
        values["verification"] = {
            "passed": bool(verification.get("passed")),
            "gates": [
                {
                    "name": str(g.get("name", "?")),
                    "passed": bool(g.get("passed")),
                    "value": g.get("value"),
                    "threshold": g.get("threshold"),
                }
                for g in verification.get("gates") or []
                if isinstance(g, Mapping)
            ],
            "perplexity": perplexity,
        }
    return render_template("job_summary.md.j2", values)
