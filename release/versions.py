"""Release versions: git-style tags ``vMAJOR.MINOR.PATCH`` with an optional semver prerelease (``-rc.1``).

Parsed before any network call, so a malformed version never reaches the Hub. The version decides where a
release lands: a stable release moves ``main`` and is tagged there; a prerelease gets its own branch
(``release/<tag>``) and never touches ``main``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from release.errors import UsageError

# semver 2.0.0 core and prerelease, with the leading "v" that git tags use. Build metadata (+...) is refused:
# the Hub tag must be the whole identity of the release.
_NUMBER = r"0|[1-9]\d*"
_PRERELEASE_IDENTIFIER = r"0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*"
_VERSION = re.compile(
    rf"v(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
    rf"(?:-(?P<prerelease>(?:{_PRERELEASE_IDENTIFIER})(?:\.(?:{_PRERELEASE_IDENTIFIER}))*))?"
)

STAGING_BRANCH_PREFIX = "release-staging/"  # scratch branches where a release is verified before it is tagged
PRERELEASE_BRANCH_PREFIX = "release/"  # where a prerelease lives; it is tagged there


@dataclass(frozen=True)
class Version:
    """A parsed release version. ``str(version)`` is the tag, e.g. ``v1.2.0-rc.1``."""

    major: int
    minor: int
    patch: int
    prerelease: str | None = None  # e.g. "rc.1"; None for a stable release

    def __str__(self) -> str:
        core = f"v{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{self.prerelease}" if self.prerelease else core

    @property
    def tag(self) -> str:
        """The Hub tag users pin with ``revision=``."""
        return str(self)

    @property
    def is_prerelease(self) -> bool:
        return self.prerelease is not None

    @property
    def branch(self) -> str:
        """The branch the release is committed to: ``main`` for stable, ``release/<tag>`` for a prerelease."""
        return f"{PRERELEASE_BRANCH_PREFIX}{self.tag}" if self.is_prerelease else "main"

    @property
    def staging_branch(self) -> str:
        """Scratch branch holding the candidate commit while it is checked; deleted at the end."""
        return f"{STAGING_BRANCH_PREFIX}{self.tag}"


def parse_version(text: str) -> Version:
    """Parse ``vMAJOR.MINOR.PATCH[-PRERELEASE]``.

    Args:
        text: The version as given on the command line, e.g. ``v1.2.0`` or ``v1.2.0-rc.1``.

    Raises:
        UsageError: Anything else: no leading ``v``, leading zeros, build metadata, whitespace, ...
    """
    match = _VERSION.fullmatch(text)
    if match is None:
        raise UsageError(
            f"invalid version {text!r}: expected vMAJOR.MINOR.PATCH with an optional semver prerelease, "
            "e.g. v1.2.0 or v1.2.0-rc.1"
        )
    return Version(*map(int, match.group("major", "minor", "patch")), prerelease=match["prerelease"])
