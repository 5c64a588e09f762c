# make install: the venv, torch (CPU build, only if missing) and irt4 in editable mode with its extension.
# make test: lint, then the tests. make demo: the end-to-end demo.
PY := .venv/bin/python
PIP := $(PY) -m pip
RUFF := .venv/bin/ruff
LINTED := irt4 kernels bench tests
TORCH_VERSION := 2.13.0
# Rebuild the editable install when the build description or the C++/CUDA sources change; the persistent
# build/ directory keeps that rebuild incremental.
INSTALL_STAMP := .venv/.irt4-installed
BUILD_INPUTS := pyproject.toml CMakeLists.txt $(wildcard csrc/*)

.PHONY: install test demo clean

install: $(INSTALL_STAMP)

$(PY):
	python3 -m venv .venv

$(INSTALL_STAMP): $(PY) $(BUILD_INPUTS)
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install scikit-build-core cmake ninja
	$(PIP) install --no-build-isolation -e '.[dev]'
	touch $@

test: install
	$(RUFF) format --check $(LINTED)
	$(RUFF) check $(LINTED)
	$(PY) -m pytest -q -p no:cacheprovider

demo: install
	$(PY) -m irt4.demo

clean:
	rm -rf build .venv demo-out runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find irt4 -name '_C*.so' -delete
