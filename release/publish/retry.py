"""Retry with exponential back-off and jitter for Hub calls that fail transiently.

Transient: HTTP 5xx, 408 and 429, transport failures, and the same failures of the transfer layer (``hf_xet``,
which raises ``ConnectionError``, ``TimeoutError`` or a ``RuntimeError`` such as "CAS service error ...", never
an HTTP error); everything else is final. ``call_with_retry`` is only for calls that are safe to repeat; a
commit needs more care (``release.publish.publisher``). huggingface_hub's own ``http_backoff`` retries single
requests, not a whole ``snapshot_download`` or a ref operation whose lost response must be re-checked.

A wait the server asks for (``RateLimit: "api";r=0;t=N`` on a 429, or ``Retry-After``) is honoured in full,
because retrying inside a rate-limit window only burns attempts; every wait comes out of one budget per policy
(shared by the calls of one publish), and a wait the budget cannot cover fails at once with one line.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from release._io import first_line
from release.auth import redact
from release.errors import HubUnavailableError, causes

logger = logging.getLogger("release.publish")

T = TypeVar("T")


@dataclass
class WaitBudget:
    """Seconds of waiting left to the calls that share it (one publish); taken from as each wait starts."""

    total: float
    left: float


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. The defaults ride out a Hub hiccup of about a minute."""

    attempts: int = 5  # total tries, the first one included
    base_delay: float = 2.0  # seconds before the first retry; doubles each time
    max_delay: float = 30.0  # cap for one back-off wait (a wait the server asks for is not capped)
    jitter: float = 0.25  # each wait is scaled by a random factor in [1 - jitter, 1 + jitter]
    sleep: Callable[[float], None] = time.sleep  # replaced in tests
    # Total seconds of waiting for every call sharing this policy: room for one rate-limit window of the Hub
    # (300 s) and the back-off around it. ``patient()`` copies share it.
    wait_budget: float = 600.0
    budget: WaitBudget = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.budget is None:
            object.__setattr__(self, "budget", WaitBudget(self.wait_budget, self.wait_budget))

    def patient(self) -> RetryPolicy:
        """Twice the attempts, same waits: for cleanup that must not give up at the first bad minute.

        Still bounded: at most ``(2 * attempts - 1) * max_delay * (1 + jitter)`` seconds of back-off (about
        three minutes with the defaults), and never more than the shared budget has left.
        """
        return replace(self, attempts=2 * self.attempts, budget=self.budget)


def _http_cause(exc: BaseException) -> BaseException | None:
    """The first HTTP or transport error in ``exc``'s chain (``exc`` itself first), if any."""
    from huggingface_hub.utils import httpx  # the HTTP client huggingface_hub is built on (httpx2 in 2.x)

    return next((e for e in causes(exc) if isinstance(e, httpx.HTTPError)), None)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a huggingface_hub error (also when wrapped), or None."""
    cause = _http_cause(exc)
    status = getattr(getattr(cause, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


# How the transfer layer words a failure of the network or of the storage service behind it (hf_xet's
# RuntimeError carries no type of its own): anything else it raises (a hash mismatch, a bad file) is final.
_TRANSFER_FAILURE = re.compile(
    r"CAS service error|Reqwest|request failed|connection|network|timed? ?out|temporar|unavailable|"
    r"too many requests|rate limit|presigned url expired|\b(?:5\d\d|429|408)\b",
    re.IGNORECASE,
)


def _transfer_cause(exc: BaseException) -> BaseException | None:
    """The first transient failure of the transfer layer in ``exc``'s chain, if any (none for an HTTP one)."""
    final = _final_transfer_errors()
    for e in causes(exc):
        if isinstance(e, final):
            return None
        if isinstance(e, (ConnectionError, TimeoutError)):
            return e
        if type(e) is RuntimeError and _TRANSFER_FAILURE.search(str(e)):
            return e
    return None


def _final_transfer_errors() -> tuple[type[BaseException], ...]:
    """hf_xet's own error types, which are final (no credentials, no such object); none without hf_xet."""
    try:
        import hf_xet
    except ImportError:
        return ()
    names = ("XetAuthenticationError", "XetObjectNotFoundError")
    return tuple(t for name in names if isinstance(t := getattr(hf_xet, name, None), type))


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: 5xx, 408, 429, dropped/refused/timed-out connections, in HTTP or in
    the transfer layer."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import httpx

    if any(isinstance(e, OfflineModeIsEnabled) for e in causes(exc)):
        return False
    cause = _http_cause(exc)
    if isinstance(cause, HfHubHTTPError):
        status = http_status(cause)
        return status is not None and (status >= 500 or status in (408, 429))
    # The transport failures huggingface_hub's own http_backoff retries by default.
    if isinstance(cause, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return True
    return cause is None and _transfer_cause(exc) is not None


def server_wait(exc: BaseException) -> tuple[float, str] | None:
    """The wait the server asked for, in seconds, and which header said so: ``RateLimit`` (``"api";r=0;t=N``,
    read by huggingface_hub's own parser) on a 429, else ``Retry-After`` (seconds form)."""
    from huggingface_hub.utils import parse_ratelimit_headers

    response = getattr(_http_cause(exc), "response", None)
    if response is None:
        return None
    limit = parse_ratelimit_headers(response.headers)
    if response.status_code == 429 and limit is not None and limit.remaining == 0:
        return float(limit.reset_in_seconds), f"rate limit on {limit.resource_type!r} requests"
    value = response.headers.get("Retry-After")
    try:
        return (float(value), "Retry-After") if value is not None else None
    except ValueError:
        return None


def describe(exc: BaseException) -> str:
    """One redacted line for logs and messages: the error, its HTTP status, and the HTTP or transfer cause if
    wrapped."""
    text = first_line(exc)
    cause = _http_cause(exc) or _transfer_cause(exc)
    if cause is not None and cause is not exc and first_line(cause) not in text:
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
        HubUnavailableError: A wait before a retry is more than the policy's budget has left.
        Whatever ``func`` raised last: immediately if not transient, after the last attempt otherwise.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return func()
        except Exception as exc:
            if not is_transient(exc) or attempt == policy.attempts:
                raise
            backoff(policy, exc, attempt, what=what)
    raise AssertionError("unreachable")  # the loop either returns or raises


def backoff(policy: RetryPolicy, exc: BaseException, attempt: int, *, what: str) -> None:
    """Wait before retry ``attempt + 1`` of ``what`` after the transient ``exc``: the server's wait if it named
    one, else exponential back-off with jitter; out of the policy's budget.

    Raises:
        HubUnavailableError: The wait is more than the budget has left.
    """
    asked = server_wait(exc)
    if asked is not None:
        wait = max(0.0, asked[0])
    else:
        wait = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
        wait *= random.uniform(1 - policy.jitter, 1 + policy.jitter)  # jitter, not cryptography
    logger.warning(
        "%s failed (%s); retrying in %.1fs (attempt %d of %d)",
        what,
        describe(exc),
        wait,
        attempt + 1,
        policy.attempts,
    )
    budget = policy.budget
    if wait > budget.left:
        reason = f"the Hub asked to wait: {asked[1]}" if asked else "back-off"
        raise HubUnavailableError(
            f"{what} failed: retrying needs a wait of {wait:.0f}s ({reason}), more than the "
            f"{budget.left:.0f}s left of this run's {budget.total:.0f}s retry budget; nothing is "
            "wrong with the release, re-run once the wait is over"
        ) from exc
    budget.left = max(0.0, budget.left - wait)
    policy.sleep(wait)
