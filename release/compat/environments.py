"""Real, isolated Python environments: one virtual environment per requirement set, built with uv.

Each holds what uv resolves for its requirements plus the running torch's own wheel, and nothing of this
interpreter's site-packages (its children run ``python -E -P``). All share one uv cache that uv hardlinks
from, so the next one costs seconds and a few MB (``environment_disk``). A stamp written before the folder is
renamed into place marks a finished one (``install_once``); the venv is relocatable so the rename is safe.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from release.errors import CompatError
from release.settings import PROJECT

INSTALL_TIMEOUT = 1800.0  # seconds for one environment's resolution, downloads and install
UV_CACHE = "uv-cache"  # below the cache folder: on the environments' filesystem, so uv can hardlink


def default_cache_dir() -> Path:
    """The environments' cache (``release.settings.cache_dir``)."""
    from release.settings import cache_dir

    return cache_dir("compat")


def python_tag() -> str:
    """``py311``: wheels are built per Python version, so every environment's name includes it."""
    return f"py{sys.version_info.major}{sys.version_info.minor}"


def torch_version() -> str:
    """The running torch's version (``2.13.0+cpu``), from its metadata: torch itself is not imported."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        raise CompatError("torch is not installed here; the environments install the running torch") from None


@dataclass(frozen=True)
class Environment:
    """A virtual environment: its folder and the packages installed there (name -> version)."""

    root: Path
    packages: dict[str, str] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def uv_binary() -> str:
    """The ``uv`` executable of the ``uv`` package (a dependency of this project).

    Raises:
        CompatError: The package or its executable is missing.
    """
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        raise CompatError(
            f"uv is not installed here; install {PROJECT} with its dependencies (pip install uv)"
        ) from None


def _run_installer(cmd: Sequence[str], timeout_error: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise CompatError(f"{timeout_error} within {INSTALL_TIMEOUT:.0f}s") from None


def run_uv(args: Sequence[str], *, what: str, cache_dir: Path) -> None:
    """``uv <args>`` with the shared cache, no user uv config; one line naming ``what`` on failure.

    Raises:
        CompatError: uv failed or timed out.
    """
    cmd = [uv_binary(), *args, "--no-config", "--quiet", "--cache-dir", str(Path(cache_dir) / UV_CACHE)]
    proc = _run_installer(cmd, f"uv did not install {what}")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        tail = " | ".join(lines[-3:]) or f"exit code {proc.returncode}"
        raise CompatError(f"uv could not install {what}: {tail}")


@functools.cache
def torch_requirement() -> str:
    """``torch @ <url>``: the wheel of the running torch, where pip finds it with this machine's pip settings
    (a bare ``torch`` from the index could be another build, a multi-GB CUDA one).

    Raises:
        CompatError: pip finds no wheel of that torch.
    """
    version = torch_version()
    cmd = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet",
        "--disable-pip-version-check", "--only-binary", ":all:", "--report", "-", f"torch=={version}",
    ]  # fmt: skip
    proc = _run_installer(cmd, f"pip did not find the running torch {version}")
    try:
        url = json.loads(proc.stdout)["install"][0]["download_info"]["url"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING:")]
        raise CompatError(
            f"pip finds no wheel of the running torch {version} for the environments"
            + (f": {lines[-1]}" if lines else "")
            + "; tell pip where it came from (PIP_EXTRA_INDEX_URL, e.g. PyTorch's CPU index, or PIP_FIND_LINKS)"
        ) from None
    return f"torch @ {url}"


def build_environment(target: Path, requirements: Sequence[str], *, cache_dir: Path, what: str) -> None:
    """A fresh virtual environment at ``target`` (this Python) with ``requirements`` installed, wheels only."""
    run_uv(
        ["venv", "--relocatable", "--python", sys.executable, str(target)],
        what=f"a virtual environment for {what}",
        cache_dir=cache_dir,
    )
    if requirements:
        # uv reads its own settings (UV_INDEX_URL, ...), not pip's; PIP_INDEX_URL is the index
        # release.compat.index lists the versions from, so the environments install from it too.
        url = os.environ.get("PIP_INDEX_URL")
        run_uv(
            [
                "pip", "install", "--python", str(Environment(target).python), "--link-mode", "hardlink",
                "--only-binary", ":all:", *(["--index-url", url] if url else []), *requirements,
            ],
            what=what,
            cache_dir=cache_dir,
        )  # fmt: skip


def installed_packages(env_dir: Path) -> dict[str, str]:
    """``{name: version}`` of every distribution in ``env_dir``'s site-packages."""
    sites = [*sorted(Path(env_dir).glob("lib/python*/site-packages")), Path(env_dir) / "Lib/site-packages"]
    found = {d.metadata["Name"]: d.version for d in metadata.distributions(path=[str(s) for s in sites])}
    return dict(sorted(found.items()))


def install_once(target: Path, build: Callable[[Path], dict[str, Any]], *, stamp: str) -> bool:
    """Fill ``target`` once: ``build(staging)`` installs into a fresh folder and returns the stamp's content,
    written last before the folder is renamed into place. True when ``target`` was already complete."""
    if (target / stamp).is_file():
        return True
    if target.exists():  # never produced by the rename below; a leftover of an interrupted copy by hand
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        content = build(staging)
        (staging / stamp).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / stamp).is_file():  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return False


Installer = Callable[[Sequence[str], Path, Path], None]  # (requirements, target, cache_dir)


def _uv_installer(requirements: Sequence[str], target: Path, cache_dir: Path) -> None:
    build_environment(target, requirements, cache_dir=cache_dir, what=" ".join(requirements))


def ensure_environment(
    target: Path,
    requirements: Sequence[str],
    *,
    cache_dir: Path,
    stamp: str,
    stamp_fields: Mapping[str, Any] | None = None,
    installer: Installer = _uv_installer,
) -> tuple[Environment, bool]:
    """(environment, reused): ``requirements`` and the running torch in a virtual environment at ``target``,
    built once and cached.

    Raises:
        CompatError: uv failed, or it installed another version than a ``name==version`` requirement pins, or
            another torch than the running one. Nothing is cached then.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    wanted_torch = torch_version()

    def build(staging: Path) -> dict[str, Any]:
        installer([*requirements, torch_requirement()], staging, cache_dir)
        packages = installed_packages(staging)
        if packages.get("torch") != wanted_torch:
            raise CompatError(
                f"the environment for {' '.join(requirements)} got torch {packages.get('torch', 'none')}, "
                f"not the running {wanted_torch}"
            )
        got = {canonicalize_name(name): version for name, version in packages.items()}
        for text in requirements:
            req = Requirement(text)
            pins = [s.version for s in req.specifier if s.operator == "=="]
            name = canonicalize_name(req.name)
            if pins and (name not in got or Version(got[name]) != Version(pins[0])):
                raise CompatError(f"uv installed {name} {got.get(name, 'nothing')}, not {pins[0]}")
        return {
            **(stamp_fields or {}),
            "python": sys.version.split()[0],
            "requirements": list(requirements),
            "packages": packages,
        }

    reused = install_once(target, build, stamp=stamp)
    content = json.loads((target / stamp).read_text(encoding="utf-8"))
    return Environment(target, dict(content.get("packages", {}))), reused


@dataclass(frozen=True)
class EnvironmentDisk:
    """An environment's size: every file (``total_bytes``: what a copy would cost) and the files it alone holds
    (``unique_bytes``; the rest are hardlinks into uv's cache, shared by every environment that needs them)."""

    total_bytes: int
    unique_bytes: int


def environment_disk(env_dir: Path) -> EnvironmentDisk:
    """What ``env_dir`` costs on disk; files hardlinked elsewhere (uv's cache) count in ``total`` only."""
    total = unique = 0
    for path in Path(env_dir).rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            total += st.st_size
            if st.st_nlink == 1:
                unique += st.st_size
    return EnvironmentDisk(total_bytes=total, unique_bytes=unique)
