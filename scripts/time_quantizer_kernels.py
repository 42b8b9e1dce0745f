"""The inference kernels of the non-uniform quantizers, and of the uniform one with a zero point per
head, on DeiT-T-sized activations (batch 32: attention map 32x3x197x197, post-GELU 32x197x768,
per-head q 32x3x197x64), 4 bits, 1 thread,
best of 15 calls each, the kernels interleaved, under the evaluation heap (as a job evaluates).
It times the code of whichever tree is first on the path, so a before/after pair is

    python scripts/time_quantizer_kernels.py                       # this tree
    (cd OLD && PYTHONPATH=OLD python /path/to/scripts/time_quantizer_kernels.py)   # a git worktree
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import ptqbench
from ptqbench.heap import every_block_reused
from ptqbench.quant.sulq import sulq_fake_quant
from ptqbench.quant.twin_uniform import twin_gelu_fake_quant, twin_softmax_fake_quant
from ptqbench.quant.two_scale import v2sf_fake_quant
from ptqbench.quant.uniform import UniformQuantizer


def kernels() -> dict:
    g = torch.Generator().manual_seed(0)
    attn = torch.softmax(3 * torch.randn(32, 3, 197, 197, generator=g), -1)
    gelu = F.gelu(2 * torch.randn(32, 197, 768, generator=g))
    q = torch.randn(32, 3, 197, 64, generator=g)
    split = torch.tensor(2.0**-3)
    eta = 0.01
    u = torch.log2(attn + eta)
    lo, hi = u.min(), u.max()
    s_gelu, k = torch.tensor(float(gelu.max()) / (8 * 7)), torch.tensor(3.0)
    s_attn = torch.tensor(1.0 / (8 * 7))
    head = UniformQuantizer(4, "q", symmetric=True, channel_axis=1)
    head.set_params(torch.tensor([0.05, 0.11, 0.3]), torch.zeros(3), 1)
    neg, pos = torch.tensor(0.17 / 8), torch.tensor(float(gelu.max()) / 7)
    asym = UniformQuantizer(4, "q", channel_axis=1)  # the grid-search family's matmul operands
    asym.set_params(torch.tensor([0.05, 0.11, 0.3]), torch.tensor([7.0, 8.0, 6.0]), 1)
    probs = UniformQuantizer(4, "post_softmax", channel_axis=1)
    probs.set_params(torch.tensor([0.004, 0.01, 0.02]), torch.tensor([0.0, 1.0, 0.0]), 1)
    return {
        "twin softmax, regions added (ptq4vit)": lambda: twin_softmax_fake_quant(attn, split, 8, True),
        "twin softmax, one region (ptq4vit reading)": lambda: twin_softmax_fake_quant(attn, split, 8),
        "twin GELU (ptq4vit)": lambda: twin_gelu_fake_quant(gelu, neg, pos, 8, 8),
        "V-2SF softmax (tsptq)": lambda: v2sf_fake_quant(attn, s_attn, torch.tensor(0.0), k, 8),
        "V-2SF GELU, zero point 1 (tsptq)": lambda: v2sf_fake_quant(gelu, s_gelu, torch.tensor(1.0), k, 8),
        "SULQ (ias)": lambda: sulq_fake_quant(attn, eta, lo, hi, 16, 16),
        "uniform per head, symmetric (ptq4vit q, k, v)": lambda: head(q),
        "uniform per head, zero points (qdrop, brecq, aphq, fimaq q, k, v)": lambda: asym(q),
        "uniform per head, attention map, zero points (the same methods)": lambda: probs(attn),
    }


def main() -> None:
    torch.set_num_threads(1)
    fns = kernels()
    best = dict.fromkeys(fns, float("inf"))
    with torch.no_grad(), every_block_reused():
        for _ in range(15):
            for name, f in fns.items():
                t0 = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - t0)
    print(f"code: {ptqbench.__file__.rsplit('/ptqbench/', 1)[0]}")
    for name, t in best.items():
        print(f"| {name} | {t * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
