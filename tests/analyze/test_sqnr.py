"""Per-layer SQNR of a quantized model against FP (ptqbench.analyze.sqnr)."""

from __future__ import annotations

import math

import pytest
import torch
from tests.conftest import make_tiny_vit
from torch import nn

from ptqbench.methods import Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.quant.calibration import quantizers
from ptqbench.analyze.sqnr import layer_sqnr_record, measure_layer_sqnr, quantized_layers

IMAGES = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _quantized(method: str, bits: Bits, depth: int = 2):
    model = make_tiny_vit(depth=depth)
    meth = build_method({"name": method}, bits)
    qm = make_quantizable(model, meth.plan())
    meth.quantize(qm, IMAGES)
    return qm


def test_single_layer_matches_the_formula():
    """A one-layer model: the SQNR is 10 log10(sum y^2 / sum (y - y_q)^2), computed by hand."""
    torch.manual_seed(0)
    qm = make_quantizable(nn.Sequential(nn.Linear(16, 8)), build_method({"name": "minmax"}, Bits(4, 4)).plan())
    x = torch.randn(5, 16)
    build_method({"name": "minmax"}, Bits(4, 4)).quantize(qm, x)
    lin = qm.model[0]
    with torch.no_grad():
        y_q = lin(x)
        y_fp = torch.nn.functional.linear(x, lin.weight, lin.bias)
    expected = 10 * math.log10(float(y_fp.double().pow(2).sum() / (y_q - y_fp).double().pow(2).sum()))
    rep = measure_layer_sqnr(qm.model, x, chunk=2)  # chunks add up to the same sums
    assert [ly.layer for ly in rep.layers] == ["0"]
    assert rep.layers[0].sqnr_db == pytest.approx(expected, rel=1e-6)
    assert rep.layers[0].local_sqnr_db == pytest.approx(expected, rel=1e-6)  # its input is the FP input
    assert rep.output_sqnr_db == pytest.approx(expected, rel=1e-6)


def test_vit_layers_in_forward_order_more_bits_less_error_and_states_kept():
    w4, w8 = _quantized("minmax", Bits(4, 4)), _quantized("minmax", Bits(8, 8))
    before = {n: q.enabled for n, q in quantizers(w4.model).items()}
    r4, r8 = measure_layer_sqnr(w4.model, IMAGES, chunk=4), measure_layer_sqnr(w8.model, IMAGES)
    assert {n: q.enabled for n, q in quantizers(w4.model).items()} == before
    names = [ly.layer for ly in r4.layers]
    assert names[0] == "patch_embed.proj" and names[-1] == "head" and "blocks.1.attn.matmul_qk" in names
    assert len(names) == len(quantized_layers(w4.model)) == 14 and not r4.skipped
    assert r4.layers[-1].sqnr_db == pytest.approx(r4.output_sqnr_db)  # the head's output is the model's
    assert r4.layers[0].sqnr_db == pytest.approx(r4.layers[0].local_sqnr_db)  # nothing upstream
    roles = {ly.layer: ly.role for ly in r4.layers}
    assert roles["blocks.0.attn.matmul_av"] == "post_softmax+v" and roles["blocks.0.mlp.fc2"] == "post_gelu"
    for a, b in zip(r4.layers, r8.layers):  # ~6 dB per bit: 4 more bits win far more than 10 dB
        assert b.sqnr_db > a.sqnr_db + 10, (a, b)
    # error accumulates: a deep layer's SQNR in the quantized model is below its own (local) SQNR
    assert all(ly.sqnr_db <= ly.local_sqnr_db + 1e-6 for ly in r4.layers[1:])


def test_record_entry_is_json_ready_and_bounded():
    qm = _quantized("minmax", Bits(4, 4), depth=1)
    rec = layer_sqnr_record(qm.model, IMAGES, torch.device("cpu"), images=3)
    assert rec["images"] == 3 and rec["min_sqnr_db"] <= rec["mean_sqnr_db"]
    assert {"index", "layer", "kind", "role", "quantizers", "sqnr_db", "local_sqnr_db"} <= set(rec["layers"][0])
    assert layer_sqnr_record(qm.model, IMAGES, torch.device("cpu"), images=0) is None


def test_disabled_layers_are_left_out():
    qm = _quantized("minmax", Bits(4, 4), depth=1)
    for name, (_, qs) in quantized_layers(qm.model).items():
        if name != "blocks.0.mlp.fc1":
            for q in qs:
                q.enabled = False
    rep = measure_layer_sqnr(qm.model, IMAGES)
    assert [ly.layer for ly in rep.layers] == ["blocks.0.mlp.fc1"]


def test_a_reference_model_measures_against_the_original_weights():
    """A method that changes the weights (GPTQ, ERQ): quantizers off is not FP any more; the FP
    twin (same weights as before quantization, same patching, quantizers off) is."""
    torch.manual_seed(0)
    x = torch.randn(5, 16)
    original = nn.Sequential(nn.Linear(16, 8))
    w0, b0 = original[0].weight.detach().clone(), original[0].bias.detach().clone()
    twin = make_quantizable(nn.Sequential(nn.Linear(16, 8)), build_method({"name": "minmax"}, Bits(8, 8)).plan()).model
    twin[0].weight.data.copy_(w0), twin[0].bias.data.copy_(b0)
    for q in quantizers(twin).values():
        q.enabled = False
    meth = build_method({"name": "minmax"}, Bits(8, 8))
    qm = make_quantizable(original, meth.plan())
    meth.quantize(qm, x)
    with torch.no_grad():
        qm.model[0].weight.add_(0.05)  # what a weight-updating method does
        y_q = qm.model[0](x)
    y_fp = torch.nn.functional.linear(x, w0, b0)
    expected = 10 * math.log10(float(y_fp.double().pow(2).sum() / (y_q - y_fp).double().pow(2).sum()))
    with_twin = measure_layer_sqnr(qm.model, x, reference=twin)
    assert with_twin.layers[0].sqnr_db == pytest.approx(expected, rel=1e-6)
    assert measure_layer_sqnr(qm.model, x).layers[0].sqnr_db > expected + 5  # partly blind to the weight change
    rec = layer_sqnr_record(qm.model, x, torch.device("cpu"), 5, reference=twin)
    assert rec["reference"] == "fp_model" and rec["output_sqnr_db"] == pytest.approx(expected, rel=1e-6)


def test_fully_quantized_layers_layernorm_input_quantizer_counts_as_its_own():
    """A LayerNorm's input quantizer runs in a forward pre-hook: its local SQNR reruns the norm on
    the input from before that hook. Inside a block the block quantizes the input itself (null)."""
    model = make_tiny_vit(depth=1)
    meth = build_method({"name": "minmax"}, Bits(6, 6), {"full": True, "bits": 6})
    qm = make_quantizable(model, meth.plan())
    meth.quantize(qm, IMAGES)
    rows = {ly.layer: ly for ly in measure_layer_sqnr(qm.model, IMAGES).layers}
    assert rows["norm"].role == "ln_in" and rows["norm"].local_sqnr_db is not None and rows["norm"].local_sqnr_db > 10
    assert rows["blocks.0.norm1"].local_sqnr_db is None and rows["blocks.0"].kind == "QuantBlock"
    assert rows["blocks.0.attn.softmax_op"].role == "softmax_in" and rows["blocks.0.mlp.act"].role == "gelu_in"
