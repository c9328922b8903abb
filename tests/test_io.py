"""Tests for release/_io.py: the atomic writes every step uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from release._io import first_line, write_bytes_atomic, write_text_atomic


def test_atomic_write_gives_the_mode_a_plain_write_would(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_text_atomic(tmp_path / "sub" / "atomic.txt", "naïve\r\nline\n")
    assert atomic.read_bytes() == "naïve\r\nline\n".encode()  # newlines exactly as given
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = write_bytes_atomic(tmp_path / "f.bin", b"old")

    with pytest.raises(TypeError):  # the write itself fails, after the temporary file was made
        write_bytes_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_first_line_of_a_multiline_error_and_of_an_empty_one() -> None:
    assert first_line(ValueError("top\nsecond")) == "top"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("x" * 50), limit=10) == "xxxxxxx..."
