# One-command set-up, demo and tests. Every target is idempotent: the virtualenv is (re)built only when
# pyproject.toml or constraints.txt change.
#
# torch is installed first, pinned to the CPU build (2.13.0) found on these machines, so that nothing pulls the
# multi-GB CUDA build; everything else then resolves against it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.keyguard-setup
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test fuzz lint docs ci bench compat clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/python -m keyguard.demo demo

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

# Property tests with random seeds and many examples (the `fuzz` Hypothesis profile, tests/_hypothesis_profiles.py);
# failures are kept in .hypothesis/ and replayed first next time. `make test` runs them derandomised instead.
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -n 2 -q -m hypothesis --timeout 3600 $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check keyguard tests benchmarks docs tools
	$(BIN)/ruff format --check keyguard tests benchmarks docs tools
	$(BIN)/mypy keyguard

# NO_MKDOCS_2_WARNING: mkdocs-material prints an end-of-life banner on every build unless it is set
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet --site-dir site

ci: lint test docs

bench: setup
	$(BIN)/python benchmarks/run.py

# Every supported PEFT series in a throwaway virtualenv (torch first), running the integration tests; slow.
compat: setup
	$(BIN)/python tools/compat.py $(COMPAT_ARGS)

clean:
	rm -rf $(VENV) site demo .pytest_cache .mypy_cache .ruff_cache .hypothesis .compat
