"""CPU time of forward + backward of the reconstruction's autograd Functions against the plain
expressions they replace, in one process, interleaved, best of 7 (1 thread): the trained uniform
fake quantizer on a ViT-B fc2 input at batch 8 ([8, 197, 3072], per-tensor step size learned), and
AdaRound's soft-rounded weight plus its regularizer on ViT-B's fc1 weight ([3072, 768]), and the
post-softmax quantizers on a ViT-B attention map at batch 8 ([8, 12, 197, 197]): SULQ (ias; bounds
fixed, gradient to x) and DFQ below="clamp" (aiq's default) and below="zero" (gradients to x, b1
and b2).

Usage: python scripts/time_recon_functions.py
"""
import torch
from interleaved_timing import best_cpu_seconds  # scripts/: run as `python scripts/...`

from ptqbench.quant.base import round_ste
from ptqbench.quant.dynamic_focus import focus_fake_quant, focus_ste_expression
from ptqbench.quant.learnable import GAMMA, ZETA, _RoundingRegularizer, _SoftRounded
from ptqbench.quant.sulq import sulq_fake_quant
from ptqbench.quant.uniform import fake_quant


def _h(alpha: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x0, s0, z0 = torch.randn(8, 197, 3072, generator=g), torch.tensor(0.1), torch.tensor(7.0)
    grad_x = torch.randn(x0.shape, generator=g)
    alpha0 = torch.randn(3072, 768, generator=g)
    w_floor = torch.floor(torch.randn(3072, 768, generator=g) * 4)
    s, z = torch.rand(3072, 1, generator=g) + 0.1, torch.full((3072, 1), 7.0)
    grad_w = torch.randn(3072, 768, generator=g)
    attn0 = torch.softmax(torch.randn(8, 12, 197, 197, generator=g) * 3, dim=-1)
    grad_a = torch.randn(attn0.shape, generator=g)
    eta, lo, hi = 0.01, torch.tensor(-6.6), torch.tensor(0.0)

    def expression_sulq(a):
        d = (hi - lo) / 16
        codes = torch.clamp(round_ste((torch.log(a + eta) / torch.log(torch.tensor(2.0)) - lo) / d), 0, 16)
        return torch.exp2(round_ste(codes * d + lo)) - eta

    def attention_step(fn, bounds: bool) -> None:
        a = attn0.clone().requires_grad_(True)
        if bounds:
            b1, b2 = torch.tensor(0.002, requires_grad=True), torch.tensor(0.3, requires_grad=True)
            fn(a, b1, b2).backward(grad_a)
        else:
            fn(a).backward(grad_a)

    def expression_fq(x, sc):
        v = x / sc
        return (torch.clamp(v + (torch.round(v) - v).detach() + z0, 0, 15) - z0) * sc

    def fake_quant_step(fn) -> None:
        x, sc = x0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
        fn(x, sc).backward(grad_x)

    def adaround_step(weight, regularizer) -> None:
        alpha = alpha0.clone().requires_grad_(True)
        ((weight(alpha) * grad_w).sum() + 0.01 * regularizer(alpha)).backward()

    cases = {
        "fake quant, expression": lambda: fake_quant_step(expression_fq),
        "fake quant, Function": lambda: fake_quant_step(lambda x, sc: fake_quant(x, sc, z0, 0, 15)),
        "AdaRound, expressions": lambda: adaround_step(
            lambda a: (torch.clamp(w_floor + _h(a) + z, 0, 15) - z) * s.expand_as(a),
            lambda a: (1 - (2 * _h(a) - 1).abs().pow(10.0)).sum()),
        "AdaRound, Functions": lambda: adaround_step(
            lambda a: _SoftRounded.apply(a, w_floor, s, z, 0, 15), lambda a: _RoundingRegularizer.apply(a, 10.0)),
        "SULQ, expression": lambda: attention_step(expression_sulq, False),
        "SULQ, Function": lambda: attention_step(lambda a: sulq_fake_quant(a, eta, lo, hi, 16, 16), False),
        "DFQ, expression": lambda: attention_step(lambda a, b1, b2: focus_ste_expression(a, b1, b2, 4), True),
        "DFQ, Function": lambda: attention_step(lambda a, b1, b2: focus_fake_quant(a, b1, b2, 4, "clamp"), True),
        "DFQ zero, expression": lambda: attention_step(lambda a, b1, b2: focus_ste_expression(a, b1, b2, 4, "zero"), True),
        "DFQ zero, Function": lambda: attention_step(lambda a, b1, b2: focus_fake_quant(a, b1, b2, 4, "zero"), True),
    }
    best = best_cpu_seconds(cases, 7)
    for name, sec in best.items():
        print(f"{name}: {sec * 1000:.1f} ms")
    print(f"Function / expression: fake quant {best['fake quant, Function'] / best['fake quant, expression']:.2f}, "
          f"AdaRound {best['AdaRound, Functions'] / best['AdaRound, expressions']:.2f}, "
          f"SULQ {best['SULQ, Function'] / best['SULQ, expression']:.2f}, "
          f"DFQ {best['DFQ, Function'] / best['DFQ, expression']:.2f}, "
          f"DFQ zero {best['DFQ zero, Function'] / best['DFQ zero, expression']:.2f}")


if __name__ == "__main__":
    main()
