# Every target bootstraps its own virtualenv, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

XLA_VENV ?= $(HOME)/.cache/fairseq_lite/xla-venv
XLA_STAMP := $(XLA_VENV)/.installed-fairseq-lite

.PHONY: demo demo-long test test-xla bench venv clean-venv system-deps fairseq-fixtures gpu-wheels

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
	$(PY) -m pip install -q -e ".[dev,decode,hf,bench,hubert]"
	touch $(STAMP)

# The main job on the bundled corpus (scripts/run_demo.py; DEMO_ARGS e.g. --pretrain-updates 1500); espeak-ng
# synthesises its unlabelled pool and unseen-voices split. demo-long: the same with longer training and a trainable
# CNN in fine-tuning (<= 1 hour; RESULTS.md).
demo: $(STAMP) system-deps
	$(PY) scripts/run_demo.py $(DEMO_ARGS)

DEMO_LONG_FLAGS ?= --pretrain-updates 3000 --finetune-updates 2000 --finetune-overrides model.feature_grad_mult=1.0
demo-long: $(STAMP) system-deps
	$(PY) scripts/run_demo.py --out demo_out/long $(DEMO_LONG_FLAGS) $(DEMO_ARGS)

test: $(STAMP) system-deps
	$(PY) -m pytest -q -n 2 tests $(PYTEST_ARGS)

# Benchmarks against HF Transformers and pyctcdecode; writes README's Performance table (BENCH_ARGS e.g. --quick).
bench: $(STAMP)
	$(PY) scripts/bench/run_all.py $(BENCH_ARGS)

# The wheels scripts/bench/gpu_check.sh installs on a GPU machine without network (its python3 3.12 holds torch).
GPU_WHEEL_FLAGS := --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 -d .whl
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q $(GPU_WHEEL_FLAGS) hydra-core==1.3.8 omegaconf==2.3.1 soundfile==0.14.0 soxr==1.1.0 \
	  editdistance==0.8.1 jiwer==4.0.0 rapidfuzz==3.14.6
	$(PY) -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # hydra's parser: no wheel on PyPI

# torch-xla needs torch 2.9, so it lives in its own venv outside the repo (about 4.3 GB of downloads once).
$(XLA_STAMP): setup.py
	test -x $(XLA_VENV)/bin/python || $(PYTHON) -m venv $(XLA_VENV)
	$(XLA_VENV)/bin/python -m pip install -q --upgrade pip
	$(XLA_VENV)/bin/python -m pip install -q torch==2.9.0 torch-xla==2.9.0
	$(XLA_VENV)/bin/python -m pip install -q -e . pytest
	touch $(XLA_STAMP)

# One XLA CPU replica per run: torch-xla 2.9's CPU client cannot join several (CPU_NUM_DEVICES=2 aborts the
# all-reduce rendezvous), so the multi-core launcher runs with one replica and is compared with the CPU trainer.
test-xla: $(XLA_STAMP)
	PJRT_DEVICE=CPU OMP_NUM_THREADS=1 $(XLA_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_train_xla.py

# Regenerates tests/fixtures/fairseq{,_lite_written} with GENUINE fairseq 0.12.2 (its own venv, ~80 s to build once).
# Not needed by `make test`, which reads the committed files.
FAIRSEQ_VENV ?= $(HOME)/.cache/fairseq_lite/fairseq-0.12.2-venv
SHARED_TOOLS ?= ../shared/tools
fairseq-fixtures: $(STAMP)
	FAIRSEQ_VENV=$(FAIRSEQ_VENV) bash $(SHARED_TOOLS)/setup_fairseq_venv.sh
	$(FAIRSEQ_VENV)/bin/pip install -q scikit-learn joblib npy-append-array  # fairseq's simple_kmeans scripts
	$(PY) scripts/fairseq_fixtures/make.py --fairseq-python $(FAIRSEQ_VENV)/bin/python

clean-venv:
	rm -rf $(VENV)
