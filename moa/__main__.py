"""`python -m moa` is the `moa` command."""

from moa.cli import main

main()
