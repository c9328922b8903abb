"""``SHA256SUMS``: the release folder's checksum manifest, in the format ``sha256sum -c`` reads.

One ``<64 hex>  <path>`` line per file (coreutils text mode), sorted by path, over every file of the folder
except the manifest, its signature (which signs the manifest too), ``.gitattributes`` (the Hub writes it into
every repo; model-signing leaves it out too) and ``.cache/``. A path with a newline or a backslash is refused,
so every line stays the plain coreutils form. The manifest's own SHA-256 is the *release digest*: one value
that names every byte of the release, matched by the publish job and listed in the GitHub Release notes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from release._io import hash_folder, write_text_atomic
from release.errors import IntegrityError

CHECKSUMS_FILE = "SHA256SUMS"
SIGNATURE_FILE = "model.sig"  # the OpenSSF model-signing bundle (release.sign.signing)
NOT_LISTED = (CHECKSUMS_FILE, SIGNATURE_FILE, ".gitattributes")  # besides anything under .cache/

_LINE = re.compile(r"([0-9a-f]{64})  (\S.*)")


def is_listed(path: str) -> bool:
    """True for the folder paths ``SHA256SUMS`` lists (``path`` relative, with "/")."""
    return path not in NOT_LISTED and ".cache" not in path.split("/")


def folder_hashes(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file ``SHA256SUMS`` lists, keyed by relative path, sorted."""
    return hash_folder(folder, keep=is_listed)


def format_checksums(hashes: Mapping[str, str]) -> str:
    """The manifest text for ``{path: sha256}`` (sorted, coreutils text-mode lines)."""
    for path in hashes:
        if "\n" in path or "\\" in path:
            raise IntegrityError(f"file name {path!r} cannot be listed in {CHECKSUMS_FILE}; rename it")
    return "".join(f"{hashes[path]}  {path}\n" for path in sorted(hashes))


def parse_checksums(text: str, *, source: str = CHECKSUMS_FILE) -> dict[str, str]:
    """``{path: sha256}`` from a manifest; a malformed or duplicated line is an IntegrityError naming it."""
    hashes: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.fullmatch(line)
        if match is None or match[2] in hashes:
            raise IntegrityError(
                f"{source} line {number} is not `<sha256>  <path>` once per file: {line[:80]!r}"
            )
        hashes[match[2]] = match[1]
    return hashes


def write_checksums(folder: str | Path) -> Path:
    """Write ``folder/SHA256SUMS`` for the folder's current files (atomically); returns its path."""
    folder = Path(folder)
    return write_text_atomic(folder / CHECKSUMS_FILE, format_checksums(folder_hashes(folder)))


def _manifest(folder: str | Path) -> Path:
    path = Path(folder) / CHECKSUMS_FILE
    if not path.is_file():
        raise IntegrityError(f"{folder} has no {CHECKSUMS_FILE}: run `release sign {folder}` to write it")
    return path


def check_checksums(folder: str | Path, actual: Mapping[str, str] | None = None) -> dict[str, str]:
    """Check that ``folder/SHA256SUMS`` lists exactly the folder's files with their hashes.

    Args:
        folder: The release folder.
        actual: ``{path: sha256}`` of the folder's files when the caller has hashed them already (paths that
            SHA256SUMS does not list are ignored); default: hash them here.

    Raises:
        IntegrityError: No SHA256SUMS, or it differs from the files (each difference named).
    """
    folder = Path(folder)
    path = _manifest(folder)
    listed = parse_checksums(path.read_text(encoding="utf-8"), source=str(path))
    actual = folder_hashes(folder) if actual is None else {p: h for p, h in actual.items() if is_listed(p)}
    problems = [f"changed: {p}" for p in sorted(listed) if p in actual and actual[p] != listed[p]]
    problems += [f"missing: {p}" for p in sorted(set(listed) - set(actual))]
    problems += [f"not listed: {p}" for p in sorted(set(actual) - set(listed))]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise IntegrityError(
            f"{path} does not match the folder ({shown}); re-run `release sign {folder}` after the last change"
        )
    return listed


def release_digest(folder: str | Path) -> str:
    """The SHA-256 of ``folder/SHA256SUMS``: the one value that names every byte of the release."""
    return hashlib.sha256(_manifest(folder).read_bytes()).hexdigest()


def check_release_digest(folder: str | Path, expected: str) -> str:
    """Refuse a folder whose release digest is not ``expected`` (what the build job made). Returns the digest.

    The digest covers SHA256SUMS only; :func:`check_checksums` (which ``release publish`` runs on every folder
    that has one) ties SHA256SUMS to the files.
    """
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise IntegrityError(
            f"expected release digest {expected!r} is not 64 hex digits; pass the build's digest"
        )
    digest = release_digest(folder)
    if digest != expected:
        raise IntegrityError(
            f"{folder} is not the build's release: SHA256SUMS digest {digest} != expected {expected}; "
            "publish only the artifact the build job uploaded"
        )
    return digest
