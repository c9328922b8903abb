"""Run a Python program with this repo's packages refused: ``python -E -P without_repo.py PROGRAM [ARGS...]``.

The child processes that run uploaded code (a compat matrix cell, the card's snippet) start through this file,
by path, in an interpreter where this project may not be installed: it imports the standard library only. It
installs an import hook that refuses ``release``, ``modeling`` and ``tests`` (they exist on the machine that
converted the model and nowhere else), then runs PROGRAM as ``__main__`` with ``sys.argv = [PROGRAM, *ARGS]``.
``hygiene.py`` checks the same rule statically.
"""

import importlib.abc
import runpy
import sys

THIS_REPO_PACKAGES = ("release", "modeling", "tests")


def child_command(python, program, *args):
    """The command that runs ``program`` (a path) through this file in the interpreter ``python``.

    ``-E`` ignores ``PYTHONPATH`` and the other ``PYTHON*`` variables, ``-P`` keeps the script's folder and the
    working directory off ``sys.path``: the child sees that interpreter's own packages and nothing else.
    """
    return [str(python), "-E", "-P", __file__, str(program), *map(str, args)]


class RepoBlocker(importlib.abc.MetaPathFinder):
    """Refuses this repo's packages even where they are installed (an editable install, a wheel)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in THIS_REPO_PACKAGES:
            raise ModuleNotFoundError(
                f"No module named {name!r} (blocked: the release repo is not importable here)", name=name
            )
        return None


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -E -P without_repo.py PROGRAM [ARGS...]")
    sys.meta_path.insert(0, RepoBlocker())
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
