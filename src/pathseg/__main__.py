"""`python -m pathseg` runs the CLI."""

from pathseg.cli import main

main()
