"""Refuse a lock file that pip's --require-hashes mode would not fully pin: one line naming the requirement.

    python requirements/check_lock.py requirements/publish.lock

Every requirement must be `name==version` with at least one `--hash=sha256:`; pip checks the same, but its
error is many lines, and it says nothing of a lock that pins a version with a hash for another wheel only.
Standard library only: it runs before anything is installed.
"""

import re
import sys

REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def problems(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        text = re.sub(r"\\\n", " ", fh.read())
    found, count = [], 0
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        count += 1
        match = REQUIREMENT.match(line)
        name = line.split()[0]
        if match is None:
            found.append(f"{name} is not pinned with ==")
        elif not re.search(r"--hash=sha256:[0-9a-f]{64}\b", line):
            found.append(f"{name} has no --hash=sha256")
    if count == 0:
        found.append("no requirements")
    return found


def main(paths: list[str]) -> int:
    for path in paths:
        try:
            found = problems(path)
        except OSError as exc:
            found = [f"cannot be read ({exc.strerror})"]
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            sys.stderr.write(f"Error: {path}: {found[0]}{more}; regenerate it with requirements/compile\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
