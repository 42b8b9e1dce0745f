"""Benchmark suite, run on request (`python -m ptqbench.bench`), never by the default tests.

Parts: `cost` (calibration wall time and peak memory per method), `eval` (evaluation throughput,
FP vs fake-quantized, and their ratio), `sweep` (wall time of a small sweep cold, warm = cache
hits with resume=false, and relaunched = every job skipped). Each measurement runs in its own
process so peaks and caches do not leak between cells. See docs/benchmarks.md.
"""
