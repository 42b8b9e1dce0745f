"""The fully quantized mode (quant.full): patching, roles, records, every method; and the
PTQ4ViT search. Small random timm models, a few seconds in all."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from tests.conftest import make_tiny_swin, make_tiny_vit
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from ptqbench.errors import ConfigError
from ptqbench.methods import METHODS, Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.models.blocks import QuantBlock, QuantSwinBlock
from ptqbench.quant import calibrate, quant_disabled, quantizers
from ptqbench.algorithms.hessian_search import SearchConfig, _score, output_grads, search_layer
from ptqbench.quant.modules import QuantLinear
from ptqbench.quant.nonlinear import QuantSoftmax
from ptqbench.records import run_key

DEPTH = 2
FULL = {"full": True}


def _vit() -> VisionTransformer:
    m = make_tiny_vit(depth=DEPTH, embed_dim=48)
    with torch.no_grad():
        m.cls_token.normal_()  # timm initialises it near 1e-6: a random model's class token would be all zeros
    return m


def _swin() -> SwinTransformer:
    return make_tiny_swin()


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("make", [_vit, _swin])
def test_full_patching_keeps_the_fp_function_and_counts_roles(make):
    model = make()
    ref = copy.deepcopy(model)
    qm = make_quantizable(model, build_method({"name": "minmax"}, Bits(8, 8), FULL).plan())
    with torch.no_grad(), quant_disabled(qm.model):
        assert torch.allclose(qm.model(_x()), ref(_x()), atol=1e-5)
    counts = qm.counts()
    n_blocks = counts["QuantBlock" if make is _vit else "QuantSwinBlock"]
    n_norms = sum(isinstance(m, torch.nn.LayerNorm) for m in qm.model.modules())
    assert counts["quantizers.ln_in"] == n_norms
    assert counts["quantizers.residual"] == 2 * n_blocks
    assert counts["quantizers.softmax_in"] == counts["quantizers.gelu_in"] == n_blocks
    assert {"ln_in", "softmax_in", "gelu_in", "residual"} <= set(qm.quantized_roles())


def test_full_off_patches_nothing_new():
    qm = make_quantizable(_vit(), build_method({"name": "repq"}, Bits(4, 4), {"full": False}).plan())
    kinds = {type(m) for m in qm.model.modules()}
    assert not kinds & {QuantBlock, QuantSwinBlock, QuantSoftmax}
    assert not {"ln_in", "softmax_in", "gelu_in", "residual"} & set(qm.quantized_roles())


def test_full_16_bit_is_fp_and_8_bit_is_close():
    x = _x(8)
    with torch.no_grad():
        fp = _vit()(x)
    cos = {}
    for b in (16, 8):
        method = build_method({"name": "minmax"}, Bits(b, b), {"full": True, "bits": b})
        qm = make_quantizable(_vit(), method.plan())
        method.quantize(qm, x)
        with torch.no_grad():
            cos[b] = _cos(qm.model(x), fp)
    assert cos[16] > 0.99999 and cos[8] > 0.999, cos


def test_roles_switch_and_residual_stream_is_quantized_once():
    x = _x()
    method = build_method({"name": "minmax"}, Bits(8, 8), {"full": True, "roles": ["ln_in"]})
    qm = make_quantizable(_vit(), method.plan())
    assert set(qm.quantized_roles()) & {"ln_in", "softmax_in", "gelu_in", "residual"} == {"ln_in"}
    calls = {}
    for name, q in quantizers(qm.model).items():
        if q.role == "ln_in":
            q.register_forward_hook(lambda m, *_: calls.__setitem__(m.qname, calls.get(m.qname, 0) + 1))
    calibrate(qm.model, x)
    assert set(calls.values()) == {1} and len(calls) == 2 * DEPTH + 1  # norm1/norm2 per block + final norm


def test_softmax_table_and_log2_options():
    plan = build_method({"name": "repq"}, Bits(4, 4), {"full": True, "softmax": "log2"}).plan()
    assert plan.for_role("post_softmax").kind == "log2" and plan.softmax_lut_bits == 16
    plan = build_method({"name": "repq"}, Bits(4, 4), {"full": True, "softmax": "float"}).plan()
    assert plan.for_role("post_softmax").kind == "log_sqrt2" and plan.softmax_lut_bits is None
    sm = QuantSoftmax(None, lut_bits=4)
    x = torch.randn(3, 7)
    assert torch.allclose(sm(x), x.softmax(-1))  # no quantized input: no table


def test_tsptq_plan_uses_two_scales_and_ptf_option():
    m = build_method({"name": "tsptq"}, Bits(8, 8), FULL)
    plan = m.plan()
    assert plan.for_role("post_softmax").kind == plan.for_role("post_gelu").kind == "v2sf"
    assert plan.for_role("post_ln").kind == plan.for_role("ln_in").kind == "o2sf"
    assert plan.for_role("softmax_in").kind == "uniform" and plan.for_role("ln_in").bits == 8
    plan = build_method({"name": "tsptq"}, Bits(8, 8), {"full": True, "ln_input": "ptf"}).plan()
    assert plan.for_role("ln_in").kind == "ptf"
    assert build_method({"name": "tsptq"}, Bits(8, 8)).plan().for_role("ln_in") is None


def test_tsptq_v2sf_off_twin_is_ptq4vits_quantizer_there():
    """The paper compares V-2SF with PTQ4ViT's twin uniform: v2sf_off=twin installs exactly that."""
    twin = build_method({"name": "tsptq", "v2sf": False, "v2sf_off": "twin"}, Bits(4, 4)).plan()
    ptq4vit = build_method({"name": "ptq4vit"}, Bits(4, 4)).plan()
    for role in ("post_softmax", "post_gelu"):
        assert twin.for_role(role) == ptq4vit.for_role(role) and twin.for_role(role).kind.startswith("twin_")
    assert twin.for_role("post_ln").kind == "o2sf"
    uniform = build_method({"name": "tsptq", "v2sf": False}, Bits(4, 4)).plan()
    assert uniform.for_role("post_softmax").kind == uniform.for_role("post_gelu").kind == "uniform"
    with pytest.raises(ConfigError, match="v2sf_off='log2'; choose one of"):
        build_method({"name": "tsptq", "v2sf_off": "log2"}, Bits(4, 4))
    with pytest.raises(ConfigError, match="would change nothing while method.v2sf=true"):
        build_method({"name": "tsptq", "v2sf_off": "twin"}, Bits(4, 4))
    method = build_method({"name": "tsptq", "v2sf": False, "v2sf_off": "twin", "search_rounds": 1,
                           "search_candidates": 3}, Bits(4, 4))
    qm = make_quantizable(_vit(), method.plan())
    method.quantize(qm, _x(4))
    assert all(q.calibrated for q in quantizers(qm.model).values())


@pytest.mark.parametrize("name", sorted(n for n, cls in METHODS.items() if cls.supports_full))
def test_every_method_runs_fully_quantized(name):
    x = _x(8)
    with torch.no_grad():
        fp = _vit()(x)
    searched = name in ("ptq4vit", "tsptq")  # one short round: the search itself is tested elsewhere
    opts = {"name": name, "search_rounds": 1, "search_candidates": 5} if searched else {"name": name}
    method = build_method(opts, Bits(8, 8), FULL)
    qm = make_quantizable(_vit(), method.plan())
    method.quantize(qm, x)
    assert all(q.calibrated for q in quantizers(qm.model).values())
    with torch.no_grad():
        assert _cos(qm.model(x), fp) > 0.99


def test_fp_refuses_full_and_bad_options_are_config_errors():
    refusing = sorted(n for n, cls in METHODS.items() if not cls.supports_full)
    # fp quantizes nothing; the reconstruction engine and the grid search are unchecked there
    assert refusing == ["aiq", "aphq", "brecq", "dopq", "fimaq", "fp", "ias", "qdrop"]
    for name in refusing:
        with pytest.raises(ConfigError, match="fully quantized"):
            build_method({"name": name}, Bits(8, 8), FULL)
    with pytest.raises(ConfigError, match="search_inputs"):
        build_method({"name": "ptq4vit", "search_inputs": "both"}, Bits(4, 4))
    for bad in ({"full": True, "softmax": "exact"}, {"full": True, "roles": ["post_ln"]}, {"full": True, "bits": 1},
                {"full": True, "typo": 1}):
        with pytest.raises(ConfigError):
            build_method({"name": "minmax"}, Bits(8, 8), bad)


def test_run_key_ignores_quant_group_when_off():
    base = {"seed": 0, "model": {"name": "deit_tiny"}, "method": {"name": "repq"}, "bits": {"w": 4, "a": 4},
            "calib": {"size": 32, "seed": 0, "split": "train"}, "data": {"eval_limit": None},
            "task": {"name": "classification"}}
    off = {**base, "quant": {"full": False, "bits": 8, "softmax": "lut"}}
    on = {**base, "quant": {"full": True, "bits": 8, "softmax": "lut"}}
    on16 = {**base, "quant": {"full": True, "bits": 16, "softmax": "lut"}}
    assert run_key(OmegaConf.create(off)) == run_key(OmegaConf.create(base))
    assert len({run_key(OmegaConf.create(c)) for c in (base, on, on16)}) == 3


def test_hessian_search_does_not_increase_the_layer_distance():
    model = _vit()
    x = _x(8)
    method = build_method({"name": "ptq4vit", "search_rounds": 0}, Bits(4, 4))
    qm = make_quantizable(model, method.plan())
    method.quantize(qm, x)
    grads = output_grads(qm.model, x, chunk_size=4)
    layer = qm.model.blocks[0].attn.qkv
    assert isinstance(layer, QuantLinear) and grads[layer].shape == (8, 17, 144)
    seen = {}
    h = layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    with torch.no_grad(), quant_disabled(qm.model):
        qm.model(x)
        h.remove()
        target = layer(seen["x"])
    with torch.no_grad():
        for metric in ("hessian", "mse"):  # cosine is per output channel for weights: not monotone in the total
            g2 = grads[layer].pow(2)
            before = float(_score(layer(seen["x"]), target, g2, metric, None))
            search_layer(layer, (seen["x"],), target, g2, SearchConfig(search_metric=metric, search_candidates=8, search_rounds=2))
            after = float(_score(layer(seen["x"]), target, g2, metric, None))
            assert after <= before + 1e-9, (metric, before, after)


def test_record_says_which_tensors_were_quantized(tiny_imagenet, tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from ptqbench.run import run_job

    conf = Path(__file__).resolve().parents[2] / "conf"
    common = [f"data.root={tiny_imagenet}", f"results_dir={tmp_path}", "model.pretrained=false", "calib.size=2",
              "data.batch_size=8", "data.workers=0", "logger=none", "method=minmax", "bits=w8a8"]
    recs = {}
    for full in ("false", "true"):
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            recs[full] = run_job(compose("config", overrides=[*common, f"quant.full={full}"]))
    std, full = recs["false"]["protocol"], recs["true"]["protocol"]
    assert std["full"] is False and "ln_in" not in std["quantized_roles"] and "post_ln" in std["quantized_roles"]
    assert full["full"] is True and full["full_bits"] == 8 and full["softmax"] == "lut"
    assert {"ln_in", "softmax_in", "gelu_in", "residual"} <= set(full["quantized_roles"])
    assert recs["true"]["quantized_modules"]["quantizers.residual"] == 24
    assert recs["true"]["run_key"] != recs["false"]["run_key"]
    assert "quant" in recs["true"]["semantic_config"] and "quant" not in recs["false"]["semantic_config"]


def test_softmax_table_is_recorded_only_when_its_input_is_quantized():
    on = build_method({"name": "minmax"}, Bits(8, 8), {"full": True})
    assert on.plan().softmax_lut_bits == 16 and on.quant.protocol()["lut_bits"] == 16
    off = build_method({"name": "minmax"}, Bits(8, 8), {"full": True, "roles": ["ln_in", "gelu_in", "residual"]})
    assert off.plan().softmax_lut_bits is None and off.quant.protocol()["lut_bits"] is None


def test_log_grids_pass_the_gradient_straight_through():
    from ptqbench.quant.log_sqrt2 import log_sqrt2_fake_quant

    x = torch.rand(4, 16, requires_grad=True)
    for per_octave in (1, 2):
        y = log_sqrt2_fake_quant(x, torch.tensor(1.0), 4, per_octave)
        with torch.no_grad():
            assert torch.equal(y, log_sqrt2_fake_quant(x.detach(), torch.tensor(1.0), 4, per_octave))
        (y * torch.arange(16.0)).sum().backward()
        assert torch.equal(x.grad, torch.arange(16.0).expand(4, 16))
        x.grad = None
