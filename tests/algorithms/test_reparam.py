import pytest
import torch
from torch import nn

from ptqbench.algorithms.reparam import reparameterize
from ptqbench.models.structure import ReparamPair
from ptqbench.quant import QuantLinear, RangeSearch, UniformQuantizer


def _pair(bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    ln = nn.LayerNorm(16)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(16) * 2)
        ln.bias.copy_(torch.randn(16))
        ln.weight[5] = 0.0  # a constant channel, as in the shared DeiT-Tiny checkpoint
    lin = nn.Linear(16, 12, bias=bias)
    aq = UniformQuantizer(4, "post_ln", channel_axis=-1, search=RangeSearch("mse"))
    qlin = QuantLinear(lin, aq, None)  # FP weights: isolate the activation equivalence
    return ln, qlin


def test_reparam_keeps_fp_function_and_matches_per_channel_quantization():
    ln, qlin = _pair()
    x = torch.randn(4, 30, 16) * 3 + 1
    with torch.no_grad():
        fp_before = nn.functional.linear(ln(x), qlin.weight, qlin.bias)
        qlin.input_quantizer.calibrate(ln(x))
        per_channel = qlin(ln(x))
        reparameterize(ReparamPair("p", ln, qlin), round_zero_point=True)
        assert not qlin.input_quantizer.per_channel
        fp_after = nn.functional.linear(ln(x), qlin.weight, qlin.bias)
        per_tensor = qlin(ln(x))
    assert torch.allclose(fp_after, fp_before, atol=1e-5)
    assert torch.allclose(per_tensor, per_channel, atol=1e-5)


def test_fractional_zero_point_option_breaks_exact_equivalence():
    ln, qlin = _pair(seed=3)
    x = torch.randn(4, 30, 16) * 3 + 1
    with torch.no_grad():
        qlin.input_quantizer.calibrate(ln(x))
        z = qlin.input_quantizer.zero_point
        assert z.mean() != z.mean().round(), "pick a seed whose mean zero point is fractional"
        per_channel = qlin(ln(x))
        stats = reparameterize(ReparamPair("p", ln, qlin), round_zero_point=False)
        assert stats["zero_point"] != round(stats["zero_point"])
        assert not torch.allclose(qlin(ln(x)), per_channel, atol=1e-5)


def test_biasless_linear_gets_a_bias():
    ln, qlin = _pair(bias=False)
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        before = nn.functional.linear(ln(x), qlin.weight)
        qlin.input_quantizer.calibrate(ln(x))
        reparameterize(ReparamPair("reduction", ln, qlin))
        after = nn.functional.linear(ln(x), qlin.weight, qlin.bias)
    assert qlin.bias is not None
    assert torch.allclose(after, before, atol=1e-5)


def test_reparam_requires_per_channel_quantizer():
    ln, qlin = _pair()
    qlin.input_quantizer = UniformQuantizer(4, "post_ln")
    qlin.input_quantizer.calibrate(torch.randn(10, 16))
    with pytest.raises(ValueError, match="per-channel"):
        reparameterize(ReparamPair("p", ln, qlin))


def test_float32_arithmetic_is_the_released_fold_bit_for_bit():
    """arithmetic="float32" performs the RepQ-ViT family's float32 operations in their order (the
    fold written out below, as test_quant.py does it): the folded LayerNorm, weights and bias
    are equal to the last bit; the float64 fold keeps the function but differs in that bit."""
    folded = {}
    for arithmetic in ("float32", "float64"):
        ln, qlin = _pair(seed=3)
        x = torch.randn(4, 30, 16, generator=torch.Generator().manual_seed(1)) * 3 + 1
        with torch.no_grad():
            qlin.input_quantizer.calibrate(ln(x))
            d = qlin.input_quantizer.scale.reshape(-1).clone()
            z = qlin.input_quantizer.zero_point.reshape(-1).clone()
            w, bias, g, beta = qlin.weight.clone(), qlin.bias.clone(), ln.weight.clone(), ln.bias.clone()
            reparameterize(ReparamPair("p", ln, qlin), round_zero_point=False, arithmetic=arithmetic)
        folded[arithmetic] = (ln.weight.clone(), ln.bias.clone(), qlin.weight.clone(), qlin.bias.clone())
    td, tz = d.mean(), z.mean()
    r = d / td
    b = (-z * d) / r - (-tz * td)
    w_new = w * r
    released = (g / r, beta / r - b, w_new, bias + torch.mm(w_new, b.reshape(-1, 1)).reshape(-1))
    assert all(torch.equal(a, e) for a, e in zip(folded["float32"], released))
    assert all(torch.allclose(a, e, atol=1e-5) for a, e in zip(folded["float64"], released))
    assert not all(torch.equal(a, e) for a, e in zip(folded["float64"], released))


def test_unknown_reparam_arithmetic_is_refused():
    ln, qlin = _pair()
    with torch.no_grad():
        qlin.input_quantizer.calibrate(ln(torch.randn(2, 10, 16)))
    with pytest.raises(ValueError, match="arithmetic='float16'"):
        reparameterize(ReparamPair("p", ln, qlin), arithmetic="float16")
