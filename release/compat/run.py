"""``release compat``: choose the versions and the reference, run the matrix, record the table.

The reference is ``verification.json``'s recorded tokens when it passed (verify already proved them), plus the
training module's logits when the checkpoint is given; a Hub revision needs its recorded report and no
checkpoint. The table becomes the report's ``compat`` section, or is written alone to ``out`` (a Hub revision,
or a folder with no report).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from release._io import write_text_atomic
from release.compat.canary import canary_versions, check_hub_revision, newest_release_tag
from release.compat.environments import Environment
from release.compat.index import all_minor_versions
from release.compat.matrix import (
    CompatReport,
    SnippetCheck,
    VersionResult,
    check_versions,
    default_versions,
    run_compat_matrix,
    supported_range,
)
from release.errors import UsageError
from release.verify.report import read_report, report_path


@dataclass(frozen=True)
class CompatRun:
    """The matrix's report, the revision checked (Hub only) and the file the table was written to."""

    report: CompatReport
    revision: str | None
    written: Path


def select_versions(
    listed: Sequence[str] | None = None, *, all_minors: bool = False, newest: bool = False
) -> tuple[list[str] | None, bool]:
    """(versions, canary): ``None`` means the default list of pyproject.toml.

    Raises:
        UsageError: More than one way to choose was given.
        CompatError: The package index cannot be read.
    """
    if sum([bool(listed), all_minors, newest]) > 1:
        raise UsageError("choose the versions one way: --versions, --all-minors or --newest")
    if all_minors:
        return all_minor_versions(range_spec=supported_range()), False
    if newest:
        return canary_versions(), True
    if listed:
        return check_versions(list(listed), range_spec=supported_range(), source="--versions"), False
    return None, False


def card_snippet_check(report: dict[str, Any] | None) -> SnippetCheck | None:
    """The ``snippet`` stage: the card's usage code run verbatim in each version's environment
    (``release.verify.snippet.check_card_snippet``), expected to reproduce ``report``'s greedy tokens.
    """
    from release.errors import ReleaseError
    from release.verify.snippet import card_has_code, check_card_snippet

    def check(version: str, env: Environment, model_dir: Path) -> str | None:
        if not card_has_code(model_dir):  # the user's own card template, no code: nothing to run (as publish)
            return None
        try:
            result = check_card_snippet(model_dir, report=report, python=env.python)
        except ReleaseError as exc:
            return f"the card's code: {exc}"
        return None if result.passed else "the card's code: " + "; ".join(result.failures)

    return check


def run_compat(
    model: str | Path,
    *,
    revision: str | None = None,
    checkpoint: Path | None = None,
    report: Path | None = None,
    out: Path | None = None,
    versions: Sequence[str] | None = None,
    all_minors: bool = False,
    newest: bool = False,
    cache_dir: Path | None = None,
    on_result: Callable[[VersionResult], None] | None = None,
    device: str = "cpu",
) -> CompatRun:
    """Check a converted folder, or a Hub revision (``revision``; ``"latest"``: the newest release tag).

    Raises:
        UsageError: A Hub revision without its recorded report, a folder with neither report nor checkpoint,
            or conflicting version choices.
        CompatError, SettingsError: See ``run_compat_matrix``.
    """
    chosen, canary = select_versions(versions, all_minors=all_minors, newest=newest)

    def options(recorded: dict[str, Any] | None) -> dict[str, Any]:  # what a folder and a Hub revision share
        return dict(
            report=recorded,
            versions=chosen,
            cache_dir=cache_dir,
            snippet_check=card_snippet_check(recorded),
            on_result=on_result,
            device=device,
        )

    path = Path(model)
    if path.exists():
        if revision is not None:
            raise UsageError("--revision applies to a Hub repo id, not to a local folder")
        report_file = Path(report) if report is not None else report_path(path)
        verified = read_report(report_file) if report_file.is_file() else None
        recorded = _reference(verified)
        if recorded is None and checkpoint is None:
            raise UsageError(
                f"no passing verification report at {report_file} and no --checkpoint: run `release verify` "
                "first, or pass the training checkpoint"
            )
        result = run_compat_matrix(path, checkpoint=checkpoint, canary=canary, **options(recorded))
        if verified is None:  # nothing to add the table to: it stands alone, as for a Hub revision
            target = out or report_file.with_name("compat.json")
            return CompatRun(result, None, _write_compat(target, result, repo_id=None, revision=None))
        written = verified.with_compat(result.to_dict()).write(out or report_file)
        return CompatRun(result, None, written)

    if report is None:
        raise UsageError(
            "checking a Hub revision needs its recorded verification report: pass --report verification.json"
        )
    if checkpoint is not None:
        raise UsageError("a Hub revision is checked against its recorded report; drop --checkpoint")
    recorded = _reference(read_report(Path(report)))
    if recorded is None:
        raise UsageError(f"{report} did not pass verification; its tokens are no reference")
    rev = newest_release_tag(str(model)) if revision in (None, "latest") else revision
    if chosen is None:
        chosen = default_versions()
    result = check_hub_revision(str(model), revision=rev, **options(recorded))
    target = Path(out) if out is not None else Path("compat.json")
    return CompatRun(result, rev, _write_compat(target, result, repo_id=str(model), revision=rev))


def _reference(report) -> dict[str, Any] | None:
    """The report as the matrix takes it when it passed and recorded generation cases, else None."""
    return report.to_dict() if report is not None and report.verified and report.generation.cases else None


def _write_compat(path: Path, report: CompatReport, *, repo_id: str | None, revision: str | None) -> Path:
    """The table alone, with what it checked: a Hub revision (the canary's input), or a folder with no report."""
    data = {"repo_id": repo_id, "revision": revision, "compat": report.to_dict()}
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path
