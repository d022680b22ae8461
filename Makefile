# Two commands for a new user: `make demo` and `make test` (both install into .venv first).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.segman-installed

.PHONY: install test bench clean

install: $(STAMP)

$(STAMP): constraints.txt requirements.txt setup.py scripts/install_mmcv.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch torchvision
	$(PIP) install -c constraints.txt "setuptools<81" wheel ninja numpy
	$(PY) scripts/install_mmcv.py
	$(PIP) install -c constraints.txt -r requirements.txt
	$(PIP) install -c constraints.txt --no-deps mmsegmentation==0.30.0
	$(PIP) install -c constraints.txt --no-build-isolation "natten==0.21.7"
	$(PIP) install -c constraints.txt --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchvision, mmcv, mmcv.ops, mmseg, timm, einops, natten, segman; print('segman environment ready: torch', torch.__version__, '| mmcv', mmcv.__version__, '| mmseg', mmseg.__version__)"
	touch $@

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/ops_cpu.py

clean:
	rm -rf $(VENV) build *.egg-info
