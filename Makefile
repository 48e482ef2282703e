# Set-up and entry points. `make setup` creates .venv for this machine kind (CPU by default).
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup setup-gpu main test test-all sandbox clean

setup:
	@bash scripts/setup.sh cpu

setup-gpu:
	@bash scripts/setup.sh gpu

# README command 1: the main job on the embedded default.
main: setup
	.venv/bin/policylong compare runs/smoke.yaml

# README command 2: the tests (CI runs exactly this). test-all adds the `extended` ones.
test: setup
	$(PY) -m pytest -q -m "not gpu and not extended" --timeout 1800 --durations=15 tests; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

test-all: setup
	$(PY) -m pytest -q -m "not gpu" --timeout 1800 --durations=15 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

sandbox: setup
	.venv/bin/policylong sandbox build

clean:
	rm -rf runs/out runs/sandbox runs/mlflow.db runs/mlartifacts
