"""Which order of adding b1's four gradient parts reproduces autograd on DFQ's straight-through
expression (below="clamp", 4 bits): over DRAWS random draws of an attention-like input, the count
of draws where each order gives autograd's b1 gradient bit for bit. The parts: J from the output's
`b1 +`, F from `clamped - b1`, D from `max(x, b1)`, A from the step's span `b2 - b1`.
`quant/dynamic_focus.py:_FocusSTE` adds them as ((J + F) + D) + A.

    python scripts/dfq_bound_gradient_order.py [DRAWS=300]
"""
import sys

import torch

from ptqbench.quant.dynamic_focus import _focus_steps, focus_ste_expression

BITS = 4


def parts(x: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """b1's four gradient parts, each reduced to a scalar as autograd reduces it."""
    span, step, raised, offset, code = _focus_steps(x, b1, b2, 2**BITS - 1)
    g_step = (grad * code).sum()
    g_code = grad * step
    g_offset = g_code / step
    g_step = g_step + (-g_code * ((offset / step) / step)).sum()
    g_raised = torch.where(raised == b2, g_offset / 2, g_offset).masked_fill_(raised > b2, 0)
    return {"J": grad.sum(), "F": (-g_offset).sum(),
            "D": torch.where(x == b1, g_raised / 2, g_raised).masked_fill_(x > b1, 0).sum(),
            "A": -torch.where(span >= 1e-8, g_step / (2**BITS - 1), 0.0)}


def main() -> None:
    draws = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    orders = ("JFDA", "JDFA", "JAFD")
    hits = dict.fromkeys(orders, 0)
    for seed in range(draws):
        g = torch.Generator().manual_seed(seed)
        x, grad = torch.rand(8, 500, generator=g) * 1.2 - 0.1, torch.randn(8, 500, generator=g)
        b1 = torch.tensor(0.004 + 0.01 * float(torch.rand((), generator=g)), requires_grad=True)
        b2 = torch.tensor(0.9, requires_grad=True)
        (want,) = torch.autograd.grad(focus_ste_expression(x, b1, b2, BITS), [b1], grad)
        p = parts(x, b1.detach(), b2.detach(), grad)
        for order in orders:
            total = p[order[0]]
            for name in order[1:]:
                total = total + p[name]
            hits[order] += bool(total == want)
    for order in orders:
        print(f"(({order[0]} + {order[1]}) + {order[2]}) + {order[3]}: {hits[order]} of {draws} draws equal autograd's")


if __name__ == "__main__":
    main()
