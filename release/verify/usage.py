"""The card's "How to use" code: what a user runs first, rendered from ``templates/card/usage_code.md.j2``.

It lives with the evidence because verify runs it verbatim (``snippet.py``, the ``card_snippet`` gate) and the
card only shows it: the prompt and length are the verified greedy run's, so the snippet reproduces its tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from release.render import render_template

DEFAULT_PROMPT = "Once upon a time"
USAGE_TEMPLATE = "card/usage_code.md.j2"  # the snippet, shared by the card and the release notes


def usage_context(verification: Mapping[str, Any] | None, *, n_positions: int | None) -> dict[str, Any]:
    """The card snippet's prompt and length: the verified greedy run's, so the snippet reproduces its tokens.

    ``release verify`` runs the snippet and compares its tokens with the recorded run (release.verify.snippet).
    Without a report: ``DEFAULT_PROMPT`` and ``min(40, n_positions // 2)`` new tokens.
    """
    generation = verification.get("generation") if verification else None
    if generation and generation.get("cases"):
        return {
            "prompt": generation["cases"][0]["prompt"],
            "max_new_tokens": int(generation["max_new_tokens"]),
        }
    return {"prompt": DEFAULT_PROMPT, "max_new_tokens": min(40, (n_positions or 80) // 2)}


def usage_snippet(
    *, repo_id: str, version: str, verification: Mapping[str, Any] | None, n_positions: int | None = None
) -> str:
    """The card's "How to use" code block (Markdown, fenced) for ``repo_id`` at ``version``, as the card has it."""
    context = {
        "settings": {"repo_id": repo_id},
        "version": version,
        "usage": usage_context(verification, n_positions=n_positions),
    }
    return render_template(USAGE_TEMPLATE, context)
