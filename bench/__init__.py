"""irt4 benchmarks: `python -m bench.run` (model-level), `python bench/kernels.py` (kernels)."""
