"""GitHub Actions integration: step outputs and the job summary. A no-op outside Actions.

Outputs use the heredoc form of ``$GITHUB_OUTPUT`` with a random delimiter, so a value can never end the block
early or inject another output.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping


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
