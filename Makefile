# The two commands of the README: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/mnist_cnn.yaml

.PHONY: setup run test lint clean

setup: $(STAMP)

# torch is installed first, on its own and pinned: any other version resolves to multi-GB
# CUDA builds. The constraints file keeps later installs from moving it.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@$(PY) -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(0 if v.startswith('2.13.0') else 'torch must be 2.13.0, got ' + v)"
	@touch $(STAMP)

run: setup
	$(VENV)/bin/edgeslim run $(CONFIG)

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check pipeline stages tests bench

clean:
	rm -rf $(VENV) artifacts/*/ .pytest_cache
