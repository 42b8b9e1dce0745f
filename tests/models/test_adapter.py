"""The model-patching layer on timm ViT, DeiT and Swin (random weights)."""

import copy
import dataclasses

import pytest
import timm
import torch

from ptqbench.errors import ConfigError
from ptqbench.methods import METHODS, Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.models.attention import QuantAttention, QuantWindowAttention, timm_fp_attention
from ptqbench.algorithms.reparam import reparameterize_all
from ptqbench.quant import calibrate, quant_disabled
from tests.conftest import make_tiny_swin, make_tiny_vit

ARCHS = {
    "deit_tiny_patch16_224": (49, 24, 0),
    "vit_small_patch16_224": (49, 24, 0),
    "swin_tiny_patch4_window7_224": (None, 24, 3),
}


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False).eval()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_patched_model_with_quantizers_disabled_matches_timm(arch):
    model = _model(arch)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 224, 224)
    qm = make_quantizable(model, build_method({"name": "repq"}, Bits(4, 4)).plan())
    with torch.no_grad(), quant_disabled(qm.model):
        out = qm.model(x)
        expected = ref(x)
    assert torch.allclose(out, expected, atol=1e-4), (out - expected).abs().max()
    n_linear, n_matmul, n_reduction = ARCHS[arch]
    counts = qm.counts()
    if n_linear:
        assert counts["QuantLinear"] == n_linear
    assert counts["QuantMatMul"] == n_matmul and counts["QuantConv2d"] == 1
    attn_cls = QuantWindowAttention if "swin" in arch else QuantAttention
    attns = [m for m in qm.model.modules() if isinstance(m, attn_cls)]
    assert attns and all(not m.fused_attn for m in attns)
    reductions = [p for p in qm.reparam_pairs if p.name.endswith("downsample.norm")]
    assert len(reductions) == n_reduction
    n_blocks = n_matmul // 2  # two attention matmuls per block
    assert len(qm.reparam_pairs) == 2 * n_blocks + n_reduction  # norm1->qkv, norm2->fc1, PatchMerging


@pytest.mark.parametrize("arch", ["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_roles_and_reparam_keep_function(arch):
    model = _model(arch)
    x = torch.randn(4, 3, 224, 224)
    qm = make_quantizable(model, build_method({"name": "repq"}, Bits(4, 4)).plan())
    roles = {q.role for q in qm.model.modules() if hasattr(q, "role")}
    assert {"patch_in", "post_ln", "q", "k", "post_softmax", "v", "attn_out", "post_gelu", "head_in", "weight"} <= roles
    with torch.no_grad():
        with quant_disabled(qm.model):
            before = qm.model(x)
        calibrate(qm.model, x)
        reparameterize_all(qm.reparam_pairs)
        with quant_disabled(qm.model):
            after = qm.model(x)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


def test_quantization_is_active_w8_close_w3_far():
    x = torch.randn(4, 3, 224, 224)
    outs = {}
    for bits in (Bits(8, 8), Bits(3, 3)):
        model = _model("deit_tiny_patch16_224")
        with torch.no_grad():
            fp = model(x)
        method = build_method({"name": "minmax"}, bits)
        qm = make_quantizable(model, method.plan())
        method.quantize(qm, x)
        with torch.no_grad():
            outs[bits.name] = torch.nn.functional.cosine_similarity(qm.model(x).flatten(), fp.flatten(), dim=0)
    assert outs["w8a8"] > 0.99
    assert outs["w3a3"] < outs["w8a8"] - 0.05


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"fp"}))  # fp quantizes nothing
def test_quantizers_are_built_on_the_models_device(method):
    """The quantizers are created after the model was moved (run.py moves it first): they must follow
    it, or a CUDA job dies on its first calibrated forward. The meta device stands in for CUDA here."""
    model = _model("deit_tiny_patch16_224").to("meta")
    qm = make_quantizable(model, build_method({"name": method}, Bits(4, 4)).plan())
    tensors = dict(qm.model.named_parameters()) | dict(qm.model.named_buffers())
    assert any(".input_quantizer." in n or "_quantizer." in n for n in tensors)
    assert {n: str(t.device) for n, t in tensors.items() if t.device.type != "meta"} == {}


def test_a_model_spread_over_two_devices_is_refused():
    model = _model("deit_tiny_patch16_224")
    model.head.to("meta")
    with pytest.raises(ConfigError, match="one device"):
        make_quantizable(model, build_method({"name": "repq"}, Bits(4, 4)).plan())


@pytest.mark.parametrize("arch", ["deit_tiny_patch16_224",
                                  pytest.param("swin_tiny_patch4_window7_224", marks=pytest.mark.slow)])
def test_attention_scale_on_the_product_is_the_same_function(arch):
    """attention_scale="product" (the RepQ-ViT code family's order) quantizes the unscaled q: its
    calibrated step is the "q" order's divided by 1/sqrt(d), and the model computes the same
    function up to float rounding."""
    x = torch.randn(2, 3, 224, 224)
    outs, q_steps = {}, {}
    for order in ("q", "product"):
        method = build_method({"name": "minmax"}, Bits(8, 8))
        plan = dataclasses.replace(method.plan(), attention_scale=order)
        qm = make_quantizable(_model(arch), plan)
        attn = next(m for m in qm.model.modules() if isinstance(m, (QuantAttention, QuantWindowAttention)))
        assert attn.scale_product == (order == "product")
        method.quantize(qm, x)
        with torch.no_grad():
            outs[order] = qm.model(x)
        q_steps[order] = (attn.matmul_qk.a_quantizer.scale, attn.scale)
    (step_q, scale), (step_product, _) = q_steps["q"], q_steps["product"]
    assert torch.allclose(step_q, step_product * scale, rtol=1e-5)
    assert torch.allclose(outs["q"], outs["product"], atol=0.05), (outs["q"] - outs["product"]).abs().max()


def test_unknown_attention_scale_is_refused():
    with pytest.raises(ConfigError, match="attention_scale='k'"):
        dataclasses.replace(build_method({"name": "minmax"}, Bits(8, 8)).plan(), attention_scale="k")


@pytest.mark.parametrize("make", [make_tiny_vit, make_tiny_swin])
def test_timm_fp_attention_is_timms_own_forward_bit_for_bit(make):
    """An FP copy with timm_fp_attention computes what the plain timm model computes, to the bit
    (APHQ-ViT's teacher: its perturbation Hessian magnifies the rounding of unfused products): fused
    where timm fuses (ViT), unfused where it does not (Swin's window attention). A fused module
    refuses to run with a quantizer on, whose matmul timm's fused forward would skip."""
    model = make()
    plain = copy.deepcopy(model)
    timm_fused = [m.fused_attn for m in plain.modules() if hasattr(m, "fused_attn")]
    qm = make_quantizable(model, build_method({"name": "aphq"}, Bits(4, 4)).plan())
    attns = [m for m in qm.model.modules() if isinstance(m, (QuantAttention, QuantWindowAttention))]
    assert not any(m.fused_attn for m in attns)
    assert timm_fp_attention(qm.model) == sum(timm_fused) and [m.fused_attn for m in attns] == timm_fused
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with quant_disabled(qm.model):
            assert torch.equal(qm.model(x), plain(x))
        fused = [m for m in attns if m.fused_attn]
        if fused:
            with pytest.raises(RuntimeError, match="fused FP attention"):
                fused[0](torch.randn(2, 16, fused[0].qkv.in_features))  # its matmul quantizers are on
