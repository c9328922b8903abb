"""``release run``: fetch -> convert -> verify -> (compat) -> card -> publish, every output in ``dist/<version>/``.

Layout of one run (only ``model/`` is uploaded; everything else is evidence for people and CI)::

    dist/<version>/
        model/               converted folder + README.md + .eval_results/ -> the Hub revision
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
from typing import Any

from release.errors import ReleaseError, UsageError, VerificationError
from release.settings import Settings

STEPS = ("fetch", "convert", "verify", "compat", "card", "publish")
RUN_MARKER = "run.json"

log = logging.getLogger("release")


@dataclass
class StepRecord:
    name: str
    status: str  # "ok" | "skipped" | "failed"
    seconds: float | None = None
    detail: str | None = None


@dataclass
class RunResult:
    version: str
    out_dir: Path
    model_dir: Path
    dry_run: bool
    steps: list[StepRecord] = field(default_factory=list)
    verification: dict | None = None
    card_path: Path | None = None
    publish: Any = None  # release.hub.PublishResult
    demo: bool = False
    checkpoint: Path | None = None  # the checkpoint actually used (fetched, or the demo's)
    tokenizer: str | None = None  # the tokenizer folder or Hub id actually used (None = GPT-2's)

    @property
    def failed(self) -> bool:
        return any(s.status == "failed" for s in self.steps)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "dry_run": self.dry_run,
            "demo": self.demo,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "tokenizer": self.tokenizer,
            "out_dir": str(self.out_dir),
            "model_dir": str(self.model_dir),
            "card_path": str(self.card_path) if self.card_path else None,
            "steps": [s.__dict__ for s in self.steps],
            "publish": self.publish.to_dict() if self.publish is not None else None,
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

    from release.preflight import preflight

    checked = preflight(settings, stop_after=stop_after, pyproject_dir=pyproject_dir)  # before any download
    out = prepare_out_dir(Path(settings.dist_dir), tag)
    result = RunResult(version=tag, out_dir=out, model_dir=out / "model", dry_run=dry_run)
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
    state: dict[str, Any] = {}
    try:
        for name in STEPS:
            step = _STEP_FUNCTIONS[name]
            started = time.perf_counter()
            try:
                detail = step(settings, result, state, say, pyproject_dir)
            except BaseException as exc:
                seconds = time.perf_counter() - started
                message = str(exc) if isinstance(exc, ReleaseError) else f"{type(exc).__name__}: {exc}"
                result.steps.append(StepRecord(name, "failed", seconds, message))
                log.error("%s failed: %s", name, message)
                for line in getattr(exc, "failures", []) or []:
                    log.error("  %s", line)
                raise
            seconds = time.perf_counter() - started
            status = "skipped" if detail is _SKIPPED else "ok"
            result.steps.append(
                StepRecord(name, status, round(seconds, 2), None if status == "skipped" else detail)
            )
            say(f"[{name}] {status}{f': {detail}' if status == 'ok' and detail else ''} ({seconds:.1f} s)")
            if stop_after == name:
                break
        return result
    finally:
        (out / RUN_MARKER).write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
        _report_to_github(settings, result)
        log.removeHandler(handler)
        handler.close()


_SKIPPED = object()


def _fetch(settings: Settings, result: RunResult, state: dict, say, pyproject_dir) -> str:
    if not settings.checkpoint:
        from release.demo import build_demo_checkpoint

        say(
            "[fetch] no checkpoint configured: building the demo model (a tiny model trained on release/data)"
        )
        state["checkpoint"], state["tokenizer"] = build_demo_checkpoint(result.out_dir / "demo")
        result.demo = True
        result.checkpoint, result.tokenizer = state["checkpoint"], str(state["tokenizer"])
        return f"demo checkpoint {state['checkpoint']}"
    from release.fetch.weights_only import fetch_weights_only

    sha = settings.checkpoint_sha256.lower()
    # The weights-only file (content-addressed by the original's sha256) is what convert and verify read; the
    # original's name, size and hash are its provenance.
    fetched = fetch_weights_only(settings.checkpoint, sha256=sha)
    if fetched.fallback_reason:
        say(f"[fetch] not streamed ({fetched.fallback_reason}): using the whole checkpoint")
    state["checkpoint"] = fetched.path
    state["checkpoint_sha256"] = fetched.sha256
    state["original"] = (fetched.filename, fetched.size)
    state["tokenizer"] = settings.tokenizer
    result.checkpoint, result.tokenizer = fetched.path, settings.tokenizer
    kept = f", kept {fetched.kept_bytes} bytes of model records" if fetched.source == "stream" else ""
    return f"{fetched.path} ({fetched.source}; original {fetched.size} bytes{kept}, sha256 {sha[:12]}…)"


def _convert(settings: Settings, result: RunResult, state: dict, say, pyproject_dir) -> str:
    from release.convert.folder import convert_checkpoint, parse_size

    converted = convert_checkpoint(
        Path(state["checkpoint"]),
        result.model_dir,
        tokenizer=state["tokenizer"],
        dtype=settings.dtype,
        max_shard_size=parse_size(settings.max_shard_size),
        force=False,
        checkpoint_sha256=state.get("checkpoint_sha256"),  # fetch hashed the original's every byte
        original=state.get("original"),
    )
    a = converted.architecture
    return (
        f"{len(converted.files)} files, {a.n_layer} layers x {a.n_head} heads, n_embd {a.n_embd}, "
        f"context {a.block_size}, vocab {a.vocab_size}, {a.ffn_type}, {settings.dtype}"
    )


def _verify(settings: Settings, result: RunResult, state: dict, say, pyproject_dir) -> str:
    from release.verify.runner import verify_model

    report = verify_model(
        result.model_dir,
        checkpoint=Path(state["checkpoint"]),
        prompts=settings.prompts,
        eval_text=Path(settings.eval_text) if settings.eval_text else None,
        max_new_tokens=settings.max_new_tokens,
        report_path=result.out_dir / "verification.json",
        tokenizer=state["tokenizer"],
        checkpoint_sha256=state.get(
            "checkpoint_sha256"
        ),  # the original's; the reference is its weights-only file
    )
    result.verification = report.to_dict()
    if not report.passed:
        raise VerificationError(
            f"verification failed ({len(report.failures)} gate(s)); nothing was published; see "
            f"{result.out_dir / 'verification.md'}",
            report.failures,
        )
    p = result.verification.get("parity", {})
    ppl = result.verification.get("perplexity", {})
    return (
        f"all gates passed: max abs diff {p.get('max_abs_diff', float('nan')):.2e}, "
        f"perplexity {ppl.get('candidate', float('nan')):.3f}"
    )


def _compat(settings: Settings, result: RunResult, state: dict, say, pyproject_dir):
    if not settings.run_compat:
        return _SKIPPED
    from release.compat.matrix import merge_into_report, run_compat_matrix
    from release.compat.run import card_snippet_check

    # The tokens verify proved are the reference: the training module computes only the logits (issue #14).
    report = run_compat_matrix(
        result.model_dir,
        checkpoint=Path(state["checkpoint"]),
        report=result.verification,
        versions=settings.compat_versions or None,
        snippet_check=card_snippet_check(result.verification),  # the card's code, verbatim, per version
    )
    path = result.out_dir / "verification.json"
    merge_into_report(path, report)
    result.verification = json.loads(path.read_text())
    if not report.passed:
        raise VerificationError(
            "the transformers compatibility matrix failed; nothing was published", report.failures
        )
    return "tested with transformers " + ", ".join(v["transformers"] for v in report.to_dict()["versions"])


def _card(settings: Settings, result: RunResult, state: dict, say, pyproject_dir) -> str:
    from release.card.model_card import card_settings_from, render_model_card, write_model_card

    card_settings = card_settings_from(settings, base_dir=pyproject_dir)
    rendered = render_model_card(
        result.model_dir,
        version=result.version,
        settings=card_settings,
        verification=result.verification,
    )
    written = write_model_card(result.model_dir, rendered)
    result.card_path = result.model_dir / "README.md"
    state["card"] = rendered
    from release.sign.checksums import write_checksums  # the card is the last file: the folder is complete

    written.append(write_checksums(result.model_dir))
    return f"{len(written)} file(s): {', '.join(str(p.relative_to(result.model_dir)) for p in written)}"


def _publish(settings: Settings, result: RunResult, state: dict, say, pyproject_dir) -> str:
    from release.publish.publisher import publish_release

    published = publish_release(
        result.model_dir,
        repo_id=settings.repo_id,
        version=result.version,
        private=settings.private,
        dry_run=result.dry_run,
        verification=result.out_dir / "verification.json",
        echo=lambda line: say(f"  {line}"),
    )
    result.publish = published
    if published.warnings:
        from release.github import append_summary

        for warning in published.warnings:
            say(f"  warning: {warning}")
            append_summary(f"> [!WARNING]\n> {warning}\n")
    if result.dry_run:
        for line in published.plan.format_lines():
            say(f"  {line}")
        return "dry run: nothing pushed (plan above)"
    if not published.created:
        return f"{result.version} already published at {published.commit[:12]}; nothing uploaded"
    return f"{published.revision_url} (commit {published.commit[:12]})"


_STEP_FUNCTIONS = {
    "fetch": _fetch,
    "convert": _convert,
    "verify": _verify,
    "compat": _compat,
    "card": _card,
    "publish": _publish,
}


def _report_to_github(settings: Settings, result: RunResult) -> None:
    """Step outputs and the job summary, inside GitHub Actions only."""
    from release import github

    if not github.in_github_actions():
        return
    publish = result.publish
    outputs = {
        "version": result.version,
        "dist-dir": str(result.out_dir),
        "model-dir": str(result.model_dir),
        "card-path": str(result.card_path or ""),
        "commit": (publish.commit or "") if publish is not None and not result.dry_run else "",
        "revision-url": (publish.revision_url or "") if publish is not None and not result.dry_run else "",
        "status": "failed" if result.failed else "ok",
        "checkpoint": str(result.checkpoint or ""),
        "tokenizer": result.tokenizer or "",
    }
    github.write_outputs(outputs)
    from release.card.model_card import render_job_summary

    summary = render_job_summary(
        {
            "version": result.version,
            "repo_id": settings.repo_id or "-",
            "dry_run": result.dry_run,
            "steps": [s.__dict__ for s in result.steps],
            "revision_url": outputs["revision-url"] or None,
            "hub_commit": outputs["commit"] or None,
            "card_path": outputs["card-path"] or None,
            "verification": result.verification,
            "run_url": github.run_url(),
        }
    )
    github.append_summary(summary)
