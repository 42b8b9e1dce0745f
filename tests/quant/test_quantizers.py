import math

import numpy as np
import pytest
import torch

from ptqbench.errors import CalibrationError
from ptqbench.quant import LogSqrt2Quantizer, RangeSearch, UniformQuantizer
from ptqbench.quant import ranges
from ptqbench.quant.ranges import quantiles

MINMAX = RangeSearch("minmax")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_uniform_asymmetric_uses_all_levels(bits):
    x = torch.linspace(-1.3, 2.1, 5000)
    q = UniformQuantizer(bits, "t", search=MINMAX)
    q.calibrate(x)
    codes = q.encode(x)
    assert codes.unique().numel() == 2**bits
    assert codes.min() == 0 and codes.max() == 2**bits - 1


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_uniform_symmetric_code_range_and_zero(bits):
    x = torch.linspace(-2.0, 1.0, 4001)
    q = UniformQuantizer(bits, "t", symmetric=True, search=MINMAX)
    q.calibrate(x)
    codes = q.encode(x)
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
    assert float(q.zero_point) == 0.0
    assert q(torch.zeros(3)).abs().max() == 0  # zero is exact


def test_error_within_half_step_inside_range():
    torch.manual_seed(0)
    x = torch.randn(10000)
    q = UniformQuantizer(4, "t", search=MINMAX)
    q.calibrate(x)
    err = (q(x) - x).abs()
    assert err.max() <= float(q.scale) / 2 + 1e-6


def test_per_channel_shapes_and_independent_ranges():
    w = torch.randn(8, 16) * torch.arange(1, 9).float()[:, None]  # row scales differ 8x
    qw = UniformQuantizer(4, "weight", channel_axis=0, search=MINMAX)
    qw.calibrate(w)
    assert qw.scale.shape == (8,) and qw.zero_point.shape == (8,)
    assert qw.scale[-1] > 4 * qw.scale[0]
    assert qw(w).shape == w.shape
    a = torch.randn(2, 5, 6)
    qa = UniformQuantizer(4, "post_ln", channel_axis=-1, search=MINMAX)
    qa.calibrate(a)
    assert qa.scale.shape == (6,)
    # per-channel activation quantizer also applies to inputs of another rank (Swin: B,H,W,C)
    assert qa(torch.randn(2, 3, 3, 6)).shape == (2, 3, 3, 6)


def test_percentile_clips_outlier_and_mse_beats_minmax():
    torch.manual_seed(0)
    x = torch.randn(100000)
    x[0] = 80.0
    mm = UniformQuantizer(4, "t", search=MINMAX)
    pc = UniformQuantizer(4, "t", search=RangeSearch("percentile", (0.999,)))
    ms = UniformQuantizer(4, "t", search=RangeSearch("mse", (0.99, 0.999, 0.9999)))
    for q in (mm, pc, ms):
        q.calibrate(x)
    assert float(pc.scale) < float(mm.scale) / 10
    err = {n: float((q(x) - x).pow(2).mean()) for n, q in (("mm", mm), ("pc", pc), ("ms", ms))}
    assert err["ms"] <= err["pc"] + 1e-9 and err["ms"] < err["mm"] / 10


QS = [0.001, 0.0001, 0.00001, 0.03, 0.5, 0.97, 0.999, 0.9999, 0.99999]


def test_quantiles_are_bit_identical_to_torch_quantile_on_both_code_paths():
    """The released codes call torch.quantile(x, pct) per tensor or channel: same bits, or a
    percentile one ulp off flips picks at 4 bits. Both the sort (short rows, several rows) and
    the kthvalue (one long row) paths."""
    torch.manual_seed(0)
    for x in (torch.randn(3, 6304) * 3 + 0.5, torch.randn(1, (1 << 20) + 7)):
        ref = torch.stack([torch.stack([torch.quantile(row, q) for row in x]) for q in QS])
        assert torch.equal(quantiles(x, QS), ref)


def test_quantiles_above_the_torch_limit_are_numpy_percentile(monkeypatch):
    """Above 2**24 elements torch.quantile refuses and the released codes call np.percentile
    (float64); the limit is lowered here to test that arithmetic on a small row."""
    monkeypatch.setattr(ranges, "TORCH_QUANTILE_LIMIT", 100)
    x = torch.randn(1, 100_003)
    ref = torch.tensor([[np.percentile(x[0].numpy(), q * 100)] for q in QS], dtype=torch.float32)
    assert torch.equal(quantiles(x, QS), ref)


def test_constant_and_zero_channels_are_exact_and_finite():
    # channel 1 is constant (a LayerNorm channel with weight 0), channel 2 is all zeros
    torch.manual_seed(0)
    x = torch.randn(4, 50, 3)
    x[..., 1] = 0.37
    x[..., 2] = 0.0
    for search in (MINMAX, RangeSearch("mse"), RangeSearch("percentile", (0.999,))):
        q = UniformQuantizer(4, "post_ln", channel_axis=-1, search=search)
        q.calibrate(x)
        assert torch.isfinite(q.scale).all() and torch.isfinite(q.zero_point).all()
        assert 0 <= q.zero_point.min() and q.zero_point.max() <= 15  # no exploding zero point
        y = q(x)
        assert torch.allclose(y[..., 1], x[..., 1], atol=1e-6)
        assert torch.equal(y[..., 2], x[..., 2])
    neg = UniformQuantizer(4, "t", search=MINMAX)
    neg.calibrate(torch.full((10,), -2.5))
    assert torch.allclose(neg(torch.full((10,), -2.5)), torch.full((10,), -2.5))


@pytest.mark.parametrize("bits", [3, 4])
def test_log_sqrt2_codes_levels_and_zero(bits):
    q = LogSqrt2Quantizer(bits, "post_softmax", search=MINMAX)
    levels = 2.0 ** (-torch.arange(2**bits).float() / 2)  # 1, 1/sqrt2, 1/2, ...
    q.calibrate(levels)
    assert float(q.delta) == 1.0
    assert torch.equal(q.encode(levels), torch.arange(2**bits).float())
    assert torch.allclose(q(levels), levels, rtol=1e-6)
    below = torch.tensor([2.0 ** (-(2**bits) / 2 - 1), 0.0])
    assert torch.equal(q(below), torch.zeros(2))
    assert torch.equal(q.encode(below), torch.tensor([-1.0, -1.0]))
    # a value between two levels goes to the nearer one in log2 domain
    mid = torch.tensor([2.0 ** (-0.2)])
    assert q.encode(mid).item() == 0 and math.isclose(q(mid).item(), 1.0)


def test_log_sqrt2_mse_search_prefers_high_percentile_under_outlier():
    torch.manual_seed(0)
    attn = torch.rand(8, 4, 20, 20).softmax(-1)
    q = LogSqrt2Quantizer(4, "post_softmax")
    q.calibrate(attn)
    assert 0 < float(q.delta) <= float(attn.max())
    assert torch.isfinite(q(attn)).all()


def test_nan_during_calibration_is_a_clear_error():
    q = UniformQuantizer(4, "post_gelu")
    q.qname = "blocks.3.mlp.fc2.input_quantizer"
    with pytest.raises(CalibrationError, match=r"NaN.*blocks\.3\.mlp\.fc2.*post_gelu"):
        q.calibrate(torch.tensor([1.0, float("nan")]))


def test_uncalibrated_use_is_an_error():
    with pytest.raises(CalibrationError, match="before calibration"):
        UniformQuantizer(4, "t")(torch.ones(3))


def _attention_maps() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(2, 3, 50, 50, generator=g) * 4, dim=-1)
    a[0, 0, 0, :4] = 0.0  # exact zeros, as after masking
    return a


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_inference_fast_paths_equal_the_reference_formulas_bit_for_bit(bits):
    """Evaluation runs in-place CPU paths for the post-softmax quantizers (docs/benchmarks.md);
    they must give exactly the values of the autograd-path / encode-decode formulas, so a
    speed-up never changes a result."""
    from ptqbench.quant.dynamic_focus import focus_fake_quant
    from ptqbench.quant.log_sqrt2 import log_sqrt2_fake_quant
    from ptqbench.quant.tan import tan_fake_quant

    a = _attention_maps()
    q = LogSqrt2Quantizer(bits, "post_softmax")
    q.calibrate(a)
    with torch.no_grad():
        assert torch.equal(q(a), q.decode(q.encode(a)))
        assert torch.equal(log_sqrt2_fake_quant(a, torch.tensor(1.0), bits, per_octave=1),
                           torch.where(a > 0, torch.exp2(-torch.round(-torch.log2(a))), torch.zeros_like(a))
                           * (torch.round(-torch.log2(a)) < 2**bits))
    ref_in = a.clone().requires_grad_(True)  # the out-of-place (autograd) formulas
    for theta in (1.0, 2.4, 3.06):
        with torch.no_grad():
            fast = tan_fake_quant(a, theta, bits)
        assert torch.equal(fast, tan_fake_quant(ref_in, theta, bits).detach())
    for b1, b2 in ((0.0, 0.3), (0.004, 0.5), (0.02, 0.021)):
        x = torch.cat([a.flatten(), torch.tensor([b1 / 2, b1, b2, 1.0])])
        x = torch.cat([x, torch.nextafter(torch.tensor([b1 / 2]), torch.tensor([-1.0]))])
        lo, hi = torch.tensor(b1), torch.tensor(b2)
        with torch.no_grad():
            fast = focus_fake_quant(x, lo, hi, bits, below="zero")
        ref = focus_fake_quant(x.clone().requires_grad_(True), lo, hi, bits, below="zero").detach()
        assert torch.equal(fast, ref), (b1, b2)


def test_fractional_zero_point_is_quantized_as_written():
    """A fractional zero point (the released reparameterization's mean z~) is applied as
    (clamp(round(x/s) + z, qmin, qmax) - z) * s, bit for bit; integral ones take the fast path."""
    q = UniformQuantizer(4, "post_ln")
    x = torch.randn(4, 197, 192) * 3
    s, z = torch.tensor(0.28), torch.tensor(7.463541666)
    q.set_params(s, z, None)
    assert not q.integral_zero_point
    with torch.no_grad():
        assert torch.equal(q(x), (torch.clamp(torch.round(x / s) + z, 0, 15) - z) * s)
    q.set_params(s, torch.tensor(7.0), None)
    assert q.integral_zero_point


def test_subsample_keeps_the_columns_of_the_seeded_permutation():
    x = torch.randn(3, 1000)
    idx = torch.randperm(1000, generator=torch.Generator().manual_seed(5))[:200]
    assert torch.equal(ranges.subsample(x, 600, seed=5), x[:, idx])
    assert ranges.subsample(x, 3000) is x  # under the limit: the input itself


def test_twin_gelu_fit_on_a_subsample_picks_what_the_two_draw_search_picked():
    """The GELU twin quantizer subsamples its input once and takes its candidates from that sample;
    before, `candidates` drew the same seeded sample a second time. Same candidates, same pick."""
    from ptqbench.quant.twin_uniform import TwinUniformQuantizer

    torch.manual_seed(0)
    x = torch.nn.functional.gelu(torch.randn(4, 50, 64) * 3)
    q = TwinUniformQuantizer(4, "post_gelu", mode="gelu", search=RangeSearch(max_samples=2000))
    q.calibrate(x)
    cands = q.candidates(x)  # draws its own sample of x, as the old fit did
    x2d = ranges.subsample(x.reshape(1, -1), 2000)
    errs = [float((q._fake(x2d, c) - x2d).pow(2).mean()) for c in cands]
    best = cands[min(range(len(cands)), key=errs.__getitem__)]
    assert torch.equal(q.pos_scale, best["pos_scale"].reshape(())) and torch.equal(q.neg_scale, best["neg_scale"].reshape(()))
