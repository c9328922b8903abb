"""compat: the verification's checks on each transformers version, each in its own isolated environment.

matrix.py runs the versions in environments.py's uv environments, where child.py (started by path) checks one;
index.py lists the versions on the package index; run.py is ``release compat``; canary.py re-checks a
published Hub revision and keeps its one issue; floors.py proves the dependency floors.
"""

from release.compat.matrix import (
    CompatReport,
    VersionResult,
    parse_versions,
    reference_from_report,
    run_compat_matrix,
)
from release.compat.run import CompatRun, run_compat

__all__ = [
    "CompatReport",
    "CompatRun",
    "VersionResult",
    "parse_versions",
    "reference_from_report",
    "run_compat",
    "run_compat_matrix",
]
