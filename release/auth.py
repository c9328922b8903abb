"""Hub credentials, in one place for every step, and the redaction every message about the Hub passes through.

Tokens never come from a command-line option (shell history, CI logs). Writes (:func:`resolve_token`) need an
explicit source: ``HF_OIDC_RESOURCE`` (trusted publishing: huggingface_hub exchanges the GitHub Actions OIDC id
token for a short-lived token scoped to that repo, and re-exchanges it before it expires) or ``HF_TOKEN`` (or
the legacy ``HUGGING_FACE_HUB_TOKEN``); a saved ``hf auth login`` is not used, so a release says where its
credentials come from. Reads (:func:`read_token`) take whatever ``huggingface_hub.get_token()`` resolves,
a saved login included. Either way ``get_token()`` decides the precedence, so what is checked is what is sent.
"""

from __future__ import annotations

import os
import re

from release.errors import CredentialsError, PublishError

# Environment variables whose values are secrets (the OIDC request token lets anyone mint id tokens).
SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_ID_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
)
# What a secret looks like when its value is not known here. Names stay readable: a variable name
# (HF_HUB_OFFLINE, HF_OIDC_RESOURCE) is upper case with underscores, a token is "hf_" and a run of letters and
# digits (about 34), an exchanged one "hf_jwt_..." / "hf_oauth_...", an OIDC id token a JWT ("eyJ..." in three
# dot-separated base64url parts), a credential the value of an Authorization header or a long bearer token.
_TOKEN_SHAPES = re.compile(
    r"\bhf_(?:jwt_|oauth_)[A-Za-z0-9._~+/=-]+"
    r"|\bhf_[A-Za-z0-9]{30,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    r"|(\b(?i:authorization:)\s*(?i:bearer\s+)?)[^\s'\",;]+"  # a header's value, whatever its length
    r"|(\b(?i:bearer)\s+)[^\s'\",;]{16,}"  # a bearer token in prose: long, unlike "bearer of"
)
REDACTED = "***"

_known_secrets: set[str] = set()  # tokens resolved in this process (e.g. the OIDC-exchanged one)


def redact(text: str) -> str:
    """``text`` with every known secret and every token-shaped substring replaced by ``***``.

    Known secrets are the values of :data:`SECRET_ENV_VARS` and the tokens resolved in this process; variable
    names and ordinary words are left alone, so a message's advice ("unset HF_HUB_OFFLINE") stays readable.
    """
    secrets = set(_known_secrets)
    secrets.update(value for name in SECRET_ENV_VARS if (value := os.environ.get(name)))
    for secret in sorted((s.strip() for s in secrets), key=len, reverse=True):
        if len(secret) >= 4:  # never blank out single characters of an accidental short value
            text = text.replace(secret, REDACTED)
    return _TOKEN_SHAPES.sub(lambda m: (m.group(1) or m.group(2) or "") + REDACTED, text)


def check_oidc_resource(repo_id: str) -> None:
    """Refuse a trusted-publishing setup whose ``HF_OIDC_RESOURCE`` names another repo than ``repo_id``.

    The Hub scopes an exchanged token to exactly that resource (a model repo is ``OWNER/NAME``), so a mismatch
    would only show up as a 403 at the first write.

    Raises:
        CredentialsError: ``HF_OIDC_RESOURCE`` is set and is not ``repo_id``.
    """
    resource = os.environ.get("HF_OIDC_RESOURCE", "").strip()
    if resource and resource != repo_id:
        raise CredentialsError(
            f"HF_OIDC_RESOURCE is {resource!r} but this release publishes to {repo_id!r}: a trusted-publishing "
            f"token only reaches the repo it names; set HF_OIDC_RESOURCE to {repo_id} (the repository variable, "
            "and a trusted publisher configured on that repo)"
        )


def _get_token(error: type[Exception]) -> str | None:
    """``huggingface_hub.get_token()``, remembered for redaction; a failed OIDC exchange is one ``error`` line."""
    from huggingface_hub import get_token

    try:
        token = get_token()
    except Exception as exc:  # OIDCError, or an HTTP error from the token exchange
        raise error(f"trusted publishing (HF_OIDC_RESOURCE) failed: {redact(str(exc))}") from None
    if token:
        _known_secrets.add(token)
    return token


def resolve_token() -> str:
    """The token to publish with, from OIDC trusted publishing or ``HF_TOKEN``; remembered for redaction.

    Raises:
        PublishError: Neither source is configured, or the OIDC exchange failed.
    """
    oidc = bool(os.environ.get("HF_OIDC_RESOURCE"))
    if not oidc and not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        raise PublishError(
            "no Hub credentials: set HF_TOKEN in the environment, or HF_OIDC_RESOURCE=OWNER/NAME inside GitHub "
            "Actions (job permission id-token: write) for trusted publishing; --dry-run needs neither"
        )
    token = _get_token(PublishError)
    if not token:
        raise PublishError("the Hub client resolved no token from HF_TOKEN / HF_OIDC_RESOURCE")
    return token


def read_token() -> str | bool:
    """The token for Hub reads, as ``huggingface_hub.get_token()`` resolves it; ``False`` (send none) if none.

    ``False`` rather than ``None``: huggingface_hub reads ``None`` as "look for one yourself". The token is
    remembered for redaction and never shown.

    Raises:
        CredentialsError: ``HF_OIDC_RESOURCE`` is set and the trusted-publishing exchange failed.
    """
    return _get_token(CredentialsError) or False
