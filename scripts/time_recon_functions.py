"""CPU time of forward + backward of the reconstruction's autograd Functions against the plain
expressions they replace, in one process, interleaved, best of 7 (1 thread): the trained uniform
fake quantizer on a ViT-B fc2 input at batch 8 ([8, 197, 3072], per-tensor step size learned), and
AdaRound's soft-rounded weight plus its regularizer on ViT-B's fc1 weight ([3072, 768]).

Usage: python scripts/time_recon_functions.py
"""
import time

import torch

from ptqbench.quant.learnable import GAMMA, ZETA, _RoundingRegularizer, _SoftRounded
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
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(7):
        for name, run in cases.items():
            t = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - t)
    for name, sec in best.items():
        print(f"{name}: {sec * 1000:.1f} ms")
    print(f"Function / expression: fake quant {best['fake quant, Function'] / best['fake quant, expression']:.2f}, "
          f"AdaRound {best['AdaRound, Functions'] / best['AdaRound, expressions']:.2f}")


if __name__ == "__main__":
    main()
