"""card: folder + verification report + metrics -> README.md, .eval_results/, PR comment, release notes, summary.

- ``model_card``: the API (render, write, review against the published card, notes, job summary).
- ``facts``: what the folder and ``verification.json`` say; ``metrics``: metrics files; ``render``: Jinja and
  the checks every rendered text passes.
"""

from release.card.model_card import (
    Carded,
    CardSettings,
    RenderedCard,
    card_release,
    card_settings_from,
    render_job_summary,
    render_model_card,
    render_pr_comment,
    render_release_notes,
    review_card,
    write_model_card,
    write_pr_comment,
)

__all__ = [
    "Carded",
    "CardSettings",
    "RenderedCard",
    "card_release",
    "card_settings_from",
    "render_job_summary",
    "render_model_card",
    "render_pr_comment",
    "render_release_notes",
    "review_card",
    "write_model_card",
    "write_pr_comment",
]
