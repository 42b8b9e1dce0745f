"""The inference fast paths of the non-uniform quantizers give, bit for bit, what the reference
formulas written here give (the formulas the quantizers used before their passes were fused).

Inputs mix random values, exact rounding ties (k + 1/2 steps), region borders, zeros, negative
values and values outside the range."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ptqbench.quant.base import round_ste
from ptqbench.quant.dynamic_focus import focus_fake_quant, focus_ste_expression
from ptqbench.quant.twin_uniform import twin_gelu_fake_quant, twin_softmax_fake_quant
from ptqbench.quant.two_scale import v2sf_fake_quant
from ptqbench.quant.uniform import fake_quant


def ref_fake_quant(x, scale, zero, qmin, qmax):
    """(clamp(round(x / s) + z, qmin, qmax) - z) * s, out of place."""
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def ties(step: float, lo: int, hi: int) -> torch.Tensor:
    """Values exactly at (k + 1/2) * step and at k * step for k in [lo, hi)."""
    k = torch.arange(lo, hi, dtype=torch.float32)
    return torch.cat([(k + 0.5) * step, k * step])


def mixed(*parts: torch.Tensor, n: int = 4000, seed: int = 0, low: float = -0.5, high: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rnd = torch.rand(n, generator=g) * (high - low) + low
    small = torch.rand(n, generator=g) * 1e-3  # dense near 0, like attention probabilities
    x = torch.cat([rnd, small, torch.zeros(3), torch.tensor([-0.0, 1.0, 2.0, -1.0, math.nan, math.inf, -math.inf]), *parts])
    return x[torch.randperm(x.numel(), generator=g)].reshape(1, -1)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN positions differ"
    a, b = a.nan_to_num(nan=0.0), b.nan_to_num(nan=0.0)
    assert torch.equal(a, b), f"{int((a != b).sum())} of {a.numel()} elements differ"


# -- TwinUniform (PTQ4ViT) ------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [3, 4, 6, 8])
@pytest.mark.parametrize("m", [0, 1, 3, 7])
def test_twin_softmax_matches_two_branch_formula(bits, m):
    L = 2 ** (bits - 1)
    split = torch.tensor(2.0**-m)
    s_low, s_high = split / (L - 1), torch.tensor(1.0 / (L - 1))
    x = mixed(ties(float(s_low), 0, L + 2), ties(float(s_high), 0, L + 2), split.reshape(1), low=0.0, high=1.2)
    zero = torch.zeros(())
    ref = torch.where(x < split, ref_fake_quant(x, s_low, zero, 0, L - 1), ref_fake_quant(x, s_high, zero, 0, L - 1))
    with torch.no_grad():
        assert_same(twin_softmax_fake_quant(x, split, L), ref)


@pytest.mark.parametrize("bits", [3, 4, 6, 8])
@pytest.mark.parametrize("m", [0, 1, 3, 7])
def test_twin_softmax_summed_regions_match_the_released_formula(bits, m):
    L = 2 ** (bits - 1)
    split = torch.tensor(2.0**-m)
    x = mixed(ties(float(split / (L - 1)), 0, L + 2), ties(1.0 / (L - 1), 0, L + 2), split.reshape(1), low=0.0, high=1.2)
    with torch.no_grad():
        assert_same(twin_softmax_fake_quant(x, split, L, sum_regions=True), ref_twin_softmax(x, split, L, sum_regions=True))


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_twin_gelu_matches_two_branch_formula(bits):
    L = 2 ** (bits - 1)
    neg, pos = torch.tensor(0.17 / (L - 1)), torch.tensor(2.3 / (L - 1))
    x = mixed(ties(float(neg), -L - 2, 1), ties(float(pos), 0, L + 2), low=-0.4, high=3.0)
    zero = torch.zeros(())
    ref = torch.where(x < 0, ref_fake_quant(x, neg, zero, -(L - 1), 0), ref_fake_quant(x, pos, zero, 0, L - 1))
    with torch.no_grad():
        assert_same(twin_gelu_fake_quant(x, neg, pos, L), ref)


def test_twin_autograd_path_unchanged():
    """Under autograd the two-branch formula still runs (gradients pass straight through)."""
    L = 8
    x = mixed(low=0.0, high=1.0)
    x = x[torch.isfinite(x)].requires_grad_(True)  # (straight-through rounding turns inf into NaN)
    y = twin_softmax_fake_quant(x, torch.tensor(0.25), L)
    assert y.requires_grad
    with torch.no_grad():
        assert_same(y.detach(), twin_softmax_fake_quant(x.detach(), torch.tensor(0.25), L))


# -- V-2SF (TSPTQ-ViT) ----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("zero_point", [0.0, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("k", [1, 3])
def test_v2sf_matches_two_branch_formula(bits, zero_point, k):
    L = 2 ** (bits - 1)
    zero_point = min(zero_point, L - 1)
    scale, z, shift = torch.tensor(0.013), torch.tensor(zero_point), torch.tensor(float(k))
    coarse = scale * 2.0**k
    thr = (L - 0.5 - z) * scale
    x = mixed(ties(float(scale), -L - 2, L + 2), ties(float(coarse), 0, L + 2), thr.reshape(1),
              torch.nextafter(thr, torch.tensor(-1.0)).reshape(1), low=-0.1, high=float(coarse) * L * 1.3)
    fine_ref = ref_fake_quant(x, scale, z, 0, L - 1)
    coarse_ref = ref_fake_quant(x, coarse, torch.zeros(()), 0, L - 1)
    ref = torch.where(x < thr, fine_ref, coarse_ref)
    with torch.no_grad():
        assert_same(v2sf_fake_quant(x, scale, z, shift, L), ref)


@pytest.mark.parametrize(("scale", "can_pass"), [(0.07782218605279922, True), (0.013, False)])
def test_v2sf_fine_bound_is_applied_whenever_a_fine_code_can_pass_it(scale, can_pass):
    """The fine region's own upper bound L-1-z binds only for a value just below a threshold that
    was rounded up, and only with L-z even (a tie at L-z-1/2 rounds to even): the fast path
    checks the largest value below the threshold and applies the bound exactly then."""
    from ptqbench.quant.two_scale import _fine_code_can_pass

    L, z, k = 4, torch.tensor(2.0), torch.tensor(2.0)
    scale = torch.tensor(scale)
    thr = (L - 0.5 - z) * scale
    largest_fine = torch.nextafter(thr, torch.tensor(-1.0))
    assert _fine_code_can_pass(float(thr), float(scale), L - 1 - float(z), torch.float32) == can_pass
    assert (float(torch.round(largest_fine / scale)) > L - 1 - float(z)) == can_pass
    x = mixed(ties(float(scale), -L - 2, L + 2), thr.reshape(1), largest_fine.reshape(1), low=-0.1, high=2.0)
    ref = torch.where(x < thr, ref_fake_quant(x, scale, z, 0, L - 1),
                      ref_fake_quant(x, scale * 2**k, torch.zeros(()), 0, L - 1))
    with torch.no_grad():
        assert_same(v2sf_fake_quant(x, scale, z, k, L), ref)


def test_v2sf_degenerate_threshold_uses_the_formula():
    """A zero point past the fine region (set by hand) leaves a non-positive threshold: the
    per-region bound argument of the fast path does not hold, and the formula runs."""
    L = 4
    scale, z, shift = torch.tensor(0.1), torch.tensor(4.0), torch.tensor(2.0)
    x = mixed(low=-1.0, high=1.0)
    ref = torch.where(x < (L - 0.5 - z) * scale, ref_fake_quant(x, scale, z, 0, L - 1),
                      ref_fake_quant(x, scale * 4, torch.zeros(()), 0, L - 1))
    with torch.no_grad():
        assert_same(v2sf_fake_quant(x, scale, z, shift, L), ref)


# -- DFQ (AIQViT), below="zero" ---------------------------------------------------------------------

def ref_focus_zero_masked(x: torch.Tensor, lo: float, b2: float, step: float) -> torch.Tensor:
    """The previous in-place inference path: clamp, grid, then multiply by a 0/1 mask of x >= lo/2."""
    y = F.threshold(x, lo, lo)
    y.clamp_(max=b2).sub_(lo).div_(step).round_().mul_(step).add_(lo)
    half = torch.tensor(lo / 2, dtype=x.dtype)
    below_half = float(torch.nextafter(half, torch.tensor(-math.inf, dtype=x.dtype)))
    keep = F.threshold(x, below_half, 0.0).sign_()
    return y.mul_(keep)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("b1,b2", [(0.0, 0.3), (-0.01, 0.3), (0.004, 0.3), (0.02, 0.9), (0.3, 0.3), (0.5, 0.2)])
def test_focus_zero_matches_masked_formula(bits, b1, b2):
    b1t, b2t = torch.tensor(b1), torch.tensor(b2)
    lo = b1t.clamp(min=0.0)
    step = (b2t - lo).clamp(min=1e-8) / (2**bits - 2)
    half = float(lo) / 2
    x = mixed(ties(float(step), 0, 2**bits + 1) + float(lo), torch.tensor([half, float(lo), b2, b2 * 2]),
              torch.nextafter(torch.tensor(half), torch.tensor(-1.0)).reshape(1), low=-0.05, high=1.2)
    with torch.no_grad():
        got = focus_fake_quant(x, b1t, b2t, bits, "zero")
    assert_same(got, ref_focus_zero_masked(x, float(lo), float(b2t), float(step)))
    # and the autograd formula (tensor ops, torch.where) agrees on a well-formed interval
    if b2 > max(b1, 0.0):
        xg = x[torch.isfinite(x)].clone().requires_grad_(True)
        got = got[torch.isfinite(x)]
        assert_same(focus_fake_quant(xg, b1t, b2t, bits, "zero").detach(), got)


def test_focus_zero_nan_and_inf_as_before():
    lo, b2, bits = torch.tensor(0.01), torch.tensor(0.5), 4
    x = torch.tensor([math.nan, math.inf, -math.inf, 0.0, 0.004, 0.006, 0.2])
    step = float((b2 - lo) / (2**bits - 2))
    with torch.no_grad():
        got = focus_fake_quant(x, lo, b2, bits, "zero")
    assert_same(got, ref_focus_zero_masked(x, 0.01, 0.5, step))
    assert torch.isnan(got[0]) and got[2] == 0 and got[1] == b2
    with torch.no_grad():  # lo = 0: NaN stays NaN too
        assert torch.isnan(focus_fake_quant(x, torch.tensor(0.0), b2, bits, "zero")[0])


# -- DFQ (AIQViT), below="clamp" --------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("b1,b2", [(0.0, 0.3), (-0.01, 0.3), (0.004, 0.3), (0.3, 0.3), (0.5, 0.2)])
def test_focus_clamp_inference_matches_the_tensor_formula(bits, b1, b2):
    b1t, b2t = torch.tensor(b1), torch.tensor(b2)
    step = (b2t - b1t).clamp(min=1e-8) / (2**bits - 1)
    x = mixed(ties(float(step), 0, 2**bits + 1) + b1, torch.tensor([b1, b2, b2 * 2]), low=-0.05, high=1.2)
    with torch.no_grad():
        got = focus_fake_quant(x, b1t, b2t, bits, "clamp")
    ref = b1t + step * torch.round((torch.minimum(torch.maximum(x, b1t), b2t) - b1t) / step)
    assert_same(got, ref)
    xg = x.clone().requires_grad_(True)  # the autograd path is that formula
    assert_same(focus_fake_quant(xg, b1t, b2t, bits, "clamp").detach(), ref)


# -- uniform: strided input -----------------------------------------------------------------------

def test_uniform_fake_quant_of_a_strided_view_is_contiguous_and_equal():
    """q, k, v are strided views of the qkv output; the fake-quantized copy is written contiguous
    (the next matmul needs no copy) with the values of the formula."""
    qkv = mixed(ties(0.05, -9, 9), n=1500 * 4).reshape(-1)[: 2 * 5 * 3 * 2 * 8].reshape(2, 5, 3, 2, 8)
    q = qkv.permute(2, 0, 3, 1, 4)[1].transpose(-2, -1)
    assert not q.is_contiguous()
    s, z = torch.tensor(0.05), torch.tensor(3.0)
    with torch.no_grad():
        got = fake_quant(q, s, z, 0, 15)
    assert got.is_contiguous()
    assert_same(got, ref_fake_quant(q, s, z, 0, 15))


def _transposed_layout(t: torch.Tensor) -> torch.Tensor:
    """The same values with the last two dimensions swapped in memory (as a transposed view is)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("layout", ["tensor", "head", "channel", "token"])
@pytest.mark.parametrize("learns", ["x", "scale", "both"])
@pytest.mark.parametrize("memory", ["contiguous", "x_transposed", "grad_transposed"])
def test_trained_fake_quant_values_and_gradients_match_the_ste_expression(layout, learns, memory):
    """The training path (reconstruction: LSQ step sizes, or FP weights through the quantizer)
    saves only x, s, z and recomputes the rest; values and gradients of x and s are bit for bit
    those autograd gives on the expression (ties, clamped codes, NaN and infinities included),
    also where x and the incoming gradient are laid out differently in memory (q, k, v are views:
    a reduction adds in memory order, so the scale's gradient follows the layout)."""
    x = mixed(ties(0.05, -9, 9), ties(0.11, -9, 9), n=3000).reshape(-1)[: 2 * 3 * 40 * 8].reshape(2, 3, 40, 8)
    g = torch.Generator().manual_seed(5)
    shape = {"tensor": (), "head": (1, 3, 1, 1), "channel": (8,), "token": (1, 1, 40, 1)}[layout]
    scale = (torch.rand(shape, generator=g) * 0.2 + 0.03) if shape else torch.tensor(0.05)
    zero = torch.randint(0, 8, shape, generator=g).float() if shape else torch.tensor(3.0)
    grad_out = torch.randn(x.shape, generator=g)
    if memory == "x_transposed":
        x = _transposed_layout(x)
    elif memory == "grad_transposed":
        grad_out = _transposed_layout(grad_out)

    def run(fn):
        xs, ss = x.clone().requires_grad_(learns != "scale"), scale.clone().requires_grad_(learns != "x")
        with torch.enable_grad():
            y = fn(xs, ss)
            grads = torch.autograd.grad(y, [t for t in (xs, ss) if t.requires_grad], grad_out)
        return y.detach(), grads

    def expression(xs, ss):
        v = xs / ss
        return (torch.clamp(v + (torch.round(v) - v).detach() + zero, 0, 15) - zero) * ss

    got, got_grads = run(lambda xs, ss: fake_quant(xs, ss, zero, 0, 15))
    want, want_grads = run(expression)
    assert_same(got, want)
    assert len(got_grads) == len(want_grads)
    for a, b in zip(got_grads, want_grads):
        assert_same(a, b)


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_head_quantizer_with_zero_points_all_zero_matches_the_broadcast_formula(symmetric):
    """Every zero point 0 (PTQ4ViT's symmetric per-head q, k, v): scalar clamp bounds, the values
    of the broadcast formula; a non-zero zero point keeps the broadcast bounds."""
    from ptqbench.quant.uniform import UniformQuantizer

    x = mixed(ties(0.05, -9, 9), ties(0.11, -9, 9), n=3000).reshape(-1)[: 2 * 3 * 40 * 8].reshape(2, 3, 40, 8)
    q = UniformQuantizer(4, "q", symmetric=symmetric, channel_axis=1)
    scale = torch.tensor([0.05, 0.11, 0.3])
    zero = torch.zeros(3) if symmetric else torch.tensor([0.0, 3.0, 7.0])
    q.set_params(scale, zero, 1)
    assert q.zero_point_free == symmetric
    with torch.no_grad():
        assert_same(q(x), ref_fake_quant(x, scale.view(1, 3, 1, 1), zero.view(1, 3, 1, 1), q.qmin, q.qmax))


@pytest.mark.parametrize("integral", [True, False])
@pytest.mark.parametrize("layout", ["head_scale_and_zero", "scalar_scale_head_zero", "token_scale_and_zero"])
def test_tensor_zero_points_give_the_formula_values(integral, layout):
    """A zero point per head or per token (tensor clamp bounds: the maximum / minimum passes) gives
    the broadcast formula's values bit for bit: rounding ties, NaN and infinities, a strided view of
    a qkv output, and the result written over its input."""
    qkv = mixed(ties(0.05, -9, 9), ties(0.11, -9, 9), ties(0.3, -9, 9), n=3000).reshape(-1)[: 2 * 40 * 3 * 3 * 8]
    q = qkv.reshape(2, 40, 3, 3, 8).permute(2, 0, 3, 1, 4)[0]  # [B, H, N, d], strided
    heads = torch.tensor([0.05, 0.11, 0.3]).view(1, 3, 1, 1)
    zeros = (torch.tensor([0.0, 3.0, 7.0]) if integral else torch.tensor([0.25, 3.5, 7.125])).view(1, 3, 1, 1)
    tokens = torch.arange(40, dtype=torch.float32).view(1, 1, 40, 1)
    scale, zero = {"head_scale_and_zero": (heads, zeros), "scalar_scale_head_zero": (torch.tensor(0.11), zeros),
                   "token_scale_and_zero": (0.05 + 0.01 * tokens, (tokens % 9) + (0.0 if integral else 0.5))}[layout]
    ref = ref_fake_quant(q, scale, zero, 0, 15)
    with torch.no_grad():
        assert_same(fake_quant(q, scale, zero, 0, 15, integral_zero_point=integral), ref)
        own = q.contiguous()
        out = fake_quant(own, scale, zero, 0, 15, integral_zero_point=integral, overwrite=True)
    assert out.data_ptr() == own.data_ptr()
    assert_same(out, ref)


# -- SULQ (I&S-ViT) ---------------------------------------------------------------------------------

def ref_sulq(x, eta, lo, hi, top_code, steps):
    """The formula out of place, ln(x) / ln(2) as the release computes log2."""
    d = (hi - lo) / steps
    u = torch.log(x + eta) / torch.log(torch.tensor(2.0))
    codes = torch.clamp(torch.round((u - lo) / d), 0, top_code)
    return torch.exp2(torch.round(codes * d + lo)) - eta


@pytest.mark.parametrize("bits", [3, 4, 6])
@pytest.mark.parametrize("eta", [0.001, 0.05, 1.0])
def test_sulq_inference_matches_the_formula(bits, eta):
    from ptqbench.quant.sulq import sulq_fake_quant

    x = mixed(low=0.0, high=1.0, seed=bits)
    u = torch.log(x.clamp(min=0) + eta) / math.log(2.0)
    lo, hi = u.nan_to_num(nan=0.0, posinf=0.0).min(), u.nan_to_num(nan=0.0, posinf=0.0).max()
    n = 2**bits
    # exact ties of the code rounding: log2(x + eta) at lo + (k + 1/2) d, back in the x domain
    tie_x = torch.exp2(lo + (torch.arange(n) + 0.5) * ((hi - lo) / n)) - eta
    x = torch.cat([x, tie_x[tie_x >= 0].reshape(1, -1)], dim=1)
    with torch.no_grad():
        for top, steps in ((n - 1, n - 1), (n, n)):
            assert_same(sulq_fake_quant(x, eta, lo, hi, top, steps), ref_sulq(x, eta, lo, hi, top, steps))


@pytest.mark.parametrize("bits", [3, 4, 6])
@pytest.mark.parametrize("eta", [0.001, 0.05, 1.0])
def test_sulq_training_path_values_and_gradient_match_the_ste_expression(bits, eta):
    """SULQ under autograd (fixed bounds) saves only its input and recomputes the rest: values and
    gradient bit for bit those autograd gives on the straight-through expression, with inputs at
    exact code ties and outside the fitted range (clamped codes), in a transposed layout too."""
    from ptqbench.quant.sulq import sulq_fake_quant

    x = mixed(low=0.0, high=1.0, seed=bits).clamp(min=0).nan_to_num(nan=0.25)
    u = torch.log(x + eta) / math.log(2.0)
    lo, hi = torch.quantile(u, 0.1), torch.quantile(u, 0.9)  # codes below 0 and above the top
    n = 2**bits
    tie_x = torch.exp2(lo + (torch.arange(n) + 0.5) * ((hi - lo) / n)) - eta
    x = torch.cat([x, tie_x[tie_x >= 0].reshape(1, -1)], dim=1)
    x = x[:, : x.numel() // 8 * 8].reshape(8, -1)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(bits))

    def expression(v, top, steps):
        d = (hi - lo) / steps
        codes = torch.clamp(round_ste((torch.log(v + eta) / torch.log(torch.tensor(2.0)) - lo) / d), 0, top)
        return torch.exp2(round_ste(codes * d + lo)) - eta

    for top, steps in ((n - 1, n - 1), (n, n)):
        for layout in (lambda t: t, lambda t: t.t().contiguous().t()):
            results = []
            for fn in (lambda v: sulq_fake_quant(v, eta, lo, hi, top, steps), lambda v: expression(v, top, steps)):
                xs = layout(x.clone()).requires_grad_(True)
                with torch.enable_grad():
                    y = fn(xs)
                    (g,) = torch.autograd.grad(y, xs, layout(grad_out.clone()))
                results.append((y.detach(), g))
            assert_same(results[0][0], results[1][0])
            assert_same(results[0][1], results[1][1])


@pytest.mark.parametrize("below", ["clamp", "zero"])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("bounds", [(0.0, 0.3), (-0.002, 0.05), (0.004, 0.9), (0.2, 0.2)])
def test_dfq_training_path_values_and_gradients_match_the_ste_expression(below, bits, bounds):
    """DFQ under autograd saves only x and the bounds and recomputes the rest: the values and
    the gradients of x, b1 and b2 are bit for bit those autograd gives on the straight-through
    expression, with inputs on the bounds (the max and min ties) and on b1 / 2 ("zero"), NaN and
    infinities, an empty interval (the step's clamp), a negative b1 ("zero" clamps it to 0), and x
    in a transposed layout; also with only x or only the bounds trained."""
    x = mixed(torch.tensor([*bounds, bounds[0] / 2]), n=3000, low=-0.1, high=1.1, seed=bits)
    x = x[:, : x.numel() // 8 * 8].reshape(8, -1)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(bits))

    for layout in (lambda t: t, lambda t: t.t().contiguous().t()):
        for trained in ((True, True), (True, False), (False, True)):
            results = []
            for fn in (lambda v, b1, b2: focus_fake_quant(v, b1, b2, bits, below),
                       lambda v, b1, b2: focus_ste_expression(v, b1, b2, bits, below)):
                xs = layout(x.clone()).requires_grad_(trained[0])
                b1, b2 = (torch.tensor(b).requires_grad_(trained[1]) for b in bounds)
                wrt = [t for t in (xs, b1, b2) if t.requires_grad]
                with torch.enable_grad():
                    y = fn(xs, b1, b2)
                    grads = torch.autograd.grad(y, wrt, layout(grad_out.clone()))
                results.append((y.detach(), *grads))
            for a, b in zip(*results):
                assert_same(a, b)


@pytest.mark.parametrize("below", ["clamp", "zero"])
def test_dfq_bound_gradients_add_up_in_autograd_order(below):
    """b1's gradient has four parts (the output's offset, clamped - b1, max(x, b1) and the step's
    span), and their float sum depends on the order: autograd's engine adds them in a fixed one.
    Over 20 draws (where a wrong order misses about half of them) the Function's b1 and b2
    gradients equal autograd's on the expression."""
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        x, grad_out = torch.rand(8, 500, generator=g) * 1.2 - 0.1, torch.randn(8, 500, generator=g)
        lo = 0.004 + 0.01 * float(torch.rand((), generator=g))
        grads = []
        for fn in (lambda v, b1, b2: focus_fake_quant(v, b1, b2, 4, below),
                   lambda v, b1, b2: focus_ste_expression(v, b1, b2, 4, below)):
            b1, b2 = torch.tensor(lo, requires_grad=True), torch.tensor(0.9, requires_grad=True)
            with torch.enable_grad():
                grads.append(torch.autograd.grad(fn(x, b1, b2), (b1, b2), grad_out))
        assert_same(grads[0][0], grads[1][0])
        assert_same(grads[0][1], grads[1][1])


# -- whole model: the quantized tiny ViT's logits with the reference formulas patched in -----------

def ref_twin_softmax(x, split, levels, sum_regions=False):
    zero = torch.zeros_like(split)
    if sum_regions:  # the released arithmetic: each region's value of x clamped to it, added
        high = ref_fake_quant(torch.clamp(x, min=split, max=1.0), torch.full_like(split, 1.0 / (levels - 1)), zero, 0, levels - 1)
        return high + ref_fake_quant(torch.clamp(x, min=0.0, max=split), split / (levels - 1), zero, 0, levels - 1)
    low = ref_fake_quant(x, split / (levels - 1), zero, 0, levels - 1)
    high = ref_fake_quant(x, torch.full_like(split, 1.0 / (levels - 1)), zero, 0, levels - 1)
    return torch.where(x < split, low, high)


def ref_twin_gelu(x, neg_scale, pos_scale, levels, neg_levels=None):
    pos = ref_fake_quant(x, pos_scale, torch.zeros_like(pos_scale), 0, levels - 1)
    neg = ref_fake_quant(x, neg_scale, torch.zeros_like(neg_scale), -(levels - 1 if neg_levels is None else neg_levels), 0)
    return torch.where(x < 0, neg, pos)


def ref_v2sf(x, scale, zero_point, shift, levels):
    fine = ref_fake_quant(x, scale, zero_point, 0, levels - 1)
    coarse_scale = scale * torch.exp2(shift)
    coarse = ref_fake_quant(x, coarse_scale, torch.zeros_like(coarse_scale), 0, levels - 1)
    return torch.where(x < (levels - 0.5 - zero_point) * scale, fine, coarse)


# 40-60 s each on 2 busy cores with their searches and reconstruction: slow; the kernel tests above
# are the default suite's check of the same paths. qdrop (per-head zero points of the matmul operands)
# runs its tiny grid and two steps in under a second.
@pytest.mark.parametrize("name", ["minmax", "qdrop", *(pytest.param(n, marks=pytest.mark.slow) for n in ("ptq4vit", "tsptq", "aiq", "dopq", "ias"))])
def test_quantized_tiny_vit_logits_equal_with_reference_formulas(name, monkeypatch):
    import ptqbench.quant.dynamic_focus as dfq
    import ptqbench.quant.ptf as ptf
    import ptqbench.quant.sulq as sulq
    import ptqbench.quant.tan as tan
    import ptqbench.quant.twin_uniform as twin
    import ptqbench.quant.two_scale as two
    import ptqbench.quant.uniform as uni
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable
    from tests.conftest import make_tiny_vit

    fast = {"minmax": {}, "ptq4vit": {"search_candidates": 3, "search_rounds": 1},
            "tsptq": {"search_candidates": 3, "search_rounds": 1}, "aiq": {"iters": 2, "batch_size": 2, "progress": False},
            "dopq": {"iters": 2, "batch_size": 2, "progress": False},
            "ias": {"iters": 2, "batch_size": 2, "progress": False},
            "qdrop": {"iters": 2, "batch_size": 2, "progress": False, "grid_rounds": 1, "grid_candidates": 32}}[name]
    model = make_tiny_vit()
    torch.manual_seed(1)
    calib, x = torch.randn(4, 3, 32, 32), torch.randn(3, 3, 32, 32)
    qm = make_quantizable(model, (method := build_method({"name": name, **fast}, Bits(4, 4))).plan())
    method.quantize(qm, calib)
    with torch.no_grad():
        new = qm.model(x)

    def ref_uniform(x, scale, zero_point, qmin, qmax, integral_zero_point=True):
        if torch.is_grad_enabled() and x.requires_grad:
            return uni_fake_quant(x, scale, zero_point, qmin, qmax, integral_zero_point)
        return ref_fake_quant(x, scale, zero_point, qmin, qmax)

    uni_fake_quant = uni.fake_quant
    for mod in (uni, twin, two, ptf):
        monkeypatch.setattr(mod, "fake_quant", ref_uniform)
    monkeypatch.setattr(twin, "twin_softmax_fake_quant", ref_twin_softmax)
    monkeypatch.setattr(twin, "twin_gelu_fake_quant", ref_twin_gelu)
    monkeypatch.setattr(two, "v2sf_fake_quant", ref_v2sf)
    monkeypatch.setattr(dfq, "_focus_zero_inplace", ref_focus_zero_masked)
    monkeypatch.setattr(tan, "tan_fake_quant", ref_tan_fake_quant)
    monkeypatch.setattr(sulq, "sulq_fake_quant", ref_sulq)
    for m in qm.model.modules():  # the weight caches refill through the reference formulas
        if hasattr(m, "_wq_cache"):
            m._wq_cache = None
    with torch.no_grad():
        ref = qm.model(x)
    assert_same(new, ref)


def test_select_below_matches_where():
    from ptqbench.quant.uniform import select_below

    for boundary in (0.0, 0.0625, 0.37, -0.2):
        b = torch.tensor(boundary)
        x = mixed(torch.stack([b, torch.nextafter(b, torch.tensor(-9.0)), torch.nextafter(b, torch.tensor(9.0))]),
                  torch.tensor([1e-45, -1e-45, 1.2e-38, -1.2e-38]))  # subnormals and the smallest normals
        for below, above in ((0.011, 0.5), (0.5, 0.011), (-3.0, 0.25), (0.011, 0.0), (0.011, -0.5)):
            ref = torch.where(x < b, torch.tensor(below), torch.tensor(above))
            got = select_below(x, boundary, below, above)
            nan = torch.isnan(x)
            # a NaN input may get either value (its quantized value is NaN with any step)
            assert bool(((got[nan] == below) | (got[nan] == above) | torch.isnan(got[nan])).all())
            assert_same(got[~nan], ref[~nan])
    # other precisions: the boundary is compared in x's own (0.37 is not a float16 value)
    for dtype in (torch.float16, torch.float64):
        b = torch.tensor(0.37, dtype=dtype)
        x = torch.cat([torch.linspace(0.3, 0.45, 999, dtype=dtype), b.reshape(1), torch.nextafter(b, torch.tensor(0.0, dtype=dtype)).reshape(1)])
        ref = torch.where(x < b, torch.tensor(0.011, dtype=dtype), torch.tensor(0.5, dtype=dtype))
        assert_same(select_below(x, 0.37, 0.011, 0.5), ref)


# -- TanQ (DopQ-ViT) ------------------------------------------------------------------------------

def ref_tan_fake_quant(x: torch.Tensor, theta: float, bits: int) -> torch.Tensor:
    """The warp, uniform codes in the warped space and the inverse warp, out of place."""
    n, t = 2**bits - 1, math.tan(theta / 2)
    codes = torch.clamp(torch.round((torch.tan((x.clamp(0.0, 1.0) - 0.5) * theta) / t + 1) * (n / 2)), 0, n)
    return torch.atan((codes * (2.0 / n) - 1) * t) / theta + 0.5


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_tan_inference_lookup_matches_the_formula(bits, threads):
    """The table lookup of the dequantized codes gives the arithmetic's bits, on every candidate
    theta, on tensors whose sizes leave scalar tails (per thread chunk) beside the SIMD blocks, and
    keeps NaN as NaN. (Where the table's SIMD and scalar results differ, `_dequant_table` is None
    and the arithmetic runs: on this machine's CPU every default theta and width has a table.)"""
    from ptqbench.quant.tan import DEFAULT_THETAS, tan_fake_quant

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for theta in DEFAULT_THETAS:
            n = 2**bits - 1
            codes = torch.arange(n + 1, dtype=torch.float64)
            borders = (0.5 + torch.atan(((codes + 0.5) * (2.0 / n) - 1) * math.tan(theta / 2)) / theta).float()
            for size in (4000, 70_001):
                x = mixed(borders, n=size, low=-0.1, high=1.1)
                for inp in (x, x.nan_to_num(nan=0.5)):  # with a NaN: the arithmetic path; without: the table
                    with torch.no_grad():
                        assert_same(tan_fake_quant(inp, theta, bits), ref_tan_fake_quant(inp, theta, bits))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("theta", [0.5, 2.4, 3.1])
def test_tan_training_path_values_and_gradient_match_the_ste_expression(bits, theta):
    """TanQ under autograd saves only its input and recomputes the rest: the values and the
    gradient are bit for bit those autograd gives on the straight-through expression."""
    from ptqbench.quant.tan import tan_fake_quant

    n, t = 2**bits - 1, math.tan(theta / 2)
    codes = torch.arange(n + 1, dtype=torch.float64)
    borders = (0.5 + torch.atan(((codes + 0.5) * (2.0 / n) - 1) * t) / theta).float()
    x = mixed(borders, n=3000, low=-0.1, high=1.1)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))

    def expression(v):
        u = torch.tan(theta * (v.clamp(0.0, 1.0) - 0.5)) / t
        scaled = (u + 1) * (n / 2)
        c = torch.clamp(scaled + (torch.round(scaled) - scaled).detach(), 0, n)
        return 0.5 + torch.atan((c * (2.0 / n) - 1) * t) / theta

    results = []
    for fn in (lambda v: tan_fake_quant(v, theta, bits), expression):
        xs = x.clone().requires_grad_(True)
        with torch.enable_grad():
            y = fn(xs)
            (g,) = torch.autograd.grad(y, xs, grad_out)
        results.append((y.detach(), g))
    assert_same(results[0][0], results[1][0])
    assert_same(results[0][1], results[1][1])
