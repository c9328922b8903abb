"""The transformers versions on the package index: every minor's newest patch, and the newest pre-release.

Read from the index's PEP 691 JSON API (every file with its ``yanked`` flag and ``requires-python``) with
huggingface_hub's HTTP client: pip has no stable machine-readable "which versions exist" command.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from release.errors import CompatError

DEFAULT_INDEX_URL = "https://pypi.org/simple/"
ACCEPT = "application/vnd.pypi.simple.v1+json"
INDEX_TIMEOUT = 60.0


def fetch_project_page(package: str, *, url: str | None = None) -> dict[str, Any]:
    """The index's PEP 691 JSON page of ``package`` (``{"files": [...], ...}``).

    Raises:
        CompatError: The index cannot be reached or does not answer with the JSON API.
    """
    from packaging.utils import canonicalize_name

    base = (url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL).rstrip("/")  # what pip would ask
    page = f"{base}/{canonicalize_name(package)}/"
    from huggingface_hub.utils import http_backoff

    try:  # huggingface_hub's HTTP client, with its retries on 5xx, 429 and dropped connections
        response = http_backoff("GET", page, headers={"Accept": ACCEPT}, timeout=INDEX_TIMEOUT, max_retries=3)
        response.raise_for_status()
    except Exception as exc:  # httpx's transport and status errors
        raise CompatError(
            f"cannot list {package} versions from {page}: {exc}; check the network or set PIP_INDEX_URL"
        ) from exc
    kind, body = response.headers.get("Content-Type", ""), response.content
    if ACCEPT not in kind:
        raise CompatError(f"{page} did not answer with the simple JSON API ({kind or 'no content type'})")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise CompatError(f"{page} answered with invalid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise CompatError(f"{page} answered without a 'files' list")
    return data


def available_versions(
    page: Mapping[str, Any], *, python: str | None = None, include_pre: bool = False
) -> list[str]:
    """Versions with an installable wheel (the matrix installs wheels only): not yanked, ``requires-python``
    accepting ``python``. Pre-releases and dev releases only with ``include_pre``. Oldest first."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    from packaging.version import Version

    python = python or ".".join(map(str, sys.version_info[:3]))
    found: set[Version] = set()
    for entry in page.get("files", []):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("filename"), str):
            continue
        if entry.get("yanked") not in (None, False):  # True or the yank reason (a string)
            continue
        try:
            _, version, _, _ = parse_wheel_filename(entry["filename"])
        except InvalidWheelFilename:
            continue  # an sdist or a malformed name
        requires = entry.get("requires-python")
        if requires:
            try:
                if python not in SpecifierSet(requires):
                    continue
            except InvalidSpecifier:
                continue
        if (version.is_prerelease or version.is_devrelease) and not include_pre:
            continue
        found.add(version)
    return [str(v) for v in sorted(found)]


def newest_patch_per_minor(versions: Sequence[str], *, range_spec: str) -> list[str]:
    """The newest final release of every ``X.Y`` line inside ``range_spec``, oldest first.

    >>> newest_patch_per_minor(["4.45.2", "4.46.2", "4.46.3", "5.0.0", "5.1.0rc1"], range_spec=">=4.46,<6")
    ['4.46.3', '5.0.0']
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    spec = SpecifierSet(range_spec)
    finals = sorted(
        v for v in map(Version, versions) if not (v.is_prerelease or v.is_devrelease) and v in spec
    )
    newest = {(v.major, v.minor): v for v in finals}  # oldest first, so each line keeps its newest
    return [str(v) for v in newest.values()]


def newest_prerelease(versions: Sequence[str]) -> str | None:
    """The newest pre-release newer than every final release (what users of ``pip --pre`` get next), or None."""
    from packaging.version import Version

    parsed = sorted(Version(v) for v in versions)
    finals = [v for v in parsed if not (v.is_prerelease or v.is_devrelease)]
    pres = [v for v in parsed if v.is_prerelease and (not finals or v > finals[-1])]
    return str(pres[-1]) if pres else None


def all_minor_versions(
    *, range_spec: str, page: Mapping[str, Any] | None = None, python: str | None = None
) -> list[str]:
    """``release compat --all-minors``: the newest patch of every transformers minor the range allows.

    Raises:
        CompatError: The index cannot be read, or it lists no release inside the range.
    """
    page = page if page is not None else fetch_project_page("transformers")
    versions = newest_patch_per_minor(available_versions(page, python=python), range_spec=range_spec)
    if not versions:
        raise CompatError(f"the package index lists no transformers release inside {range_spec}")
    return versions
