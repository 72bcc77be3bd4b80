"""`python -m runner` is `promptbatch`."""

from runner.cli import main

main()
