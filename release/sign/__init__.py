"""Release integrity: the ``SHA256SUMS`` manifest, the release digest, and the folder's signature.

``checksums`` is standard library only (the CLI and ``release publish`` use it on every folder); ``signing``
imports OpenSSF model-signing only when it signs or verifies.
"""

from release.sign.checksums import (
    CHECKSUMS_FILE,
    SIGNATURE_FILE,
    check_checksums,
    check_release_digest,
    release_digest,
    write_checksums,
)
from release.sign.signing import (
    GITHUB_OIDC_ISSUER,
    SignatureCheck,
    sign_folder,
    verify_folder,
    verify_revision,
)

__all__ = [
    "CHECKSUMS_FILE",
    "GITHUB_OIDC_ISSUER",
    "SIGNATURE_FILE",
    "SignatureCheck",
    "check_checksums",
    "check_release_digest",
    "release_digest",
    "sign_folder",
    "verify_folder",
    "verify_revision",
    "write_checksums",
]
