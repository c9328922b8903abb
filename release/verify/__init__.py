"""verify: a converted folder (or Hub revision) against the training module -> a typed ``VerificationReport``.

- ``runner``: ``verify_model`` (every gate), publish's post-upload gate, ``generate_text`` (a quick look).
- ``report``: the schema of ``verification.json`` and the thresholds applied (verify's and compat's).
- ``checks``: the numerical comparisons; ``loading``: loading the candidate as users do, and where both models
  run; ``hygiene``: the remote-code files' own checks (``without_repo``: the same rule in child processes).
- ``usage``: the card's code; ``snippet``: that code run verbatim in a fresh process.
"""

from release.verify.report import (
    GATE_REGISTRY,
    GATES,
    CheckpointSection,
    GateResult,
    Gates,
    GateSpec,
    GenerationCase,
    GenerationSection,
    ModelSection,
    ParitySection,
    PerplexitySection,
    SamplingSection,
    VerificationReport,
    read_report,
)
from release.verify.runner import (
    check_generation_against_report,
    default_report_path,
    generate_text,
    verify_model,
)
from release.verify.snippet import (
    SnippetResult,
    card_snippet_gate,
    check_card_snippet,
    check_card_snippet_on_hub,
)

__all__ = [
    "GATES",
    "GATE_REGISTRY",
    "CheckpointSection",
    "GateResult",
    "GateSpec",
    "Gates",
    "GenerationCase",
    "GenerationSection",
    "ModelSection",
    "ParitySection",
    "PerplexitySection",
    "SamplingSection",
    "SnippetResult",
    "card_snippet_gate",
    "check_card_snippet",
    "check_card_snippet_on_hub",
    "VerificationReport",
    "check_generation_against_report",
    "default_report_path",
    "generate_text",
    "read_report",
    "verify_model",
]
