"""log-sqrt2 inference on one DeiT-T-sized attention map (32x3x197x197, 4 bits, 1 thread): a table
lookup of the dequantized codes (as TanQ's, `quant/tan.py`) against the arithmetic path
(`quant/log_sqrt2.py`), best of 15 calls each, alternating, with the evaluation heap
(`ptqbench.heap.every_block_reused`, as a job evaluates). The lookup keeps the arithmetic up to
the rounded code, then clamps the code to [0, 2^b] (2^b: out of range, value 0), converts it to
int32 and gathers; the table is the arithmetic's own result per code. It first checks that the two
give the same bits on the map. Not in the package: it was slower (docs/benchmarks.md).

    python scripts/time_log_sqrt2_lookup.py
"""

from __future__ import annotations

import torch
from interleaved_timing import best_cpu_seconds  # scripts/: run as `python scripts/...`

from ptqbench.heap import every_block_reused
from ptqbench.quant.log_sqrt2 import log_sqrt2_fake_quant

BITS, PER_OCTAVE = 4, 2


def lookup_table(delta: torch.Tensor) -> torch.Tensor:
    """The arithmetic's value of every code q in 0..2^b (q = 2^b: 0), computed on a long tensor
    (the vectorized kernels) and checked against one element at a time (the scalar tail)."""
    n = 2**BITS
    neg_codes = -torch.arange(n + 1, dtype=torch.float32)
    vectorized = neg_codes.repeat(64).mul_(1.0 / PER_OCTAVE).exp2_().mul_(delta)[: n + 1].clone()
    scalar = torch.cat([neg_codes[i : i + 1].clone().mul_(1.0 / PER_OCTAVE).exp2_().mul_(delta) for i in range(n + 1)])
    if not torch.equal(vectorized, scalar):
        raise SystemExit("the vectorized and scalar exp2 differ on this CPU: no table")
    vectorized[n] = 0.0
    return vectorized


def lookup(x: torch.Tensor, delta: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    y = torch.div(x, delta)
    y.log2_().mul_(-float(PER_OCTAVE)).round_().clamp_(0.0, float(2**BITS))  # the code q (round is symmetric)
    if y.sum().isnan():
        return log_sqrt2_fake_quant(x, delta, BITS, PER_OCTAVE)
    return table.index_select(0, y.to(torch.int32).view(-1)).view_as(y)


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.softmax(torch.randn(32, 3, 197, 197, generator=g) * 3, dim=-1)
    delta = torch.tensor(float(x.max()) * 0.9)
    table = lookup_table(delta)
    with torch.no_grad(), every_block_reused():
        if not torch.equal(log_sqrt2_fake_quant(x, delta, BITS, PER_OCTAVE), lookup(x, delta, table)):
            raise SystemExit("the lookup differs from the arithmetic")
        cases = {"arithmetic": lambda: log_sqrt2_fake_quant(x, delta, BITS, PER_OCTAVE),
                 "lookup": lambda: lookup(x, delta, table)}
        best = best_cpu_seconds(cases, 15)
    print("bit-identical on the map; " + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in best.items())
          + f"; lookup / arithmetic {best['lookup'] / best['arithmetic']:.2f}")


if __name__ == "__main__":
    main()
