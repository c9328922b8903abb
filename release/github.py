"""GitHub Actions integration: step outputs and the job summary. A no-op outside Actions.

Outputs use the heredoc form of ``$GITHUB_OUTPUT`` with a random delimiter, so a value can never end the block
early or inject another output.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence

from release.errors import IntegrityError


def in_github_actions(env: Mapping[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get("GITHUB_ACTIONS") == "true"


def write_outputs(outputs: Mapping[str, str], *, env: Mapping[str, str] | None = None) -> bool:
    """Append ``outputs`` to ``$GITHUB_OUTPUT``. Returns False (and writes nothing) when not set."""
    env = os.environ if env is None else env
    target = env.get("GITHUB_OUTPUT")
    if not target:
        return False
    with open(target, "a", encoding="utf-8") as fh:
        for name, value in outputs.items():
            delimiter = f"EOF_{secrets.token_hex(8)}"
            fh.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return True


def append_summary(markdown: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Append Markdown to ``$GITHUB_STEP_SUMMARY``. Returns False when not set."""
    env = os.environ if env is None else env
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(markdown if markdown.endswith("\n") else markdown + "\n")
    return True


def run_url(env: Mapping[str, str] | None = None) -> str | None:
    """The URL of the current workflow run, inside Actions."""
    env = os.environ if env is None else env
    if not in_github_actions(env):
        return None
    parts = [env.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    return f"{parts[0]}/{parts[1]}/actions/runs/{parts[2]}" if all(parts) else None


def version_from_ref(env: Mapping[str, str] | None = None) -> str | None:
    """On a tag push, the tag name (``GITHUB_REF_NAME``); otherwise None."""
    env = os.environ if env is None else env
    if env.get("GITHUB_REF_TYPE") == "tag" or env.get("GITHUB_REF", "").startswith("refs/tags/"):
        return env.get("GITHUB_REF_NAME") or env.get("GITHUB_REF", "").removeprefix("refs/tags/") or None
    return None


def check_release_ref(version: str, *, dry_run: bool, env: Mapping[str, str] | None = None) -> None:
    """Inside Actions, refuse a release that its ref does not back, before any work is done: on a tag the version
    must be the tag (else v1.0.0's code could be published as v2.0.0); off a tag only a dry run is allowed.

    Raises:
        IntegrityError: The version differs from the tag, or a real release runs off a tag (one line).
    """
    env = os.environ if env is None else env
    if not in_github_actions(env):
        return
    tag = version_from_ref(env)
    if tag is not None and tag != version:
        raise IntegrityError(
            f"version {version} does not match the tag {tag} this run is on; release {tag} from its tag, "
            f"or push a tag {version} and run on that"
        )
    if tag is None and not dry_run:
        ref = env.get("GITHUB_REF") or "an unknown ref"
        raise IntegrityError(
            f"{ref} is not a tag: a run on a branch can only be a dry run; push the tag {version} and "
            "release from it"
        )


def _cell(value: object) -> str:
    """A value from the run (inputs are anyone's text) as an inert Markdown table cell."""
    text = json.dumps(value) if not isinstance(value, str) else value
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", " ")[:200] + "`"


def report_review(
    *, version: str, plan_lines: Sequence[str], digest: str, env: Mapping[str, str] | None = None
) -> None:
    """What the reviewer approving the publish job sees: the run's inputs, actor, ref, version, the publish
    plan, and the release digest the publish job must match (also step output ``digest``)."""
    env = os.environ if env is None else env
    if not in_github_actions(env):
        return
    write_outputs({"digest": digest}, env=env)
    inputs: dict = {}
    if env.get("GITHUB_EVENT_PATH"):
        try:
            with open(env["GITHUB_EVENT_PATH"], encoding="utf-8") as fh:
                inputs = json.load(fh).get("inputs") or {}
        except (OSError, ValueError, AttributeError):
            inputs = {"(event)": "unreadable"}
    rows = [
        ("event", env.get("GITHUB_EVENT_NAME", "")),
        ("actor", env.get("GITHUB_ACTOR", "")),
        ("ref", env.get("GITHUB_REF", "")),
        ("commit", env.get("GITHUB_SHA", "")),
        ("version", version),
        *((f"input `{name}`", value) for name, value in sorted(inputs.items())),
        ("release digest (sha256 of SHA256SUMS)", digest),
    ]
    table = "\n".join(f"| {name} | {_cell(value)} |" for name, value in rows)
    plan = "\n".join(plan_lines)
    append_summary(
        f"### Release {version}: for review before publishing\n\n| | |\n|---|---|\n{table}\n\n"
        f"Publish plan:\n\n```text\n{plan}\n```\n\nThe publish job refuses any artifact whose digest is not "
        f"`{digest}`.\n",
        env=env,
    )


def report_publish(result: Mapping, *, env: Mapping[str, str] | None = None) -> None:
    """Step outputs and a short job summary for ``release publish`` (``PublishResult.to_dict()``)."""
    if not in_github_actions(env):
        return
    dry_run = bool(result.get("dry_run"))
    write_outputs(
        {
            "version": str(result.get("version", "")),
            "tag": str(result.get("tag", "")),
            "commit": "" if dry_run else str(result.get("commit") or ""),
            "revision-url": "" if dry_run else str(result.get("revision_url") or ""),
            "created": "true" if result.get("created") else "false",
            "dry-run": "true" if dry_run else "false",
        },
        env=env,
    )
    if dry_run:
        line = f"Dry run of {result.get('tag')} to `{result.get('repo_id')}`: nothing was changed."
    elif result.get("created"):
        line = (
            f"Published [{result.get('repo_id')}@{result.get('tag')}]({result.get('revision_url')}) "
            f"(Hub commit `{str(result.get('commit'))[:12]}`)."
        )
    else:
        line = f"{result.get('tag')} was already published at `{str(result.get('commit'))[:12]}`; nothing uploaded."
    append_summary(f"### release publish\n\n{line}\n", env=env)
