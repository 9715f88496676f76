# Every target bootstraps its own virtualenv, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test venv clean-venv system-deps

venv: $(STAMP)

# espeak-ng regenerates the demo corpus; its determinism test needs it. Installed when we may (root + apt).
system-deps:
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null) || \
	  echo "note: espeak-ng is not installed (apt-get install espeak-ng); the corpus generator tests will skip"; }

# Reinstall only when the package metadata changes; torch first so the CPU wheel on disk is used.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,decode,hf]"
	touch $(STAMP)

test: $(STAMP) system-deps
	$(PY) -m pytest -q -n 2 tests $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
