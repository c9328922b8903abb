"""Retry with exponential back-off and jitter for Hub calls that fail transiently.

Transient: HTTP 5xx, 408 and 429 (honouring ``Retry-After``), and transport failures (refused or dropped
connections, timeouts, a server that closed the socket mid-response). Everything else, 4xx in particular, is
final and raised at once. ``call_with_retry`` is only for calls that are safe to repeat (reads, ref
operations whose outcome the caller re-checks); a commit needs more care, see ``release.publish.publisher``.

The HTTP error types are huggingface_hub's: ``HfHubHTTPError`` for an answer with a status, and for transport
failures the exceptions of the HTTP client it is built on, which it exports under the stable name
``huggingface_hub.utils.httpx`` (httpx2 in huggingface_hub 2.x). Importing that export rather than a client by
name keeps this module right whichever client the installed huggingface_hub uses. huggingface_hub's own
``http_backoff`` retries single requests; it cannot retry a whole ``snapshot_download`` or re-check a ref
operation whose response was lost, which is why this small policy exists.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from release._io import first_line
from release.auth import redact

logger = logging.getLogger("release.publish")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. The defaults ride out a Hub hiccup of about a minute."""

    attempts: int = 5  # total tries, the first one included
    base_delay: float = 2.0  # seconds before the first retry; doubles each time
    max_delay: float = 30.0  # cap for one wait (also for a server's Retry-After)
    jitter: float = 0.25  # each wait is scaled by a random factor in [1 - jitter, 1 + jitter]
    sleep: Callable[[float], None] = time.sleep  # replaced in tests

    def delay(self, retry_number: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based)."""
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        delay = min(self.max_delay, self.base_delay * 2 ** (retry_number - 1))
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)  # jitter, not cryptography

    def patient(self) -> RetryPolicy:
        """Twice the attempts, same waits: for cleanup that must not give up at the first bad minute.

        Still bounded: at most ``(2 * attempts - 1) * max_delay * (1 + jitter)`` seconds of waiting (about
        three minutes with the defaults).
        """
        return replace(self, attempts=2 * self.attempts)

    def max_wait(self) -> float:
        """The longest this policy can wait in total between its attempts, in seconds."""
        return sum(
            min(self.max_delay, self.base_delay * 2 ** (n - 1)) * (1 + self.jitter)
            for n in range(1, self.attempts)
        )


NO_RETRY = RetryPolicy(attempts=1)


def _causes(exc: BaseException):
    """``exc`` and what it was raised from: huggingface_hub wraps upload errors in a plain RuntimeError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_cause(exc: BaseException) -> BaseException | None:
    """The first HTTP or transport error in ``exc``'s chain (``exc`` itself first), if any."""
    from huggingface_hub.utils import httpx  # the HTTP client huggingface_hub is built on (httpx2 in 2.x)

    return next((e for e in _causes(exc) if isinstance(e, httpx.HTTPError)), None)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a huggingface_hub error (also when wrapped), or None."""
    cause = _http_cause(exc)
    status = getattr(getattr(cause, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: 5xx, 408, 429 and dropped/refused/timed-out connections."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import httpx

    if any(isinstance(e, OfflineModeIsEnabled) for e in _causes(exc)):
        return False
    cause = _http_cause(exc)
    if isinstance(cause, HfHubHTTPError):
        status = http_status(cause)
        return status is not None and (status >= 500 or status in (408, 429))
    # The transport failures huggingface_hub's own http_backoff retries by default.
    return isinstance(cause, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's ``Retry-After`` (seconds form) on a 429/503, if any."""
    response = getattr(_http_cause(exc), "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def describe(exc: BaseException) -> str:
    """One redacted line for logs and messages: the error, its HTTP status, and the HTTP cause if wrapped."""
    text = first_line(exc)
    cause = _http_cause(exc)
    if cause is not None and cause is not exc:
        text = f"{text} ({first_line(cause)})"
    status = http_status(exc)
    if status is not None and str(status) not in text:
        text = f"HTTP {status}: {text}"
    return redact(text)


def call_with_retry(func: Callable[[], T], *, what: str, policy: RetryPolicy) -> T:
    """Call ``func`` until it succeeds, a non-transient error occurs, or ``policy.attempts`` are used up.

    Args:
        func: The call, without arguments (use a lambda or functools.partial).
        what: What the call does, for the log ("list refs of org/model").
        policy: Attempts and delays.

    Raises:
        Whatever ``func`` raised last: immediately if not transient, after the last attempt otherwise.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return func()
        except Exception as exc:
            if not is_transient(exc) or attempt == policy.attempts:
                raise
            wait = policy.delay(attempt, retry_after=retry_after_seconds(exc))
            logger.warning(
                "%s failed (%s); retrying in %.1fs (attempt %d of %d)",
                what,
                describe(exc),
                wait,
                attempt + 1,
                policy.attempts,
            )
            policy.sleep(wait)
    raise AssertionError("unreachable")  # the loop either returns or raises
