# Two commands for a new user: `make demo` and `make test` (both install into .venv first; `make VENV=DIR ...`
# puts the environment elsewhere, e.g. on a larger disk).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.segman-installed
TEST_STAMP := $(VENV)/.segman-test-installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): constraints.txt requirements.txt setup.py scripts/install_mmcv.py
	$(PYTHON) scripts/check_disk_space.py $(VENV)
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

test: $(TEST_STAMP)
	$(PY) -m pytest -q tests

# pytest and the ONNX tools are no runtime requirement: they come with setup.py's test and deploy extras
# (pytest's settings are in pyproject.toml).
$(TEST_STAMP): $(STAMP) setup.py
	$(PIP) install -c constraints.txt --no-build-isolation -e ".[test,deploy]"
	touch $@

# SegMAN-T from scratch on a generated toy set, on the CPU: train, evaluate, draw predictions beside the ground truth.
DEMO := demo_output
SEG := cd segmentation && $(abspath $(PY))
demo: install
	$(SEG) tools/make_toy_dataset.py data/toy_shapes
	$(SEG) tools/train.py local_configs/segman/tiny/segman_t_toy.py --work-dir ../$(DEMO)/train --seed 0 --no-validate
	$(SEG) tools/test.py local_configs/segman/tiny/segman_t_toy.py ../$(DEMO)/train/latest.pth --eval mIoU --work-dir ../$(DEMO)
	$(SEG) tools/plot_loss.py ../$(DEMO)/train --out ../$(DEMO)/loss_curve.png
	$(SEG) tools/show_predictions.py local_configs/segman/tiny/segman_t_toy.py ../$(DEMO)/train/latest.pth --num 4 --out ../$(DEMO)/predictions.png
	$(SEG) tools/image_demo.py data/toy_shapes/images/validation/toy_validation_00000.jpg local_configs/segman/tiny/segman_t_toy.py ../$(DEMO)/train/latest.pth --out-file ../$(DEMO)/prediction.png
	@echo "demo done: data in segmentation/data/toy_shapes, checkpoints and logs (TensorBoard: $(DEMO)/train/tf_logs) in $(DEMO)/train, metrics JSON in $(DEMO), loss curve $(DEMO)/loss_curve.png, image | ground truth | prediction of 4 validation images $(DEMO)/predictions.png, one prediction blended over its image $(DEMO)/prediction.png"

bench: install
	$(PY) benchmarks/ops_cpu.py

clean:
	rm -rf $(VENV) build *.egg-info
