"""Release integrity (issue #17): SHA256SUMS, the release digest, the signature, and the refusals.

SHA256SUMS is checked against coreutils itself; signing and verification round-trip with a local key (the
keyless Sigstore signature needs GitHub's OIDC and is exercised in Actions only); each refusal is one line on
stderr and exit 1, and leaves nothing behind. The workflow-level checks (a signed tag push, `sha256sum -c` on a
download of the tagged revision) are in test_workflows.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from release.cli import main
from release.errors import IntegrityError, UsageError
from release.github import check_release_ref
from release.publish.plan import read_release_folder
from release.sign import (
    check_checksums,
    check_release_digest,
    release_digest,
    sign_folder,
    verify_folder,
    verify_revision,
    write_checksums,
)

TAG_ENV = {"GITHUB_ACTIONS": "true", "GITHUB_REF": "refs/tags/v1.0.0", "GITHUB_REF_TYPE": "tag"}
TAG_ENV["GITHUB_REF_NAME"] = "v1.0.0"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small release folder: nested files, a hidden folder, a space in a name, binary content."""
    model = tmp_path / "dist" / "v1.0.0" / "model"
    (model / ".eval_results").mkdir(parents=True)
    (model / "config.json").write_text('{"n_layer": 2}\n')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (model / ".eval_results" / "lambada.yaml").write_text("value: 0.5\n")
    (model / "tokenizer config.json").write_text("{}\n")
    return model


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = tmp_path_factory.mktemp("keys")
    keys = []
    for name in ("a", "b"):
        key = ec.generate_private_key(ec.SECP256R1())
        (folder / f"{name}.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (folder / f"{name}.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        keys.append(folder / name)
    return tuple(keys)


def release_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_sha256sums_is_what_coreutils_writes_and_reads(folder):
    write_checksums(folder)
    files = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"
    )
    expected = subprocess.run(["sha256sum", "--", *files], cwd=folder, capture_output=True, check=True).stdout
    assert (folder / "SHA256SUMS").read_bytes() == expected  # byte for byte, sorted, hidden files included
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=folder).returncode == 0
    first = (folder / "SHA256SUMS").read_bytes()
    write_checksums(folder)
    assert (folder / "SHA256SUMS").read_bytes() == first  # deterministic
    assert release_digest(folder) == hashlib.sha256(first).hexdigest()


@pytest.mark.parametrize(
    ("change", "named", "coreutils"),
    [
        (lambda f: (f / "config.json").write_text('{"n_layer": 3}\n'), "changed: config.json", 1),
        (lambda f: (f / "config.json").unlink(), "missing: config.json", 1),
        # `sha256sum -c` cannot see a file it was never told of; the release check can.
        (lambda f: (f / "extra.bin").write_bytes(b"x"), "not listed: extra.bin", 0),
    ],
    ids=["changed", "missing", "extra"],
)
def test_a_folder_that_differs_from_its_sha256sums_is_refused(folder, change, named, coreutils):
    write_checksums(folder)
    check_checksums(folder)
    change(folder)
    with pytest.raises(IntegrityError, match=named):
        check_checksums(folder)
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=folder, capture_output=True)
    assert check.returncode == coreutils


def test_publish_refuses_a_folder_whose_sha256sums_is_stale(folder):
    from tests.test_card import VERIFICATION

    files = {"config.json": hashlib.sha256(b'{"n_layer": 2}\n').hexdigest()}
    report = {**VERIFICATION, "model": {**VERIFICATION["model"], "files": files}}
    (folder.parent / "verification.json").write_text(json.dumps(report))
    for path in (folder / "model.safetensors", folder / "tokenizer config.json"):
        path.unlink()
    write_checksums(folder)
    assert "SHA256SUMS" in read_release_folder(folder).files  # uploaded, but not in the report
    (folder / "README.md").write_text("# a card rendered again after SHA256SUMS\n")
    with pytest.raises(
        IntegrityError, match=r"SHA256SUMS does not match the folder \(not listed: README.md\)"
    ):
        read_release_folder(folder)


def test_signing_round_trip_with_a_local_key(folder, key_pair):
    (a, b) = key_pair
    write_checksums(folder)
    signature = sign_folder(folder, private_key=a.with_suffix(".pem"))
    assert signature == folder / "model.sig" and not list(folder.parent.glob(".model-sig-*"))
    check = verify_folder(folder, public_key=a.with_suffix(".pub"))
    assert check.files == 4 and check.signer.startswith("public key ")
    sign_folder(folder, private_key=a.with_suffix(".pem"))  # signing again never signs the old signature
    verify_folder(folder, public_key=a.with_suffix(".pub"))
    assert "model.sig" not in (folder / "SHA256SUMS").read_text()

    with pytest.raises(IntegrityError, match="does not verify with public key"):
        verify_folder(folder, public_key=b.with_suffix(".pub"))  # another key

    copy = folder.parent / "copy"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[100] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA256SUMS does not match the folder"):
        verify_folder(copy, public_key=a.with_suffix(".pub"))
    write_checksums(copy)  # a consistent forgery of SHA256SUMS: the signature still catches it
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_folder(copy, public_key=a.with_suffix(".pub"))

    with pytest.raises(UsageError, match="exactly one of"):
        verify_folder(folder, public_key=a.with_suffix(".pub"), identity="someone")
    with pytest.raises(UsageError, match="exactly one of"):
        sign_folder(folder)


def test_verify_signature_of_a_hub_revision(folder, key_pair, hub, tmp_path):
    a, _ = key_pair
    write_checksums(folder)
    sign_folder(folder, private_key=a.with_suffix(".pem"))
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    hub.create_repo("me/signed")
    hub.commit("me/signed", files, message="Release v1.0.0")
    hub.create_tag("me/signed", "v1.0.0")
    check = verify_revision(
        "me/signed", "v1.0.0", download_dir=tmp_path / "d", public_key=a.with_suffix(".pub")
    )
    assert check.files == 4  # the Hub's .gitattributes is neither listed nor signed

    result = release_cli("verify-signature", "me/signed@v1.0.0", "--public-key", str(a.with_suffix(".pub")))
    assert result.exit_code == 0 and result.stdout.startswith("Signature OK: me/signed@v1.0.0, 4 files")
    hub.commit("me/signed", {"config.json": b"{}"}, message="tamper")
    hub.create_tag("me/signed", "v1.0.1")
    line = one_line_error(
        release_cli("verify-signature", "me/signed@v1.0.1", "--public-key", str(a.with_suffix(".pub")))
    )
    assert "SHA256SUMS does not match the folder (changed: config.json)" in line


def test_a_digest_mismatch_is_one_line_and_signs_nothing(folder, key_pair):
    a, _ = key_pair
    write_checksums(folder)
    digest = release_digest(folder)
    assert check_release_digest(folder, digest.upper()) == digest
    wrong = "0" * 64
    for args in (
        ["sign", str(folder), "--key", str(a.with_suffix(".pem")), "--expect-digest", wrong],
        ["publish", str(folder), "--version", "v1.0.0", "--dry-run", "--expect-digest", wrong],
    ):
        line = one_line_error(release_cli(*args))
        assert line == (
            f"Error: {folder} is not the build's release: SHA256SUMS digest {digest} != expected {wrong}; "
            "publish only the artifact the build job uploaded"
        )
    assert not (folder / "model.sig").exists()
    result = release_cli("sign", str(folder), "--key", str(a.with_suffix(".pem")), "--expect-digest", digest)
    assert result.exit_code == 0 and (folder / "model.sig").is_file()
    assert release_digest(folder) == digest  # --expect-digest keeps the build's SHA256SUMS


def test_the_version_must_be_the_tag_and_a_branch_can_only_dry_run(folder):
    check_release_ref("v1.0.0", dry_run=False, env=TAG_ENV)
    check_release_ref("v9.9.9", dry_run=False, env={})  # outside Actions: a local release names its version
    line = one_line_error(
        release_cli("publish", str(folder), "--version", "v2.0.0", "--dry-run", env=TAG_ENV)
    )
    assert line.startswith("Error: version v2.0.0 does not match the tag v1.0.0 this run is on;")
    branch = {"GITHUB_ACTIONS": "true", "GITHUB_REF": "refs/heads/main", "GITHUB_REF_TYPE": "branch"}
    line = one_line_error(release_cli("publish", str(folder), "--version", "v2.0.0", env=branch))
    assert line.startswith("Error: refs/heads/main is not a tag: a run on a branch can only be a dry run;")
    line = one_line_error(release_cli("run", "--version", "v2.0.0", "--stop-after", "card", env=branch))
    assert "can only be a dry run" in line
    check_release_ref("v2.0.0", dry_run=True, env=branch)  # the card preview, a dispatch dry run
