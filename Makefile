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

.PHONY: install test demo bench ablate clean-demo

install: $(STAMP)

# Re-runs only when the inputs of the install change (quick no-op otherwise).
$(STAMP): setup.py tools/install_detectron2.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@$(PY) -c "import torch, detectron2, selm_d2; print('installed: torch', torch.__version__, '| detectron2', detectron2.__version__)"
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) tools/run_demo.py

bench: install
	$(PY) tools/benchmark.py

# Paper Tables 3-8 on AVS-Synth MS3 (CPU recipe, seeds 0 1 2): hours on 2 CPU cores; resumable.
ablate: install
	$(PY) tools/ablate.py

clean-demo:
	rm -rf output/demo datasets/avs_synth
