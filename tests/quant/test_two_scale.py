"""Two-scale quantizers: TSPTQ-ViT's V-2SF and O-2SF, PTQ4ViT's twin uniform, FQ-ViT's PTF and log2."""

import pytest
import torch

from ptqbench.quant import RangeSearch, UniformQuantizer
from ptqbench.quant.log_sqrt2 import Log2Quantizer
from ptqbench.quant.ptf import PTFQuantizer
from ptqbench.quant.twin_uniform import TwinUniformQuantizer
from ptqbench.quant.two_scale import OutlierTwoScaleQuantizer, ValueTwoScaleQuantizer


def _softmax_like(n: int = 20000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n // 50, 50, generator=g) * 3).softmax(-1).flatten()


def _gelu_like(n: int = 20000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.gelu(torch.randn(n, generator=g) * 1.5 - 0.5)


def _mse(q, x):
    return float((q(x) - x).pow(2).mean())


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("data", [_softmax_like, _gelu_like])
def test_v2sf_codes_round_trip_and_use_both_regions(bits, data):
    x = data()
    q = ValueTwoScaleQuantizer(bits, "post_softmax")
    q.calibrate(x)
    codes = q.encode(x)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert torch.allclose(q.decode(codes), q(x), atol=1e-7)
    L = 2 ** (bits - 1)
    assert (codes < L).any() and (codes >= L).any()  # the region bit is used both ways


def test_v2sf_fine_region_has_the_finer_step():
    x = _softmax_like()
    q = ValueTwoScaleQuantizer(8, "post_softmax")
    q.calibrate(x)
    k = int(q.shift)
    assert k >= 1
    s = float(q.scale)
    small, large = x[x < q.threshold], x[(x >= q.threshold) & (x <= s * 2**k * 127)]
    assert (q(small) - small).abs().max() <= s / 2 + 1e-7
    assert (q(large) - large).abs().max() <= s * 2**k / 2 + 1e-7
    assert (q(large) - large).abs().max() > s / 2  # coarse values really use the coarse step


def test_v2sf_keeps_gelu_negatives_and_beats_uniform_at_low_bits():
    x = _gelu_like()
    q = ValueTwoScaleQuantizer(4, "post_gelu")
    q.calibrate(x)
    assert float(q.zero_point) > 0  # the fine region reaches below zero
    neg = x[x < 0]
    assert (q(neg) - neg).abs().max() <= float(q.scale) / 2 + 1e-7
    for data, role in ((_gelu_like, "post_gelu"), (_softmax_like, "post_softmax")):
        v = ValueTwoScaleQuantizer(4, role)
        u = UniformQuantizer(4, role)
        x = data()
        v.calibrate(x)
        u.calibrate(x)
        assert _mse(v, x) < _mse(u, x), role


def test_o2sf_outlier_channels_get_the_second_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 64, generator=g)
    x[..., [3, 17]] *= 40
    q = OutlierTwoScaleQuantizer(8, "post_ln", search=RangeSearch("minmax"))
    q.calibrate(x)
    assert q.outlier_mask.nonzero().flatten().tolist() == [3, 17]
    assert q.shift >= 1 and torch.isclose(q.outlier_scale, q.scale * 2**q.shift)
    assert q.describe()["outlier_channels"] == 2
    normal = x[..., [c for c in range(64) if c not in (3, 17)]]
    assert (q(x)[..., [c for c in range(64) if c not in (3, 17)]] - normal).abs().max() <= float(q.scale) / 2 + 1e-6
    u = UniformQuantizer(8, "post_ln")
    u.calibrate(x)
    assert _mse(q, x) < _mse(u, x) / 4


def test_o2sf_without_outliers_is_per_tensor_uniform():
    x = torch.randn(2, 30, 16, generator=torch.Generator().manual_seed(1))
    q = OutlierTwoScaleQuantizer(6, "post_ln", search=RangeSearch("minmax"))
    q.calibrate(x)
    u = UniformQuantizer(6, "post_ln", search=RangeSearch("minmax"))
    u.calibrate(x)
    assert not q.outlier_mask.any()
    assert torch.allclose(q(x), u(x))


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_twin_softmax_round_trip_and_power_of_two_split(bits):
    x = _softmax_like()
    q = TwinUniformQuantizer(bits, "post_softmax", "softmax")
    q.calibrate(x)
    m = -torch.log2(q.split)
    assert torch.isclose(m, m.round()) and 0 <= float(m) <= 19
    codes = q.encode(x)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert torch.allclose(q.decode(codes), q(x), atol=1e-7)
    L = 2 ** (bits - 1)
    low = x[x < q.split]
    assert (q(low) - low).abs().max() <= float(q.split) / (L - 1) / 2 + 1e-7  # finer than 1/(L-1)
    assert float(q(torch.ones(1))) == 1.0


def test_twin_gelu_negative_and_positive_ranges():
    x = _gelu_like()
    q = TwinUniformQuantizer(6, "post_gelu", "gelu")
    q.calibrate(x)
    assert torch.allclose(q.decode(q.encode(x)), q(x), atol=1e-7)
    neg = x[x < 0]
    assert (q(neg) - neg).abs().max() <= float(q.neg_scale) / 2 + 1e-7
    assert q.neg_scale < q.pos_scale  # GELU's negative side is short


def test_twin_candidates_follow_the_search_interface():
    x = _gelu_like()
    q = TwinUniformQuantizer(4, "post_gelu", "gelu")
    cands = q.candidates(x, alphas=torch.tensor([0.5, 1.0]))
    assert len(cands) == 2 and torch.isclose(cands[1]["pos_scale"], 2 * cands[0]["pos_scale"])
    s = TwinUniformQuantizer(4, "post_softmax", "softmax")
    assert [float(c["split"]) for c in s.candidates(_softmax_like(), n=3)] == [1.0, 0.5, 0.25]


def test_ptf_gives_wide_channels_larger_power_of_two_scales():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 32, generator=g)
    x[..., 5] *= 30
    q = PTFQuantizer(8, "ln_in", k=3)
    q.calibrate(x)
    ratio = torch.log2(q.scale / q.scale.min())
    assert torch.allclose(ratio, ratio.round())
    assert int(q.scale.argmax()) == 5 and float(ratio.max()) == 3.0
    assert torch.allclose(q(q(x)), q(x))  # idempotent: the grid maps to itself
    u = UniformQuantizer(8, "ln_in", search=RangeSearch("minmax"))
    u.calibrate(x)
    assert _mse(q, x) < _mse(u, x)


def test_log2_softmax_levels_are_powers_of_two():
    q = Log2Quantizer(4, "post_softmax")
    x = _softmax_like()
    q.calibrate(x)
    y = q(x)
    nz = y[y > 0]
    assert torch.allclose(torch.log2(nz), torch.log2(nz).round()) and float(nz.max()) <= 1.0
    assert float(q(torch.tensor([2.0**-20]))) == 0.0  # past 2^-(2^b - 1): zero
