"""Per-layer quantization error: sensitivity analysis (`python -m ptqbench.analyze`) and the
figures of the per-layer SQNR that every job records (ptqbench.analyze.sqnr)."""
