"""Benchmarks of the queue (issue 4): `make bench` runs them all via `python -m bench.run`.

Not part of the test suite. Every benchmark works in its own fresh PostgreSQL database or SQLite
file under bench/out/, and writes nothing to the databases tests use.
"""
