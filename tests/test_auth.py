"""release.auth: what redaction hides (secret values, token shapes) and what it leaves (names, words); the
trusted-publishing resource checked against the repo before any request."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from release.auth import check_oidc_resource, redact
from release.errors import CredentialsError
from tests.test_publish import REPO, builds, release_dir  # noqa: F401  (fixtures)

REAL_SHAPE = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # "hf_" and 34 letters and digits
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvbW9kZWwifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    "text",
    [
        "set 'HF_HUB_OFFLINE=0' as environment variable",
        "HF_OIDC_RESOURCE is set but no OIDC id token is available and HF_OIDC_ID_TOKEN is not set",
        "set HF_TOKEN or HUGGING_FACE_HUB_TOKEN; HF_HUB_DISABLE_XET=1 uses LFS",
        "hf_hub_download failed in huggingface_hub.file_download; see hf_transfer and hf_xet",
        "the bearer of bad news: an authorization header is required",  # the keywords as ordinary words
    ],
)
def test_redaction_leaves_variable_names_and_ordinary_words_alone(text, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"token {REAL_SHAPE} rejected", "token *** rejected"),
        (f"url?token={REAL_SHAPE}&x=1", "url?token=***&x=1"),
        ("exchanged hf_jwt_eyJhbGciOi.eyJzdWIi.sig-nature_x for acme/model", "exchanged *** for acme/model"),
        ("user token hf_oauth_Zm9vYmFyYmF6 expires", "user token *** expires"),
        (f"id token {JWT} refused", "id token *** refused"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("header authorization: bearer s3cr3t, next", "header authorization: bearer ***, next"),
    ],
)
def test_redaction_hides_token_shapes(text, expected, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert redact(text) == expected


@pytest.mark.parametrize(
    "name", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_ID_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"]
)
def test_redaction_hides_the_value_of_every_secret_variable_but_not_its_name(name, monkeypatch):
    monkeypatch.setenv(name, "plain-s3cr3t-without-shape")
    assert redact(f"{name}=plain-s3cr3t-without-shape failed") == f"{name}=*** failed"


def test_redaction_hides_tokens_resolved_in_this_process(monkeypatch):
    import release.auth

    monkeypatch.setattr(release.auth, "_known_secrets", {"exchanged-in-memory-token"})
    assert redact("sent exchanged-in-memory-token to the Hub") == "sent *** to the Hub"


def test_oidc_resource_must_name_the_repo_being_published(monkeypatch):
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    check_oidc_resource("acme/model")  # no trusted publishing: nothing to check
    monkeypatch.setenv("HF_OIDC_RESOURCE", "acme/model")
    check_oidc_resource("acme/model")
    for other in ("acme/other", "models/acme/model", "acme"):
        monkeypatch.setenv("HF_OIDC_RESOURCE", other)
        with pytest.raises(CredentialsError) as failure:
            check_oidc_resource("acme/model")
        message = str(failure.value)
        assert f"HF_OIDC_RESOURCE is '{other}'" in message and "publishes to 'acme/model'" in message


def test_publish_refuses_another_oidc_resource_before_any_request(hub, release_dir, monkeypatch):  # noqa: F811
    from release.cli import main as cli

    monkeypatch.setenv("HF_OIDC_RESOURCE", "acme/another-model")
    result = CliRunner().invoke(
        cli, ["publish", str(release_dir()), "--repo-id", REPO, "--version", "v1.0.0"]
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "HF_OIDC_RESOURCE is 'acme/another-model'" in lines[0] and f"publishes to '{REPO}'" in lines[0]
    assert hub.requests == []  # refused before anything was read or uploaded
