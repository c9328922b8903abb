"""Sign a release folder and verify a signed one, with OpenSSF model-signing (``model_signing``).

``model.sig`` is a Sigstore bundle over an in-toto statement listing every file of the folder with its SHA-256
(``SHA256SUMS`` included), so a download can be checked with this tool or model-signing's CLI. Signing is
keyless in GitHub Actions (the job's OIDC identity gets a short-lived certificate naming the workflow and ref,
logged in Rekor), or with a local elliptic-curve key (PEM) offline. Signatures differ run to run (ECDSA and
fresh certificates); what they sign does not.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from release._io import first_line, fsync_dir
from release.errors import IntegrityError, UsageError
from release.sign.checksums import CHECKSUMS_FILE, SIGNATURE_FILE, check_checksums

GITHUB_OIDC_ISSUER = "https://token.actions.githubusercontent.com"
# Left out of the signed manifest (model-signing also leaves out .git/, .gitattributes, .github/, .gitignore):
# the signature itself, and huggingface_hub's metadata folder in a --local-dir download.
UNSIGNED = (SIGNATURE_FILE, ".cache")


@dataclass(frozen=True)
class SignatureCheck:
    """A signature that verified: where, against what, over how many files."""

    folder: Path
    signer: str  # "public key <path>" or the Sigstore identity
    files: int  # files listed in SHA256SUMS, every one matching


def _hashing_config():
    from model_signing import hashing

    # set_ignored_paths applies at hashing time (and is recorded in the signed manifest, so verifiers skip
    # the same paths); use_file_serialization's own ignore_paths would only be recorded.
    config = hashing.Config().use_file_serialization(hashing_algorithm="sha256")
    return config.set_ignored_paths(paths=UNSIGNED)


def sign_folder(folder: str | Path, *, private_key: str | Path | None = None, keyless: bool = False) -> Path:
    """Write ``folder/model.sig``: a model-signing bundle over every file (SHA256SUMS must match first).

    Args:
        folder: The release folder, with a current SHA256SUMS.
        private_key: An elliptic-curve private key (PEM) to sign with.
        keyless: Sign with Sigstore using the ambient OIDC identity (GitHub Actions with ``id-token: write``).

    Raises:
        UsageError: Neither or both of ``private_key`` and ``keyless``.
        IntegrityError: SHA256SUMS does not match the folder, or signing failed (named, one line).
    """
    folder = Path(folder)
    if (private_key is None) == (not keyless):
        raise UsageError("sign with exactly one of --key PEM or --sigstore")
    check_checksums(folder)
    from model_signing import signing

    config = signing.Config().set_hashing_config(_hashing_config())
    if keyless:
        config.use_sigstore_signer(use_ambient_credentials=True)
    else:
        config.use_elliptic_key_signer(private_key=Path(private_key))
    # Written beside the folder, then renamed in: an interrupted signing never leaves a partial model.sig.
    fd, tmp = tempfile.mkstemp(prefix=".model-sig-", dir=folder.parent)
    os.close(fd)
    try:
        config.sign(folder, tmp)
        os.replace(tmp, folder / SIGNATURE_FILE)
    except Exception as exc:  # model-signing and sigstore raise many types; each is one line here
        raise IntegrityError(f"signing {folder} failed: {first_line(exc)}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(folder)
    return folder / SIGNATURE_FILE


def verify_folder(
    folder: str | Path,
    *,
    public_key: str | Path | None = None,
    identity: str | None = None,
    issuer: str = GITHUB_OIDC_ISSUER,
) -> SignatureCheck:
    """Check ``folder/model.sig`` (against a public key or a Sigstore identity) and ``SHA256SUMS``.

    Raises:
        UsageError: Neither or both of ``public_key`` and ``identity``.
        IntegrityError: No signature, a signature that does not verify, or files that differ from what it
            signed or from SHA256SUMS (one line naming the first difference).
    """
    folder = Path(folder)
    if (public_key is None) == (identity is None):
        raise UsageError("verify with exactly one of --public-key PEM or --identity (a Sigstore identity)")
    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        raise IntegrityError(f"{folder} has no {SIGNATURE_FILE}: this release was not signed")
    listed = check_checksums(folder)
    from model_signing import verifying

    config = verifying.Config().set_hashing_config(_hashing_config())
    if public_key is not None:
        config.use_elliptic_key_verifier(public_key=Path(public_key))
        signer = f"public key {public_key}"
    else:
        config.use_sigstore_verifier(identity=identity, oidc_issuer=issuer)
        signer = f"{identity} ({issuer})"
    try:
        config.verify(folder, signature)
    except Exception as exc:  # a bad signature, a wrong key and a changed file all end here, as one line
        raise IntegrityError(
            f"{signature} does not verify with {signer}: {first_line(exc, limit=300)}"
        ) from exc
    return SignatureCheck(folder=folder, signer=signer, files=len(listed))


def verify_revision(
    repo_id: str,
    revision: str,
    *,
    download_dir: str | Path,
    public_key: str | Path | None = None,
    identity: str | None = None,
    issuer: str = GITHUB_OIDC_ISSUER,
) -> SignatureCheck:
    """Download ``repo_id`` at ``revision`` into ``download_dir`` (a plain folder: the files a user gets; its
    ``.cache/`` is neither listed nor signed) and :func:`verify_folder` it."""
    from huggingface_hub import snapshot_download

    from release.auth import read_token

    try:
        path = snapshot_download(repo_id, revision=revision, local_dir=download_dir, token=read_token())
    except Exception as exc:  # huggingface_hub's errors (not found, network) as one line
        raise IntegrityError(f"cannot download {repo_id}@{revision}: {first_line(exc)}") from exc
    if not (Path(path) / CHECKSUMS_FILE).is_file():
        raise IntegrityError(
            f"{repo_id}@{revision} has no {CHECKSUMS_FILE}: it was not released by this pipeline"
        )
    return verify_folder(path, public_key=public_key, identity=identity, issuer=issuer)
