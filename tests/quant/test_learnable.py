"""AdaRound's soft-rounded weight and regularizer save only V and recompute h in the backward; these
check that their values and gradients are bit for bit those of the plain expressions autograd
differentiates (the formulas of Nagel et al. 2020 as QDrop and BRECQ write them)."""

import pytest
import torch

from ptqbench.quant.learnable import GAMMA, ZETA, AdaRoundQuantizer
from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.uniform import UniformQuantizer


def _plain_h(alpha: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _rounder(shape: tuple[int, ...], per_channel: bool, seed: int) -> tuple[AdaRoundQuantizer, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[0].zero_()  # a constant row: its codes sit on the zero point
    base = UniformQuantizer(3, "weight", channel_axis=0 if per_channel else None, search=RangeSearch("minmax"))
    base.calibrate(w)
    ada = AdaRoundQuantizer(base, w)
    with torch.no_grad():  # V over the whole line: h saturated at 0 and 1, and in between
        ada.alpha.copy_(torch.randn(shape, generator=g) * 4)
        ada.alpha.view(-1)[:4] = torch.tensor([0.0, 50.0, -50.0, 2.3978952728])
    return ada, w


@pytest.mark.parametrize("shape,per_channel", [((24, 40), True), ((24, 40), False), ((6, 3, 4, 4), True)])
def test_soft_rounded_weight_and_its_gradient_match_the_plain_expression(shape, per_channel):
    ada, w = _rounder(shape, per_channel, seed=1)
    s, z = ada.base.elementwise_params(w)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.enable_grad():
        got = ada(w)
        (got_grad,) = torch.autograd.grad(got, ada.alpha, grad_out)
        alpha = ada.alpha.detach().clone().requires_grad_(True)
        codes = ada.w_floor + _plain_h(alpha)
        want = (torch.clamp(codes + z, ada.base.qmin, ada.base.qmax) - z) * s
        (want_grad,) = torch.autograd.grad(want, alpha, grad_out)
    assert torch.equal(got, want)
    assert torch.equal(got_grad, want_grad)
    assert ada.s.numel() == (shape[0] if per_channel else 1)  # the grid is held per row, not per weight


@pytest.mark.parametrize("beta", [20.0, 11.3, 2.0, 1.0])
def test_rounding_regularizer_and_its_gradient_match_the_plain_expression(beta):
    ada, _ = _rounder((24, 40), True, seed=3)
    weight = torch.tensor(0.01)  # the round weight the loss multiplies the regularizer by
    with torch.enable_grad():
        got = ada.regularizer(beta)
        (got_grad,) = torch.autograd.grad(weight * got, ada.alpha)
        alpha = ada.alpha.detach().clone().requires_grad_(True)
        want = (1 - (2 * _plain_h(alpha) - 1).abs().pow(beta)).sum()
        (want_grad,) = torch.autograd.grad(weight * want, alpha)
    assert torch.equal(got, want)
    assert torch.equal(got_grad, want_grad)
