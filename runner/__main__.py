"""`python -m runner` is `promptbatch`."""

from runner.cli.commands import main

main()
