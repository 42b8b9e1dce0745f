"""The keys that give the released PTQ4ViT's recipe (docs/anchors/ptq4vit/README.md, "Released
recipe vs ptqbench"): each does what the release does, the defaults are the release's, and
ptqbench's earlier reading (`READING_KEYS`) stays reachable."""

import pytest
import torch

import ptqbench.algorithms.hessian_search as hs
from ptqbench.algorithms.streaming import quant_layers
from ptqbench.methods import Bits, build_method
from ptqbench.methods.ptq4vit import READING_KEYS
from ptqbench.models import make_quantizable
from ptqbench.quant.modules import QuantConv2d, QuantLinear, QuantMatMul
from ptqbench.quant.twin_uniform import TwinUniformQuantizer, twin_gelu_fake_quant, twin_softmax_fake_quant
from ptqbench.quant.uniform import UniformQuantizer
from tests.conftest import make_tiny_vit

RELEASE = {"weight_granularity": "tensor", "operand_granularity": "head", "search_order": "weight_first",
           "accept": "best", "grad_loss": "kl", "split_fp_operand": True, "twin_sum_regions": True,
           "gelu_neg_step": 0.16997124254703522}


def _searched(**keys):
    torch.set_num_threads(1)
    method = build_method({"name": "ptq4vit", "search_candidates": 6, "search_rounds": 1, **keys}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(seed=0), method.plan())
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    method.quantize(qm, x)
    return qm


def test_released_keys_give_per_tensor_weights_qkv_per_block_and_per_head_operands():
    qm = _searched(**RELEASE)
    heads = next(m for m in qm.model.modules() if hasattr(m, "num_heads")).num_heads
    for name, m in qm.model.named_modules():
        if isinstance(m, QuantConv2d):
            assert m.weight_quantizer.scale.unique().numel() > 1, "the patch embedding stays per output channel"
        elif isinstance(m, QuantLinear):
            blocks = m.weight_quantizer.scale.reshape(3 if name.endswith("qkv") else 1, -1)
            assert all(b.unique().numel() == 1 for b in blocks), name
        elif isinstance(m, QuantMatMul):
            for q in (m.a_quantizer, m.b_quantizer):
                if type(q) is UniformQuantizer:
                    assert q.channel_axis == 1 and q.scale.shape == (heads,), name
                else:
                    assert isinstance(q, TwinUniformQuantizer) and q.split.dim() == 0


def test_the_defaults_are_the_released_keys():
    released = {**RELEASE, "grad_loss": "auto", "search_candidates": 100, "search_rounds": 3, "alpha_grid": "released",
                "chunk_size": 4, "search_init": "max", "search_inputs": "fp", "patch_input_bits": None}
    config = build_method({"name": "ptq4vit"}, Bits(4, 4)).config
    assert {k: getattr(config, k) for k in released} == released


def test_released_alpha_grid_is_the_release_eq_grid_in_its_step_unit():
    """The release tries alpha_i = 0.01 + 1.19 i / 100, i < 100, times max / (2^(b-1) - 0.5); the
    min-max range's step is max / (2^(b-1) - 1)."""
    cfg = hs.SearchConfig()
    for bits in (3, 4, 8):
        levels = 2 ** (bits - 1)
        want = torch.tensor([(0.01 + 1.19 * i / 100) * (levels - 1) / (levels - 0.5) for i in range(100)])
        assert torch.allclose(cfg.alphas(bits), want, rtol=1e-6, atol=0)
    assert torch.equal(hs.SearchConfig(alpha_grid="linspace", search_candidates=5).alphas(4),
                       torch.linspace(0.01, 1.2, 5))


def test_reading_keys_keep_per_channel_weights_and_per_tensor_operands():
    qm = _searched(**{k: v for k, v in READING_KEYS.items() if k != "search_candidates"})
    qkv = next(m for n, m in qm.model.named_modules() if n.endswith("qkv"))
    assert qkv.weight_quantizer.scale.unique().numel() > 3
    for m in qm.model.modules():
        if isinstance(m, QuantMatMul) and type(m.b_quantizer) is UniformQuantizer:
            assert m.b_quantizer.scale.dim() == 0


def _one_layer():
    """A Linear whose input quantizer's current step quantizes its input exactly (codes are integers)."""
    torch.manual_seed(0)
    layer = QuantLinear(torch.nn.Linear(4, 3), UniformQuantizer(4, "post_ln", symmetric=True), None)
    x = torch.randint(-7, 8, (5, 4)).float()
    layer.input_quantizer.set_params(torch.tensor(1.0), torch.tensor(0.0), None)
    target = torch.nn.functional.linear(x, layer.weight, layer.bias).detach()
    return layer, (x,), target


@pytest.mark.parametrize("accept,keeps", [("improve", True), ("best", False)])
def test_accept_best_installs_the_best_candidate_even_when_the_current_step_is_better(accept, keeps):
    layer, inputs, target = _one_layer()
    cfg = hs.SearchConfig(search_candidates=3, search_rounds=1, alpha_min=0.3, alpha_max=0.5, accept=accept,
                          search_metric="mse", search_init="calibrated")  # "max" would replace the current step
    with torch.no_grad():
        hs.search_layer(layer, inputs, target, None, cfg)
    assert (float(layer.input_quantizer.scale) == 1.0) == keeps


@pytest.mark.parametrize("order,expect", [("input_first", ["in", "w"]), ("weight_first", ["w", "in"])])
def test_search_order_decides_which_quantizer_a_round_searches_first(monkeypatch, order, expect):
    calls = []
    monkeypatch.setattr(hs, "_search_tensor", lambda *a, **k: calls.append("in"))
    monkeypatch.setattr(hs, "_search_weight", lambda *a, **k: calls.append("w"))
    layer, inputs, target = _one_layer()
    hs.search_layer(layer, inputs, target, None, hs.SearchConfig(search_rounds=1, search_order=order))
    assert calls == expect


def test_split_fp_operand_scores_the_split_with_v_unquantized(monkeypatch):
    seen = []
    real = hs._search_tensor

    def spy(q, x, run, target, grad2, cfg):
        seen.append((getattr(q, "mode", "uniform"), other.enabled))
        return real(q, x, run, target, grad2, cfg)

    monkeypatch.setattr(hs, "_search_tensor", spy)
    a_q = TwinUniformQuantizer(4, "post_softmax", "softmax")
    other = UniformQuantizer(4, "v", symmetric=True)
    mm = QuantMatMul(a_q, other)
    a = torch.softmax(torch.randn(2, 2, 5, 5), -1)
    b = torch.randn(2, 2, 5, 3)
    a_q._fit(a)
    other._fit(b)
    with torch.no_grad():
        hs.search_layer(mm, (a, b), a @ b, None, hs.SearchConfig(search_candidates=3, search_rounds=1,
                                                                  split_fp_operand=True, operand_granularity="tensor"))
    assert seen == [("softmax", False), ("uniform", True)]


def test_kl_gradients_are_rounding_residuals_and_ce_gradients_are_not():
    torch.set_num_threads(1)
    method = build_method({"name": "ptq4vit", "search_rounds": 0}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(seed=0), method.plan())
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    method.quantize(qm, x)
    first = quant_layers(qm.units[0].module)[0]
    ce = hs.UnitGradients(qm.model, qm.units, x, 4, "ce").layer_grad(qm.units[0], first)
    kl = hs.UnitGradients(qm.model, qm.units, x, 4, "kl").layer_grad(qm.units[0], first)
    assert float(kl.abs().max()) < 1e-4 * float(ce.abs().max())


def test_kl_gradients_need_a_classifier():
    qm = _searched()
    with pytest.raises(ValueError, match="grad_loss=kl needs a classifier"):
        hs.search_model(qm.model, qm.units, torch.zeros(2, 3, 32, 32), hs.SearchConfig(grad_loss="kl"),
                        loss=lambda x: x.sum())


def test_unknown_key_values_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="weight_granularity='row'; choose one of"):
        hs.SearchConfig(weight_granularity="row")


def test_summed_regions_add_the_split_above_it_as_the_release_computes():
    L, split = 8, torch.tensor(0.25)
    x = torch.tensor([0.0, 0.03, 0.1, 0.2, 0.25, 0.4, 0.9, 1.0])
    high = torch.round(x.clamp(0.25, 1) * (L - 1)).clamp(0, L - 1) / (L - 1)
    low = torch.round(x.clamp(0, 0.25) / (0.25 / (L - 1))).clamp(0, L - 1) * (0.25 / (L - 1))
    torch.testing.assert_close(twin_softmax_fake_quant(x, split, L, sum_regions=True), high + low)
    selected = twin_softmax_fake_quant(x, split, L)
    above = x >= split
    torch.testing.assert_close(twin_softmax_fake_quant(x, split, L, sum_regions=True)[above], selected[above] + split)


def test_fixed_gelu_negative_step_has_one_more_negative_code():
    L = 8
    neg = torch.tensor(0.16997124254703522 / L)
    x = torch.tensor([-0.17, -0.1, -0.01, 0.0, 0.5])
    y = twin_gelu_fake_quant(x, neg, torch.tensor(0.1), L, neg_levels=L)
    assert float(y[0]) == pytest.approx(-L * float(neg))
    q = TwinUniformQuantizer(4, "post_gelu", "gelu", gelu_neg_step=0.16997124254703522)
    q._fit(torch.randn(100))
    assert float(q.neg_scale) == pytest.approx(0.16997124254703522 / L)
    with pytest.raises(ValueError, match="released arithmetic"):
        q.encode(x)


def test_per_tensor_weights_stay_per_tensor_when_the_search_keeps_improvements_only():
    qm = _searched(weight_granularity="tensor")
    for name, m in qm.model.named_modules():
        if isinstance(m, QuantLinear):
            blocks = m.weight_quantizer.scale.reshape(3 if name.endswith("qkv") else 1, -1)
            assert all(b.unique().numel() == 1 for b in blocks), name


def test_search_init_max_starts_every_quantizer_at_the_released_initial_step():
    torch.manual_seed(0)
    lin = QuantLinear(torch.nn.Linear(8, 6), UniformQuantizer(4, "post_ln", symmetric=True),
                      UniformQuantizer(4, "weight", symmetric=True, channel_axis=0))
    x = torch.randn(5, 8)
    lin.weight_quantizer._fit(lin.weight.detach())
    cfg = hs.SearchConfig(weight_granularity="tensor", search_init="max")
    hs._init_at_max(lin, (x,), cfg, 3)
    assert float(lin.input_quantizer.scale) == pytest.approx(float(x.abs().max()) / 7.5)
    blocks = lin.weight.detach().reshape(3, -1).abs().amax(1) / 7.5
    torch.testing.assert_close(lin.weight_quantizer.scale, blocks.repeat_interleave(2))
    mm = QuantMatMul(TwinUniformQuantizer(4, "post_softmax", "softmax"), UniformQuantizer(4, "v", symmetric=True))
    a, b = torch.softmax(torch.randn(2, 3, 4, 4), -1), torch.randn(2, 3, 4, 5)
    hs._init_at_max(mm, (a, b), hs.SearchConfig(operand_granularity="head", search_init="max"), 1)
    assert float(mm.a_quantizer.split) == pytest.approx(0.01)
    torch.testing.assert_close(mm.b_quantizer.scale, b.transpose(0, 1).reshape(3, -1).abs().amax(1) / 7.5)
    gelu = TwinUniformQuantizer(4, "post_gelu", "gelu", gelu_neg_step=0.16997124254703522)
    fc2 = QuantLinear(torch.nn.Linear(8, 2), gelu, None)
    h = torch.nn.functional.gelu(torch.randn(5, 8))
    hs._init_at_max(fc2, (h,), cfg, 1)
    assert float(gelu.pos_scale) == pytest.approx(float(h.max()) / 7.5)


def test_search_init_max_leaves_kinds_without_a_released_step_alone():
    torch.set_num_threads(1)
    method = build_method({"name": "tsptq", "search_candidates": 3, "search_rounds": 1, "search_init": "max"}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(seed=0), method.plan())
    method.quantize(qm, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    assert all(torch.isfinite(p).all() for p in qm.model.state_dict().values() if p.is_floating_point())
