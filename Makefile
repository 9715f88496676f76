# Every target bootstraps its own virtualenv, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test venv clean-venv

venv: $(STAMP)

# Reinstall only when the package metadata changes; torch first so the CPU wheel on disk is used.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,decode,hf]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
