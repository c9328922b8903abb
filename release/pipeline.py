"""``release run``: fetch -> convert -> verify -> (compat) -> card -> publish, every output in ``dist/<version>/``.

Each step is the library function its CLI verb calls; its typed result (``RunResult``) is what the next consumes.

Layout of one run (only ``model/`` is uploaded; everything else is evidence for people and CI)::

    dist/<version>/
        model/               converted folder + README.md + .eval_results/ + SHA256SUMS -> the Hub revision
        verification.json    every figure and gate (timings included, hence not uploaded)
        verification.md      the same as Markdown
        demo/                the demo checkpoint and tokenizer (only when no checkpoint is configured)
        release.log          what each step did
        run.json             step statuses and the publish plan or result

The run stops at the first failed step with that step's error; nothing is published unless every gate passed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from release.errors import ReleaseError, UsageError, VerificationError
from release.settings import STEPS, Settings

if TYPE_CHECKING:
    from release.card.model_card import Carded
    from release.convert.folder import ConversionResult
    from release.fetch import Fetched
    from release.publish.publisher import PublishResult
    from release.verify.report import VerificationReport

RUN_MARKER = "run.json"

log = logging.getLogger("release")


@dataclass(frozen=True)
class Checkpoint:
    """What the fetch step hands to convert and verify."""

    path: Path  # the weights-only file (or the whole checkpoint, or the demo's)
    tokenizer: str | None  # the configured training tokenizer (None: GPT-2's); the demo's own folder
    fetched: Fetched | None = None  # the original's sha256, name and size; None for the demo


@dataclass
class StepRecord:
    name: str
    status: str  # "ok" | "skipped" | "failed"
    seconds: float | None = None
    detail: str | None = None


@dataclass
class RunResult:
    """What a run produced so far: each step's typed result, and a record per step."""

    version: str
    out_dir: Path
    dry_run: bool
    steps: list[StepRecord] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    converted: ConversionResult | None = None
    verified: VerificationReport | None = None
    carded: Carded | None = None
    published: PublishResult | None = None

    @property
    def model_dir(self) -> Path:
        return self.out_dir / "model"

    @property
    def report_path(self) -> Path:
        from release.verify.report import report_path

        return report_path(self.model_dir)

    @property
    def card_path(self) -> Path | None:
        return self.model_dir / "README.md" if self.carded is not None else None

    @property
    def failed(self) -> bool:
        return any(s.status == "failed" for s in self.steps)

    def to_dict(self) -> dict:
        checkpoint = self.checkpoint
        return {
            "version": self.version,
            "dry_run": self.dry_run,
            "demo": checkpoint is not None and checkpoint.fetched is None,
            "checkpoint": str(checkpoint.path) if checkpoint else None,
            "tokenizer": checkpoint.tokenizer if checkpoint else None,
            "out_dir": str(self.out_dir),
            "model_dir": str(self.model_dir),
            "card_path": str(self.card_path) if self.card_path else None,
            "steps": [s.__dict__ for s in self.steps],
            "publish": self.published.to_dict() if self.published is not None else None,
        }


def prepare_out_dir(dist_dir: Path, version: str) -> Path:
    """``dist/<version>/``, emptied if it holds an earlier run of this tool; refused if it holds anything else."""
    out = Path(dist_dir) / version
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{out} exists and is not a folder; remove it or choose another --dist-dir")
        if any(out.iterdir()) and not (out / RUN_MARKER).exists() and not (out / "release.log").exists():
            raise UsageError(
                f"{out} is not empty and was not written by `release run`; remove it or choose another --dist-dir"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def run_release(
    settings: Settings,
    *,
    version: str,
    dry_run: bool = False,
    stop_after: str | None = None,
    echo: Callable[[str], None] = print,
    pyproject_dir: Path | None = None,
) -> RunResult:
    """Run the whole release for ``version`` with ``settings``.

    Args:
        settings: Effective settings (``release.settings.load_settings``).
        version: ``vX.Y.Z[-prerelease]``; checked before anything runs.
        dry_run: Run every step, but publishing only computes and prints its plan (no token needed).
        stop_after: Stop after this step (e.g. ``"card"``: the CI build job, which publishes in another job).
        echo: Where progress lines go (the CLI passes click.echo to stderr).
        pyproject_dir: Folder of the pyproject.toml the settings came from (resolves a relative card template).

    Raises:
        UsageError: Bad version, missing repo id or checkpoint hash, unusable output folder.
        ReleaseError: The first failed step's error (VerificationError for failed gates).
    """
    from release.preflight import preflight
    from release.versions import parse_version

    tag = str(parse_version(version))
    if stop_after is not None and stop_after not in STEPS:
        raise UsageError(f"--stop-after must be one of {', '.join(STEPS)}, got {stop_after!r}")
    publishing = stop_after is None or STEPS.index(stop_after) >= STEPS.index("publish")
    if publishing and not settings.repo_id:
        raise UsageError("no repo id: set [tool.release] repo_id, RELEASE_REPO_ID or --repo-id")
    if settings.checkpoint and not settings.checkpoint_sha256:
        raise UsageError(
            "a checkpoint is configured without its sha256: set checkpoint_sha256, RELEASE_CHECKPOINT_SHA256 "
            "or --sha256"
        )
    checked = preflight(settings, stop_after=stop_after, pyproject_dir=pyproject_dir)  # before any download
    out = prepare_out_dir(Path(settings.dist_dir), tag)
    run = RunResult(version=tag, out_dir=out, dry_run=dry_run)
    handler = logging.FileHandler(out / "release.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def say(line: str) -> None:
        log.info(line)
        echo(line)

    say(f"release {tag}{' (dry run)' if dry_run else ''} into {out}")
    for line in settings.describe():
        say(f"  {line}")
    for line in checked:
        say(f"[preflight] {line}")
    steps: dict[str, Callable[[], str | None]] = {
        "fetch": lambda: _fetch(settings, run, say),
        "convert": lambda: _convert(settings, run),
        "verify": lambda: _verify(settings, run),
        "compat": lambda: _compat(settings, run),
        "card": lambda: _card(settings, run, pyproject_dir),
        "publish": lambda: _publish(settings, run, say),
    }
    try:
        for name in STEPS:
            started = time.perf_counter()
            try:
                detail = steps[name]()
            except BaseException as exc:
                message = str(exc) if isinstance(exc, ReleaseError) else f"{type(exc).__name__}: {exc}"
                run.steps.append(StepRecord(name, "failed", time.perf_counter() - started, message))
                log.error("%s failed: %s", name, message)
                for line in getattr(exc, "failures", []) or []:
                    log.error("  %s", line)
                raise
            seconds = time.perf_counter() - started
            status = "skipped" if detail is None else "ok"
            run.steps.append(StepRecord(name, status, round(seconds, 2), detail or None))
            say(f"[{name}] {status}{f': {detail}' if detail else ''} ({seconds:.1f} s)")
            if stop_after == name:
                break
        return run
    finally:
        (out / RUN_MARKER).write_text(json.dumps(run.to_dict(), indent=2, sort_keys=True) + "\n")
        _report_to_github(settings, run)
        log.removeHandler(handler)
        handler.close()


# Each step below takes the typed results of the steps before it from ``run``, stores its own, and returns its
# line for the log (None: skipped).


def _fetch(settings: Settings, run: RunResult, say: Callable[[str], None]) -> str:
    if not settings.checkpoint:
        from release.demo import build_demo_checkpoint

        say(
            "[fetch] no checkpoint configured: building the demo model (a tiny model trained on release/data)"
        )
        path, tokenizer = build_demo_checkpoint(run.out_dir / "demo")
        run.checkpoint = Checkpoint(path=path, tokenizer=str(tokenizer))
        return f"demo checkpoint {path}"
    from release.fetch import fetch_weights_only

    sha = settings.checkpoint_sha256.lower()
    # The weights-only file (content-addressed by the original's sha256) is what convert and verify read; the
    # original's name, size and hash are its provenance.
    fetched = fetch_weights_only(settings.checkpoint, sha256=sha)
    if fetched.fallback_reason:
        say(f"[fetch] not streamed ({fetched.fallback_reason}): using the whole checkpoint")
    run.checkpoint = Checkpoint(path=fetched.path, tokenizer=settings.tokenizer, fetched=fetched)
    kept = f", kept {fetched.kept_bytes} bytes of model records" if fetched.source == "stream" else ""
    return f"{fetched.path} ({fetched.source}; original {fetched.size} bytes{kept}, sha256 {sha[:12]}…)"


def _convert(settings: Settings, run: RunResult) -> str:
    from release.convert.folder import convert_checkpoint, parse_size

    checkpoint, fetched = run.checkpoint, run.checkpoint.fetched
    run.converted = converted = convert_checkpoint(
        checkpoint.path,
        run.model_dir,
        tokenizer=checkpoint.tokenizer,
        dtype=settings.dtype,
        max_shard_size=parse_size(settings.max_shard_size),
        force=False,
        checkpoint_sha256=fetched.sha256 if fetched else None,  # fetch hashed the original's every byte
        original=(fetched.filename, fetched.size) if fetched else None,
    )
    a = converted.architecture
    return (
        f"{len(converted.files)} files, {a.n_layer} layers x {a.n_head} heads, n_embd {a.n_embd}, "
        f"context {a.block_size}, vocab {a.vocab_size}, {a.ffn_type}, {settings.dtype}"
    )


def _verify(settings: Settings, run: RunResult) -> str:
    from release.verify.runner import verify_model

    checkpoint = run.checkpoint
    run.verified = report = verify_model(
        run.model_dir,
        checkpoint=checkpoint.path,
        prompts=settings.prompts,
        eval_text=Path(settings.eval_text) if settings.eval_text else None,
        max_new_tokens=settings.max_new_tokens,
        report_path=run.report_path,
        # The configured tokenizer, after the one convert recorded in release.json (the same one here).
        settings_tokenizer=checkpoint.tokenizer,
        device=settings.device,
        # The original's; the reference is its weights-only file.
        checkpoint_sha256=checkpoint.fetched.sha256 if checkpoint.fetched else None,
    )
    if not report.passed:
        raise VerificationError(
            f"verification failed ({len(report.failures)} gate(s)); nothing was published; see "
            f"{run.report_path.with_suffix('.md')}",
            report.failures,
        )
    return (
        f"all gates passed: max abs diff {_number(report.parity.max_abs_diff):.2e}, "
        f"perplexity {_number(report.perplexity.candidate):.3f}"
    )


def _number(value: float | None) -> float:
    return float("nan") if value is None else value


def _compat(settings: Settings, run: RunResult) -> str | None:
    if not settings.run_compat:
        return None
    from release.compat.matrix import run_compat_matrix
    from release.compat.run import card_snippet_check

    recorded = run.verified.to_dict()
    compat = run_compat_matrix(
        run.model_dir,
        checkpoint=run.checkpoint.path,
        report=recorded,
        versions=settings.compat_versions or None,
        snippet_check=card_snippet_check(recorded),  # the card's code, verbatim, per version
        device=settings.device,
    )
    run.verified = run.verified.with_compat(compat.to_dict())
    run.verified.write(run.report_path)
    if not compat.passed:
        raise VerificationError(
            "the transformers compatibility matrix failed; nothing was published", compat.failures
        )
    return "tested with transformers " + ", ".join(r.transformers for r in compat.results)


def _card(settings: Settings, run: RunResult, pyproject_dir: Path | None) -> str:
    from release.card.model_card import card_release, card_settings_from

    run.carded = carded = card_release(
        run.model_dir,
        version=run.version,
        settings=card_settings_from(settings, base_dir=pyproject_dir),
        verification=run.verified,
    )
    names = ", ".join(str(p.relative_to(run.model_dir)) for p in carded.written)
    return f"{len(carded.written)} file(s): {names}"


def _publish(settings: Settings, run: RunResult, say: Callable[[str], None]) -> str:
    from release.github import append_summary
    from release.publish.publisher import publish_release

    run.published = published = publish_release(
        run.model_dir,
        repo_id=settings.repo_id,
        version=run.version,
        private=settings.private,
        dry_run=run.dry_run,
        verification=run.verified,
        echo=lambda line: say(f"  {line}"),
    )
    for warning in published.warnings:
        say(f"  warning: {warning}")
        append_summary(f"> [!WARNING]\n> {warning}\n")
    if run.dry_run:
        for line in published.plan.format_lines():
            say(f"  {line}")
        return "dry run: nothing pushed (plan above)"
    if not published.created:
        return f"{run.version} already published at {published.commit[:12]}; nothing uploaded"
    return f"{published.revision_url} (commit {published.commit[:12]})"


def _report_to_github(settings: Settings, run: RunResult) -> None:
    """Step outputs and the job summary, inside GitHub Actions only."""
    from release import github
    from release.card.model_card import render_job_summary

    if not github.in_github_actions():
        return
    published = run.published if not run.dry_run else None
    outputs = {
        "version": run.version,
        "dist-dir": str(run.out_dir),
        "model-dir": str(run.model_dir),
        "card-path": str(run.card_path or ""),
        "commit": (published.commit or "") if published is not None else "",
        "revision-url": (published.revision_url or "") if published is not None else "",
        "status": "failed" if run.failed else "ok",
        "checkpoint": str(run.checkpoint.path) if run.checkpoint else "",
        "tokenizer": (run.checkpoint.tokenizer or "") if run.checkpoint else "",
    }
    github.write_outputs(outputs)
    summary = render_job_summary(
        {
            "version": run.version,
            "repo_id": settings.repo_id or "-",
            "dry_run": run.dry_run,
            "steps": [s.__dict__ for s in run.steps],
            "revision_url": outputs["revision-url"] or None,
            "hub_commit": outputs["commit"] or None,
            "card_path": outputs["card-path"] or None,
            "verification": run.verified.to_dict() if run.verified is not None else None,
            "run_url": github.run_url(),
        }
    )
    github.append_summary(summary)
