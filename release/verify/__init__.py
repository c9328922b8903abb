"""verify: a converted folder (or Hub revision) against the training module -> a typed ``VerificationReport``.

- ``runner``: ``verify_model`` (every gate), ``check_generation_against_report`` (publish's post-upload gate),
  ``generate_text`` (a person's quick look). Its candidate half and reference half each return frozen figures
  (``CandidateFigures``, ``ReferenceFigures``); ``gate_results`` turns them into gates.
- ``report``: the schema of ``verification.json`` (``VerificationReport`` and its sections, ``GateResult``,
  ``Gates`` thresholds, the ``GATES`` registry of names and titles, ``read_report``) and the thresholds applied
  (``parity_gates``, ``perplexity_gate``: verify's and compat's).
- ``checks``: the numerical comparisons (teacher-forced greedy check included); ``loading``: loading the
  candidate exactly as users do, and where both models run (``resolve_device``); ``hygiene``: the remote-code
  files' own checks (``without_repo``: the same rule inside the child processes, which start through it).
- ``usage``: the card's code; ``snippet``: that code run verbatim in a fresh process (``snippet_child``;
  ``card_snippet_gate`` for verify, ``check_card_snippet`` with each transformers environment's ``python``,
  ``check_card_snippet_on_hub``
  for a Hub revision).
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
    gate_title,
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
    "gate_title",
    "generate_text",
    "read_report",
    "verify_model",
]
