"""compat: the verification's checks on each transformers version, each in its own isolated environment."""

from release.compat.matrix import merge_into_report, parse_versions, run_compat_matrix

__all__ = ["merge_into_report", "parse_versions", "run_compat_matrix"]
