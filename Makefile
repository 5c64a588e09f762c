# make install: the venv, torch (CPU build, only if missing) and irt4 in editable mode with its extension and
# the [sim] (sionna-rt), [ort] (onnx, onnxruntime) and [geo] (pyogrio, pyproj, rasterio, osmium) extras,
# plus Debian's libLLVM 19 for Sionna's CPU backend when missing (root + apt only).
# make test: lint, then the tests. make demo: the end-to-end demo. make bench: the quick CPU benchmarks
# (bench/run.py: writes bench/results/<date>-cpu.json and regenerates bench/RESULTS.md).
PY := .venv/bin/python
PIP := $(PY) -m pip
RUFF := .venv/bin/ruff
LINTED := irt4 kernels bench tests
TORCH_VERSION := 2.13.0
# Rebuild the editable install when the build description or the C++/CUDA sources change; the persistent
# build/ directory keeps that rebuild incremental.
INSTALL_STAMP := .venv/.irt4-installed
BUILD_INPUTS := pyproject.toml CMakeLists.txt $(wildcard csrc/*)

.PHONY: install libllvm test demo bench clean

install: libllvm $(INSTALL_STAMP)

# Dr.Jit (under sionna-rt) aborts with libLLVM 14-16 and works with 19 (../shared/spec/sionna.md).
libllvm:
	@if ls /usr/lib/*/libLLVM.so.19* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update && apt-get install -y libllvm19; } || \
			echo "note: apt-get could not install libllvm19: irt4-data synth will not run, its test is skipped"; \
	else \
		echo "note: libLLVM 19 is missing and cannot be installed here (needs root and apt-get):" \
			"irt4-data synth will not run and its test is skipped; install libllvm19 or set DRJIT_LIBLLVM_PATH"; \
	fi

$(PY):
	python3 -m venv .venv

$(INSTALL_STAMP): $(PY) $(BUILD_INPUTS)
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install scikit-build-core cmake ninja
	$(PIP) install --no-build-isolation -e '.[dev,sim,ort,geo]'
	touch $@

test: install
	$(RUFF) format --check $(LINTED)
	$(RUFF) check $(LINTED)
	$(PY) -m pytest -q -p no:cacheprovider

demo: install
	$(PY) -m irt4.demo

bench: install
	$(PY) -m bench.run --quick

clean:
	rm -rf build .venv demo-out runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find irt4 -name '_C*.so' -delete
