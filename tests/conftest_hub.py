"""Pytest plugin: one Hub emulator per test session, and the client environment that points at it.

huggingface_hub reads `HF_ENDPOINT` (and its cache paths) once, when it is first imported. So this plugin
starts the emulator on a free port in `pytest_configure`, before any test module is collected, and exports
the client environment into `os.environ` for the whole session:

    HF_ENDPOINT=<emulator url>  HF_HUB_DISABLE_XET=1  HF_HOME=<session temp dir>  HF_HUB_DISABLE_TELEMETRY=1
    HF_HUB_DISABLE_PROGRESS_BARS=1  HF_HUB_ETAG_TIMEOUT=5  HF_HUB_DOWNLOAD_TIMEOUT=10  NO_PROXY+=127.0.0.1

and removes anything that could leak a real token or cache into tests (`HF_TOKEN`, `HF_OIDC_*`, `HF_HUB_CACHE`,
`HF_HUB_OFFLINE`, ...). Importing huggingface_hub or transformers before this plugin is configured (e.g. at the
top of conftest.py) is a usage error: the client would talk to https://huggingface.co.

Fixtures:
    hub                 the session's `HubEmulator`, emptied before and after each test (fresh world per test);
                        also gives the test a fresh HF_HOME (see `hf_home`). Fails the test if the emulator hit
                        an internal error.
    hf_home             a fresh HF_HOME for this test, in os.environ and in the constants huggingface_hub and
                        transformers copied at import time, so downloads never come from another test's cache.
    hub_token           a random canary token, exported as HF_TOKEN for this test.
    hf_backoff_sleeps   makes huggingface_hub's own retry back-off instant; the list of requested sleeps.
    hub_subprocess_env  `hub_env(tmp_path)`: the environment a child process needs to use the emulator.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub_emulator import HubEmulator

# Variables that would make the client use a real token, a shared cache, or no network at all.
_CLIENT_ENV_REMOVED = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_OIDC_RESOURCE",
    "HF_OIDC_ID_TOKEN",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_MODULES_CACHE",
    "TRANSFORMERS_CACHE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HF_DEBUG",
)
_CACHE_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE", "HF_MODULES_CACHE")


class _Session:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="hub-emulator-hf-home-"))
        self.emulator = HubEmulator().start()
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
        self.client_env = {
            "HF_ENDPOINT": self.emulator.url,
            "HF_HOME": str(self.home),
            "HF_HUB_DISABLE_XET": "1",  # Xet uploads need a separate storage service the emulator doesn't provide
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
            "HF_HUB_DISABLE_EXPERIMENTAL_WARNING": "1",
            "HF_HUB_ETAG_TIMEOUT": "5",  # the emulator answers at once; fail fast rather than hang
            "HF_HUB_DOWNLOAD_TIMEOUT": "10",
            "NO_PROXY": no_proxy,  # httpx honours HTTP(S)_PROXY; never send 127.0.0.1 through a proxy
            "no_proxy": no_proxy,
        }
        self.saved_env = {name: os.environ.get(name) for name in (*_CLIENT_ENV_REMOVED, *self.client_env)}

    def apply(self) -> None:
        for name in _CLIENT_ENV_REMOVED:
            os.environ.pop(name, None)
        os.environ.update(self.client_env)

    def close(self) -> None:
        self.emulator.stop()
        for name, value in self.saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(self.home, ignore_errors=True)


_SESSION: _Session | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION
    if _SESSION is not None:
        return
    early = [name for name in ("huggingface_hub", "transformers") if name in sys.modules]
    if early:
        raise pytest.UsageError(
            f"{' and '.join(early)} was imported before tests.conftest_hub set HF_ENDPOINT; it would talk to the"
            " real Hub. Import it inside tests or fixtures, not at the top of conftest.py or a plugin."
        )
    _SESSION = _Session()
    _SESSION.apply()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _SESSION
    if _SESSION is not None:
        _SESSION.close()
        _SESSION = None


def hub_env(tmp_path: Path, *, token: str | None = None) -> dict[str, str]:
    """The environment for a child process that should use the session's emulator.

    A copy of `os.environ` (so a `hub_token` set with monkeypatch is included) with a fresh HF_HOME under
    `tmp_path`, so the child neither reads nor pollutes the parent's cache. Pass `token` to set HF_TOKEN.
    """
    if _SESSION is None:
        raise RuntimeError("The tests.conftest_hub plugin is not active: no Hub emulator is running.")
    env = {**os.environ, **_SESSION.client_env}
    for name in _CACHE_ENV:
        env.pop(name, None)
    home = Path(tmp_path) / "hf_home_subprocess"
    home.mkdir(parents=True, exist_ok=True)
    env["HF_HOME"] = str(home)
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _point_hf_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Make HF_HOME `home` for this process, including values huggingface_hub/transformers froze at import."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HOME", str(home))
    paths = {
        "HF_HOME": home,
        "default_cache_path": home / "hub",
        "HUGGINGFACE_HUB_CACHE": home / "hub",
        "HF_HUB_CACHE": home / "hub",
        "default_assets_cache_path": home / "assets",
        "HUGGINGFACE_ASSETS_CACHE": home / "assets",
        "HF_ASSETS_CACHE": home / "assets",
        "default_xet_cache_path": home / "xet",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
        "HF_STORED_TOKENS_PATH": home / "stored_tokens",
        "CHECK_FOR_UPDATE_DONE_PATH": home / ".check_for_update_done",
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": home / ".check_for_skill_update_done",
        "AGENT_HARNESSES_PATH": home / ".agent_harnesses.json",
    }
    for name, path in paths.items():
        if hasattr(constants, name):  # older clients lack some of these
            monkeypatch.setattr(constants, name, str(path))
    # Modules that did `from ..constants import X` (or computed a path from HF_HOME) at import time.
    copies = [
        ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", home / "assets"),
        ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", home / "hub"),
        ("transformers.utils.hub", "HF_MODULES_CACHE", home / "modules"),
        ("transformers.utils", "HF_MODULES_CACHE", home / "modules"),
        ("transformers.dynamic_module_utils", "HF_MODULES_CACHE", home / "modules"),
        ("transformers.file_utils", "HF_MODULES_CACHE", home / "modules"),
    ]
    for module_name, name, path in copies:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, name):
            monkeypatch.setattr(module, name, str(path))


@pytest.fixture(scope="session")
def hub_session() -> HubEmulator:
    """The session's emulator without any per-test reset; prefer `hub`."""
    if _SESSION is None:
        raise RuntimeError("The tests.conftest_hub plugin is not active: no Hub emulator is running.")
    return _SESSION.emulator


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf_home"
    home.mkdir()
    _point_hf_home(monkeypatch, home)
    return home


@pytest.fixture
def hub(hub_session: HubEmulator, hf_home: Path) -> Iterator[HubEmulator]:
    hub_session.reset()
    yield hub_session
    errors = list(hub_session.internal_errors)
    hub_session.reset()
    if errors:
        pytest.fail("The Hub emulator hit internal errors:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def hub_token(monkeypatch: pytest.MonkeyPatch) -> str:
    token = f"hf_canary{secrets.token_hex(16)}"
    monkeypatch.setenv("HF_TOKEN", token)
    return token


class _RecordingTime:
    """Stands in for the `time` module inside huggingface_hub: `sleep` only records its argument."""

    def __init__(self, sleeps: list[float]) -> None:
        self._sleeps = sleeps

    def sleep(self, seconds: float) -> None:
        self._sleeps.append(seconds)

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.fixture
def hf_backoff_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Skip huggingface_hub's retry back-off sleeps (1 s, 2 s, 4 s, ...) and record them instead."""
    import huggingface_hub.file_download
    import huggingface_hub.utils._http

    sleeps: list[float] = []
    for module in (huggingface_hub.utils._http, huggingface_hub.file_download):
        monkeypatch.setattr(module, "time", _RecordingTime(sleeps))
    return sleeps


@pytest.fixture
def hub_subprocess_env(hub: HubEmulator, tmp_path: Path) -> dict[str, str]:
    return hub_env(tmp_path)
