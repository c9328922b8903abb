"""compat: the verification's checks on each transformers version, each in its own isolated environment.

matrix.py runs the versions; environments.py builds each one's virtual environment (uv, one hardlinked cache);
child.py is the check run inside one (started by path: the environment does not have this project); index.py
finds the versions on the package index; run.py is ``release compat``; canary.py re-checks a published Hub
revision and keeps its one issue; floors.py proves the dependency floors in an environment of the same kind.
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
