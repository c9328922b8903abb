"""compat: the verification's checks on each transformers version, each in its own isolated environment.

matrix.py runs the versions; index.py finds them on the package index; run.py is ``release compat``;
canary.py re-checks a published Hub revision and keeps its one issue; floors.py proves the dependency floors.
"""

from release.compat.matrix import (
    CompatReport,
    VersionResult,
    merge_into_report,
    parse_versions,
    reference_from_report,
    run_compat_matrix,
)
from release.compat.run import CompatRun, run_compat

__all__ = [
    "CompatReport",
    "CompatRun",
    "VersionResult",
    "merge_into_report",
    "parse_versions",
    "reference_from_report",
    "run_compat",
    "run_compat_matrix",
]
