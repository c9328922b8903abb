"""Declared dependency floors made true: install the lowest declared versions, run the pipeline on the demo.

A floor nobody installs is a guess. ``check_floors`` pins the named dependencies of ``[project].dependencies``
to their floors, lets uv resolve the others around them with the running torch (a bare ``torch`` from the
index is a multi-GB CUDA build, so a torch floor is checked by running this with that torch installed), and
runs ``release run --dry-run --stop-after card`` on the demo with that environment's Python and this source.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from release.compat.environments import (
    Environment,
    Installer,
    default_cache_dir,
    ensure_environment,
    python_tag,
    run_uv,
    torch_version,
)
from release.errors import SettingsError, UsageError
from release.settings import PROJECT, project_pyproject, read_toml
from release.verify.snippet import child_environment

STAMP = ".floors-environment.json"
RUN_TIMEOUT = 1800.0


def _requirements(pyproject: Path | None = None) -> list[str]:
    path = pyproject or project_pyproject()
    if path is None:
        raise SettingsError(
            f"cannot find {PROJECT}'s pyproject.toml: the floors are read from the source tree"
        )
    deps = read_toml(path).get("project", {}).get("dependencies", [])
    if not isinstance(deps, list) or not deps:
        raise SettingsError(f"{path} declares no [project].dependencies")
    return [str(d) for d in deps]


def declared_floors(pyproject: Path | None = None) -> dict[str, str]:
    """``{canonical name: lowest version}`` of every dependency declared with ``>=``."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    floors = {}
    for text in _requirements(pyproject):
        req = Requirement(text)
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if lows:
            floors[canonicalize_name(req.name)] = max(lows, key=Version)
    return floors


def floor_pins(lowest: Sequence[str], pyproject: Path | None = None) -> list[str]:
    """``["torch==2.4"]``: each of ``lowest`` pinned to its declared floor.

    Raises:
        UsageError: A name without a declared floor.
    """
    from packaging.utils import canonicalize_name

    floors = declared_floors(pyproject)
    names = [canonicalize_name(n) for n in lowest]
    unknown = sorted(set(names) - set(floors))
    if unknown:
        raise UsageError(
            f"{', '.join(unknown)}: not a dependency with a declared floor (known: {', '.join(sorted(floors))})"
        )
    return [f"{n}=={floors[n]}" for n in names]


def pinned_requirements(lowest: Sequence[str], pyproject: Path | None = None) -> list[str]:
    """The project's dependencies with each of ``lowest`` pinned to its floor, torch left out.

    Raises:
        UsageError: A name in ``lowest`` is not a dependency with a ``>=`` floor.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = dict(pin.split("==", 1) for pin in floor_pins(lowest, pyproject))
    out = []
    for text in _requirements(pyproject):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        marker = f"; {req.marker}" if req.marker else ""
        out.append(f"{req.name}=={pins[name]}{marker}" if name in pins else text)
    return out


@dataclass
class FloorsResult:
    """What ran: the pinned floors, the versions the child actually imported, and how it went."""

    floors: dict[str, str]
    versions: dict[str, str]
    passed: bool
    detail: str
    install_seconds: float
    run_seconds: float

    def summary_line(self) -> str:
        pins = ", ".join(f"{n}=={v}" for n, v in sorted(self.floors.items()))
        ran = ", ".join(f"{n} {v}" for n, v in sorted(self.versions.items()))
        state = "passed" if self.passed else "FAILED"
        return (
            f"floors {pins}: {state} ({self.detail}); ran with {ran} "
            f"[install {self.install_seconds:.1f}s, run {self.run_seconds:.1f}s]"
        )


def _install_project(source_root: Path, target: Path) -> None:
    """This project, built from ``source_root`` (so not wheels-only), without its dependencies, into ``target``."""
    run_uv(
        ["pip", "install", "--no-deps", "--target", str(target), str(source_root)],
        what=f"{PROJECT} from {source_root}",
        cache_dir=default_cache_dir(),
    )


def floors_environment(
    requirements: Sequence[str], *, cache_dir: Path, installer: Installer | None = None
) -> tuple[Environment, bool]:
    """(environment, reused) holding ``requirements`` and the running torch; cached by the requirement list,
    the Python and the torch.

    Raises:
        CompatError: uv failed, missed a pin or installed another torch.
    """
    key = hashlib.sha256(
        "\n".join([sys.version.split()[0], torch_version(), *requirements]).encode()
    ).hexdigest()[:16]
    target = Path(cache_dir) / f"floors-{key}-{python_tag()}"
    options = {"installer": installer} if installer is not None else {}
    return ensure_environment(target, requirements, cache_dir=Path(cache_dir), stamp=STAMP, **options)


def check_floors(
    lowest: Sequence[str],
    *,
    cache_dir: Path | None = None,
    pyproject: Path | None = None,
    installer: Installer | None = None,
    project_installer: Callable[[Path, Path], None] | None = None,
    run: Callable[[list[str], dict[str, str], Path], subprocess.CompletedProcess] | None = None,
) -> FloorsResult:
    """Install the floors of ``lowest`` (e.g. ``["huggingface_hub"]``) and run the demo pipeline on them.

    Raises:
        UsageError: A name without a declared floor, or a torch floor that is not the running torch.
        CompatError: The environment cannot be installed, or uv did not honour a pin.
    """
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    names = sorted({canonicalize_name(n) for n in lowest})
    if not names:
        raise UsageError(
            "name at least one dependency to install at its floor, e.g. --lowest huggingface_hub"
        )
    floors = declared_floors(pyproject)
    pins = {n: floors[n] for n in names if n in floors}
    if "torch" in names and "torch" in floors:
        running = torch_version().split("+")[0]
        if Version(running) != Version(floors["torch"]):
            raise UsageError(
                f"the torch floor is {floors['torch']} but this is torch {running}; install torch=={floors['torch']} "
                "(CPU build) first, then run this again"
            )
    requirements = pinned_requirements(names, pyproject)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    start = time.monotonic()
    environment, _ = floors_environment(requirements, cache_dir=cache, installer=installer)
    installed_at = time.monotonic()
    got = {canonicalize_name(name): version for name, version in environment.packages.items()}
    source_root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="release-floors-") as tmp:
        work = Path(tmp)
        # This source tree as pip installs it (templates/ becomes release/templates), without dependencies:
        # the code under test, built fresh each time, on PYTHONPATH; the rest is the floors environment's.
        project = work / "project"
        (project_installer or _install_project)(source_root, project)
        env = child_environment(work / "hf", {"PYTHONPATH": str(project)})
        env = {k: v for k, v in env.items() if not k.startswith("RELEASE_")}
        # In the source tree, so its [tool.release] settings apply; -P keeps the cwd off sys.path, so the
        # installed copy (with release/templates) is imported, not the tree's.
        cmd_run = [
            str(environment.python), "-P", "-m", "release", "run", "--dry-run", "--stop-after", "card",
            "--version", "v0.0.0-floors", "--dist-dir", str(work / "dist"),
        ]  # fmt: skip
        proc = (run or _run)(cmd_run, env, source_root)
    done = time.monotonic()
    if proc.returncode == 0:
        detail = "the demo pipeline ran fetch -> convert -> verify -> card"
    else:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        failed = [ln for ln in lines if ln.startswith("FAILED:")]  # the gates that failed, one line each
        detail = f"release run exited {proc.returncode}: " + (
            "; ".join([*failed, lines[-1]]) if lines else "no output"
        )
    return FloorsResult(
        floors=pins,
        versions={
            n: got[n] for n in sorted({"huggingface-hub", "transformers", "torch", *names}) if n in got
        },
        passed=proc.returncode == 0,
        detail=detail,
        install_seconds=installed_at - start,
        run_seconds=done - installed_at,
    )


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {RUN_TIMEOUT:.0f}s")
