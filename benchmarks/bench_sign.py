"""Benchmark the release's integrity steps against coreutils' `sha256sum` over the same files, in one run.

Writes a release-shaped folder (one large safetensors-sized file plus small config/tokenizer files; 1 GB by
default) in a temporary folder, then runs each contender in its own Python process, timing only its work and
reading its peak RSS:

    sha256sum   coreutils over every file (what a user's `sha256sum -c` costs)
    one-pass    hashlib.file_digest over every file: one SHA-256 pass, the floor any of these can reach
    checksums   release.sign.write_checksums (SHA256SUMS)
    check       release.sign.check_checksums (what `release publish` and verify-signature do first)
    sign        release.sign.sign_folder with a local EC key (model-signing hashes the folder again)
    verify      release.sign.verify_folder with the public key (SHA256SUMS check + model-signing's hash)

Expect checksums and check at about 1x one-pass; sign and verify at 2-3x (two hashing passes: SHA256SUMS is
checked first, then model-signing hashes the folder itself). Every file is in the page cache for every contender.

    python benchmarks/bench_sign.py              # 1 GB
    python benchmarks/bench_sign.py --size 4e9   # about a 1B-parameter fp32 release
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import peak_rss, spawn

ROLES = ("sha256sum", "one-pass", "checksums", "check", "sign", "verify")


def child(role: str, args: dict) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from release.sign import check_checksums, sign_folder, verify_folder, write_checksums

    folder, keys = Path(args["folder"]), Path(args["keys"])
    start = time.perf_counter()
    if role == "sha256sum":
        files = sorted(
            p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".sig" and p.name != "SHA256SUMS"
        )
        subprocess.run(["sha256sum", *files], cwd=folder, check=True, capture_output=True)
    elif role == "one-pass":
        import hashlib

        for path in sorted(folder.iterdir()):
            if path.is_file():
                with open(path, "rb") as f:
                    hashlib.file_digest(f, "sha256")
    elif role == "checksums":
        write_checksums(folder)
    elif role == "check":
        check_checksums(folder)
    elif role == "sign":
        sign_folder(folder, private_key=keys / "key.pem")
    elif role == "verify":
        verify_folder(folder, public_key=keys / "key.pub")
    return {"seconds": time.perf_counter() - start, "peak_rss": peak_rss()}


def make_folder(folder: Path, size: int) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with open(folder / "model.safetensors", "wb") as f:
        for _ in range(max(1, size // len(chunk))):
            f.write(chunk)
    for name in ("config.json", "tokenizer.json", "README.md", "release.json"):
        (folder / name).write_text('{"x": 1}\n' * 1000)
    key = ec.generate_private_key(ec.SECP256R1())
    keys = folder.parent / "keys"
    keys.mkdir()
    (keys / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (keys / "key.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=float, default=1e9, help="bytes of the weights file (default 1e9)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("ROLE", "ARGS"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(options.child[0], json.loads(options.child[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-sign-") as tmp:
        folder = Path(tmp) / "model"
        make_folder(folder, int(options.size))
        args = {"folder": str(folder), "keys": str(Path(tmp) / "keys")}
        spawn(__file__, "sha256sum", args)  # warm the page cache
        results = {role: [spawn(__file__, role, args) for _ in range(options.repeat)] for role in ROLES}
    base = statistics.median(r["seconds"] for r in results["sha256sum"])
    floor = statistics.median(r["seconds"] for r in results["one-pass"])
    print(f"folder: {int(options.size) / 1e9:.2f} GB of weights; medians of {options.repeat} runs")
    for role in ROLES:
        seconds = statistics.median(r["seconds"] for r in results[role])
        rss = max(r["peak_rss"] for r in results[role]) / 1e6
        ratios = f"{seconds / floor:5.2f}x one-pass  {seconds / base:5.2f}x sha256sum"
        print(f"  {role:<10} {seconds:7.2f} s  {ratios}  peak RSS {rss:6.0f} MB")


if __name__ == "__main__":
    main()
