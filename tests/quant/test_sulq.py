"""SULQ (I&S-ViT's post-softmax quantizer): the grid as released, the shift picked by MSE, and the
released straight-through gradient."""

import math

import pytest
import torch

from ptqbench.quant.sulq import SULQQuantizer, sulq_fake_quant


def _attention(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(4, 2, 16, 16, generator=g), dim=-1)


def test_fit_picks_the_least_mse_shift_on_the_fit_grid():
    x = _attention()
    q = SULQQuantizer(4, "post_softmax")
    q.calibrate(x)
    errs = {}
    for eta in q.biases:
        u = torch.log2(x + eta)
        errs[eta] = float((sulq_fake_quant(x, eta, u.min(), u.max(), 15, 15) - x).pow(2).mean())
    assert float(q.eta) == pytest.approx(min(errs, key=errs.get))
    u = torch.log2(x + float(q.eta))
    assert float(q.lo) == pytest.approx(float(u.min())) and float(q.hi) == pytest.approx(float(u.max()))


@pytest.mark.parametrize("released", [True, False])
def test_levels_are_integer_powers_of_two_minus_the_shift(released):
    x = _attention(1)
    q = SULQQuantizer(3, "post_softmax", released_asymmetry=released)
    q.calibrate(x)
    out = q(x)
    eta = float(q.eta)
    exps = torch.log2(out + eta)
    assert torch.allclose(exps, exps.round(), atol=1e-5)
    assert set(out.unique().tolist()) <= set(q.levels().tolist())
    # the exponent is an integer in [round(lo), round(hi)]: at most that many levels, whatever the bits
    assert len(q.levels()) <= round(float(q.hi)) - round(float(q.lo)) + 1


def test_released_forward_grid_has_one_more_code_and_a_finer_step():
    x = _attention(2)
    a, b = SULQQuantizer(2, "post_softmax"), SULQQuantizer(2, "post_softmax", released_asymmetry=False)
    a.calibrate(x)
    b.calibrate(x)
    assert float(a.eta) == float(b.eta)  # the fit is the same
    lo, hi, eta = a.lo, a.hi, float(a.eta)
    expect = torch.exp2(torch.round(torch.clamp(torch.round((torch.log2(x + eta) - lo) / ((hi - lo) / 4)), 0, 4)
                                    * ((hi - lo) / 4) + lo)) - eta
    assert torch.equal(a(x), expect)
    expect3 = torch.exp2(torch.round(torch.clamp(torch.round((torch.log2(x + eta) - lo) / ((hi - lo) / 3)), 0, 3)
                                     * ((hi - lo) / 3) + lo)) - eta
    assert torch.equal(b(x), expect3)


def test_gradient_is_the_released_straight_through_one():
    x = _attention(3).requires_grad_(True)
    q = SULQQuantizer(4, "post_softmax")
    q.calibrate(x.detach())
    out = q(x)
    out.sum().backward()
    eta = float(q.eta)
    # d/dx 2^(round_ste(lo + round_ste((log2(x + eta) - lo) / d) d)) = 2^(...) / (x + eta) inside the code range
    expect = (out.detach() + eta) / (x.detach() + eta)
    assert torch.allclose(x.grad, expect, rtol=1e-5)


def test_refuses_negative_input_bad_shifts_and_trained_bounds():
    with pytest.raises(ValueError, match="fixed"):
        sulq_fake_quant(torch.rand(4), 0.01, torch.tensor(-7.0, requires_grad=True), torch.tensor(0.0), 15, 15)
    with pytest.raises(ValueError, match="non-negative"):
        SULQQuantizer(4, "post_softmax").calibrate(torch.tensor([-0.5, 0.5]))
    with pytest.raises(ValueError, match="positive"):
        SULQQuantizer(4, "post_softmax", biases=(0.0, 0.1))
    assert math.isfinite(float(SULQQuantizer(4, "post_softmax").eta))
