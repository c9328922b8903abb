"""``python -m release`` = the ``release`` command."""

from release.cli import main

main()
