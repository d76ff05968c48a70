"""``python -m pgmigrator``: the command line."""

from pgmigrator.cli import main

main()
