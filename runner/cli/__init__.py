"""The `promptbatch` command line (`commands`, typer), the user files it reads (`inputs`) and
the demo (`demo`).
"""
