"""One typed error hierarchy for the whole pipeline.

Library code raises these; ``release/cli.py`` turns each into a single line on stderr and an exit code.
Every message says what is wrong and, where there is one, what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator


class ReleaseError(Exception):
    """Base class: an expected failure that the CLI reports as one line (exit code 1)."""

    exit_code = 1


class UsageError(ReleaseError):
    """The command was called wrongly (bad option value, bad version string). Exit code 2."""

    exit_code = 2


class SettingsError(UsageError):
    """``[tool.release]`` or a ``RELEASE_*`` variable holds a value that cannot be used."""


class CheckpointError(ReleaseError):
    """The training checkpoint cannot be read safely, or it is not a checkpoint of this model."""


class ConversionError(ReleaseError):
    """The checkpoint's tensors do not map onto the transformers model (missing/unexpected/misshapen keys)."""


class OutputExistsError(ReleaseError):
    """The output folder exists and is not empty; pass --force to replace it."""


class TokenizerError(ReleaseError):
    """The tokenizer cannot be loaded or does not fit the model."""


class ReportError(UsageError):
    """A ``verification.json`` cannot be read or is not a report of this schema (the message names the key)."""


class VerificationError(ReleaseError):
    """One or more verification gates failed. ``failures`` holds one line per failed gate."""

    def __init__(self, message: str, failures: list[str] | None = None):
        super().__init__(message)
        self.failures = list(failures or [])


class CardError(ReleaseError):
    """The model card cannot be rendered (missing value, malformed metrics, placeholder text left)."""


class ResourceError(ReleaseError):
    """Not enough free disk or memory for this checkpoint (found by the preflight, before any download)."""


class FetchError(ReleaseError):
    """The checkpoint artifact cannot be fetched or its hash does not match."""


class PublishError(ReleaseError):
    """Publishing to the Hub failed; nothing was tagged."""


class HubUnavailableError(PublishError):
    """The Hub could not be reached (5xx, 429, dropped connections) even after every retry; nothing is wrong with
    the release itself, and re-running completes it. ``rerun`` is the command to run again, when known."""

    rerun: str | None = None


class VersionConflictError(PublishError):
    """The version is already published with different content."""


class ConcurrentPushError(PublishError):
    """Someone else pushed to the target branch while this release was being committed."""


class CredentialsError(ReleaseError):
    """Hub credentials were asked for and could not be resolved (e.g. a failed OIDC exchange)."""


class CompatError(ReleaseError):
    """The compatibility matrix could not run, or a transformers version failed a gate."""


class IntegrityError(ReleaseError):
    """A release's integrity check failed: version vs tag, checksums, signature, or the build's digest."""


class EnvironmentProblem(ReleaseError):
    """The machine, not the release, stopped a command: a full disk, a read-only or forbidden output, offline
    mode, an unreachable server. The message names what to change."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from, in turn (a library may wrap the error that matters, e.g.
    huggingface_hub an upload's HTTP error in a plain RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def explain(exc: BaseException) -> ReleaseError:
    """An exception raised outside this hierarchy, as the one line a user can act on.

    The failures a machine causes (``OSError``, huggingface_hub's offline guard, a refused connection) become an
    ``EnvironmentProblem``; anything else is an internal error, reported with its type so that it can be filed.
    """
    import errno

    kind = type(exc).__name__
    if kind in ("ConnectError", "ConnectTimeout", "ConnectionError") or isinstance(exc, ConnectionError):
        return EnvironmentProblem(
            f"cannot connect ({exc}); check the network, HF_ENDPOINT, or the URI, then re-run"
        )
    if isinstance(exc, OSError) and exc.errno is not None:
        where = exc.filename or exc.filename2
        path = f" {where}" if where else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            from pathlib import Path
            from shutil import disk_usage

            if not where:
                return EnvironmentProblem(
                    "no space left on a device this command writes to: free up space or write elsewhere"
                )
            folder = next(p for p in [Path(where).parent, *Path(where).parents] if p.exists())
            return EnvironmentProblem(
                f"no space left on the device of {folder} ({disk_usage(folder).free:,} bytes free) while writing "
                f"{where}: free up space or write elsewhere"
            )
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return EnvironmentProblem(
                f"cannot write{path}: {exc.strerror.lower()}; choose an output folder you can write to"
            )
        return EnvironmentProblem(f"{exc.strerror or exc}{':' if path else ''}{path}")
    if kind == "OfflineModeIsEnabled":  # huggingface_hub's guard; named, not imported: it may not be loaded
        return EnvironmentProblem(
            f"{exc}; this needs the network: unset HF_HUB_OFFLINE, or pass a local path or file:// URI"
        )
    from release._io import first_line

    return ReleaseError(f"internal error: {kind}: {first_line(exc)} (re-run with --debug for the traceback)")
