"""verify: a converted folder (or Hub revision) against the training module -> a typed ``VerificationReport``.

- ``runner``: ``verify_model`` (every gate), ``check_generation_against_report`` (publish's post-upload gate),
  ``generate_text`` (a person's quick look).
- ``report``: the schema of ``verification.json`` (``VerificationReport``, ``GateResult``, ``Gates``).
- ``checks``: the numerical comparisons; ``loading``: loading the candidate exactly as users do;
  ``hygiene``: the remote-code files' own checks.
"""

from release.verify.report import GateResult, Gates, VerificationReport, read_report
from release.verify.runner import (
    check_generation_against_report,
    default_report_path,
    generate_text,
    verify_model,
)

__all__ = [
    "GateResult",
    "Gates",
    "VerificationReport",
    "check_generation_against_report",
    "default_report_path",
    "generate_text",
    "read_report",
    "verify_model",
]
