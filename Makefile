# promptbatch: `make demo` runs today's demo batch end to end; `make test` runs every check;
# `make test-fast` the tests that start no process (the inner loop).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint pytest openai2 console bench soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "promptbatch needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo batch, then the console on the same database (CONSOLE=0 skips the console).
CONSOLE ?= 1
demo: $(STAMP)
	$(BIN)/promptbatch demo $(if $(filter 0,$(CONSOLE)),--no-console,--console)

test: lint pytest openai2

LINTED := db runner console tests bench docs
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/lint-imports

# Tests run on 3 xdist workers: on 2 cores a third keeps the CPU busy while the others wait on
# the database, the simulator or a child process (measured: 2 -> 3 workers, 74 s -> 58 s fast).
XDIST := -n 3 --dist worksteal
pytest: $(STAMP)
	$(BIN)/pytest -q $(XDIST)

# The inner loop: everything but the tests that start processes or a browser (under 60 s).
test-fast: $(STAMP)
	$(BIN)/pytest -q $(XDIST) -m "not subprocess and not browser"

# The model boundary on the other supported openai major: the main venv resolves the newest
# (3.x, httpx2); openai 2.x (httpx) in a second venv,
# mypy over the tree and the tests that make model calls (the whole suite runs on the newest).
VENV2 := .venv-openai2
STAMP2 := $(VENV2)/.installed
MODEL_TESTS := tests/test_provider_contract.py tests/test_jobs.py tests/test_simulator.py \
	tests/test_model_units.py
$(STAMP2): pyproject.toml
	$(PYTHON) -m venv $(VENV2)
	$(VENV2)/bin/pip install --quiet --upgrade pip
	$(VENV2)/bin/pip install --quiet -e . 'openai[aiohttp]>=2,<3' 'pytest>=8,<10' 'pytest-timeout>=2.3,<3' \
		'pytest-xdist>=3.5,<4' time-machine 'pyyaml>=6,<7' mypy types-pytz types-PyYAML
	touch $(STAMP2)

openai2: $(STAMP2)
	$(VENV2)/bin/python -c 'import openai, sys; sys.exit(0 if openai.__version__.startswith("2.") else "not openai 2")'
	$(VENV2)/bin/mypy
	$(VENV2)/bin/pytest -q $(XDIST) -p no:cacheprovider $(MODEL_TESTS)

console: $(STAMP)
	$(BIN)/promptbatch console

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run

# The full soak (kill -9 rounds, a PostgreSQL crash, a freeze, an outage; bench/soak.py): ~10 min.
soak: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) $(VENV2) data .pytest_cache .mypy_cache .ruff_cache
