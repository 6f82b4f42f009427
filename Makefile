# SelM-D2: the two commands are `make demo` and `make test`; both install what is missing.
#
# Installs into the active virtualenv when there is one, else into ./.venv.
PYTHON ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PY := $(VENV)/bin/python
# The torch pair that exists offline on the reference machines (CUDA build, runs on CPU too).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.selm_d2-installed

.PHONY: install test test-fast demo bench app clean-demo

install: $(STAMP)

# Re-runs only when the inputs of the install change (quick no-op otherwise).
$(STAMP): setup.py tools/install_detectron2.py tools/fetch_mamba_reference.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,app]'
	$(PY) tools/fetch_mamba_reference.py
	@$(PY) -c "import torch, detectron2, selm_d2; print('installed: torch', torch.__version__, '| detectron2', detectron2.__version__)"
	@touch $(STAMP)

# Test files run on TEST_WORKERS processes (pytest-xdist), each file on one of them, so a
# file's module-scoped fixtures (the full-size model pairs) are built once. The 15 slowest
# tests are listed at the end, where the suite's time goes.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations 15

test: install
	$(PYTEST)

# The tests that take seconds: no full-size models, no multi-process runs, no browser.
test-fast: install
	$(PYTEST) -m "not slow and not dist and not browser"

demo: install
	$(PY) tools/run_demo.py

bench: install
	$(PY) tools/benchmark.py

# The web demo on http://127.0.0.1:7860 with the AVS-Synth model of `make demo`; trains nothing.
APP_CONFIG ?= configs/synth/ms3.yaml
APP_WEIGHTS ?= output/demo/selm/model_final.pth
APP_ARGS ?=
app: install
	@test -f $(APP_WEIGHTS) || { echo "No trained model at $(APP_WEIGHTS). Run 'make demo' first (it trains the AVS-Synth model on the CPU; docs/AVS_SYNTH.md gives its time), or give yours: make app APP_CONFIG=configs/ms3/selm_pvt_v2_b5.yaml APP_WEIGHTS=model_final.pth"; exit 1; }
	$(PY) demo/app.py --config-file $(APP_CONFIG) $(APP_ARGS) --opts MODEL.WEIGHTS $(APP_WEIGHTS)

clean-demo:
	rm -rf output/demo datasets/avs_synth
