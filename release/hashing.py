"""Streaming SHA-256 of files: how artifacts are pinned (fetch) and how outputs are recorded (convert).

Kept apart from ``release/fetch.py`` so that importing it pulls in nothing but hashlib.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_SIZE = 1024 * 1024  # 1 MiB: large enough to be fast, small enough to never hold a checkpoint in memory


def sha256_file(path: Path) -> str:
    """Return the SHA-256 of a file as 64 lowercase hex digits, reading it in 1 MiB chunks.

    Args:
        path: The file to hash.

    Raises:
        OSError: The file cannot be opened or read (e.g. ``FileNotFoundError``).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()
