"""The Hessian-guided search computes each unit's layer gradients from that unit's graph alone and
captures each layer's FP input and output just before searching it: the same gradients and the
same tensors, so the same search result, as one pass that keeps every layer's gradients and every
layer's input and output."""

import pytest
import torch
import torch.nn.functional as F

import ptqbench.algorithms.hessian_search as hs
from ptqbench.algorithms.streaming import layer_call, quant_layers
from ptqbench.methods import Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.quant import quantizers
from ptqbench.quant.calibration import quant_disabled
from tests.conftest import make_tiny_vit


def _calibrated(seed: int = 0):
    method = build_method({"name": "ptq4vit", "search_rounds": 0}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(seed=seed), method.plan())
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    method.quantize(qm, x)
    return qm, x


def _unit_layers(unit):
    return quant_layers(unit.module)


def test_a_units_gradients_alone_equal_those_of_the_pass_over_every_layer():
    torch.set_num_threads(1)
    qm, x = _calibrated()
    every = hs.output_grads(qm.model, x, chunk_size=4)
    for unit in qm.units:
        alone = hs.output_grads(qm.model, x, 4, layers=_unit_layers(unit))
        assert alone.keys() == {m for m in _unit_layers(unit) if m in every}
        for layer, g in alone.items():
            assert torch.equal(g, every[layer])


def test_unit_by_unit_backward_gives_the_whole_model_backward_s_gradients_bit_for_bit():
    torch.set_num_threads(1)
    qm, x = _calibrated()
    every = hs.output_grads(qm.model, x, chunk_size=4)
    per_unit = hs.UnitGradients(qm.model, qm.units, x, chunk_size=4)
    seen = {}
    for unit in qm.units:
        for layer in _unit_layers(unit):
            g = per_unit.layer_grad(unit, layer)
            if g is not None:
                seen[layer] = g
        per_unit.unit_done(unit)
    assert seen.keys() == every.keys()
    assert all(torch.equal(seen[m], every[m]) for m in every)


def test_unit_gradients_refuse_units_out_of_order():
    qm, x = _calibrated()
    per_unit = hs.UnitGradients(qm.model, qm.units, x, chunk_size=4)
    with pytest.raises(RuntimeError, match="forward order"):
        per_unit.layer_grad(qm.units[1], _unit_layers(qm.units[1])[0])


def test_a_layer_s_inputs_and_output_captured_alone_equal_those_of_one_pass_over_the_unit():
    qm, x = _calibrated()
    y = x
    with quant_disabled(qm.model):
        for unit in qm.units:
            seen = {}

            def keep(mod, args, out):
                seen.setdefault(mod, (tuple(a.detach() for a in args), out.detach()))

            handles = [m.register_forward_hook(keep) for m in _unit_layers(unit)]
            y_next = unit.forward(y)
            for h in handles:
                h.remove()
            for layer, (args, out) in seen.items():
                alone_args, alone_out = layer_call(unit.forward, layer, y)
                assert torch.equal(alone_out, out) and all(torch.equal(a, b) for a, b in zip(alone_args, args))
            y = y_next


def test_search_equals_the_search_with_the_whole_model_s_gradients(monkeypatch):
    torch.set_num_threads(1)
    # cross entropy: the loss `output_grads` differentiates (the KL default's are rounding residuals)
    cfg = hs.SearchConfig(search_candidates=4, search_rounds=1, chunk_size=4, grad_loss="ce")
    per_unit, x = _calibrated()
    kept, _ = _calibrated()
    stats = hs.search_model(per_unit.model, per_unit.units, x, cfg)

    everything = hs.output_grads(kept.model, x, cfg.chunk_size)  # the whole model's backward, before any search
    calls = []

    class FromTheWholeModel:
        def __init__(self, *args):
            pass

        def layer_grad(self, unit, layer):
            calls.append(layer)
            return everything.get(layer)

        def unit_done(self, unit):
            pass

    monkeypatch.setattr(hs, "UnitGradients", FromTheWholeModel)
    assert hs.search_model(kept.model, kept.units, x, cfg) == stats
    assert stats["searched_layers"] == len(calls)
    qa, qb = quantizers(per_unit.model), quantizers(kept.model)
    for name in qa:
        sa, sb = qa[name].state_dict(), qb[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_a_given_loss_takes_the_whole_model_backward_for_each_unit(monkeypatch):
    """A detector's loss reaches the backbone through its neck: not a chain of units."""
    cfg = hs.SearchConfig(search_candidates=2, search_rounds=1, chunk_size=4)
    qm, x = _calibrated()
    calls = []
    real = hs.output_grads

    def counted(model, calib, chunk_size, loss=None, layers=None):
        calls.append(loss)
        return real(model, calib, chunk_size, loss, layers)

    def loss(chunk):
        logits = qm.model(chunk)
        return F.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum")

    monkeypatch.setattr(hs, "output_grads", counted)
    hs.search_model(qm.model, qm.units, x, cfg, loss)
    assert len(calls) == len(qm.units) and all(c is loss for c in calls)


def test_tsptq_two_scale_quantizers_join_the_hessian_search():
    """TSPTQ-ViT with `search_rounds`: V-2SF and O-2SF take part in PTQ4ViT's search (their own
    candidates), and the search moves some of their parameters."""
    from ptqbench.quant.two_scale import OutlierTwoScaleQuantizer, ValueTwoScaleQuantizer

    torch.set_num_threads(1)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    states = []
    for rounds in (0, 2):
        search = {"search_rounds": rounds, "search_candidates": 6, "chunk_size": 3} if rounds else {"search_rounds": 0}
        method = build_method({"name": "tsptq", **search}, Bits(4, 4))
        qm = make_quantizable(make_tiny_vit(seed=0), method.plan())
        method.quantize(qm, x)
        states.append({n: q.search_params() for n, q in quantizers(qm.model).items()
                       if isinstance(q, (ValueTwoScaleQuantizer, OutlierTwoScaleQuantizer))})
    plain, searched = states
    assert plain.keys() == searched.keys() and len(plain) >= 4  # post-softmax, post-GELU, post-LN x blocks
    moved = [n for n in plain if any(not torch.equal(torch.as_tensor(a), torch.as_tensor(b))
                                     for a, b in zip(plain[n], searched[n]) if a is not None)]
    assert moved, "the search kept every two-scale quantizer's calibration"


def test_two_scale_search_candidates_round_trip():
    """A quantizer's current parameters, applied again, quantize identically; every candidate
    applies and quantizes to finite values."""
    from ptqbench.quant.two_scale import OutlierTwoScaleQuantizer, ValueTwoScaleQuantizer

    g = torch.Generator().manual_seed(0)
    post_ln = torch.randn(4, 10, 16, generator=g)
    post_ln[..., 3] *= 20  # an outlier channel
    for q, x in ((ValueTwoScaleQuantizer(4, "post_softmax"), torch.softmax(torch.randn(4, 3, 10, 10, generator=g) * 3, -1)),
                 (OutlierTwoScaleQuantizer(4, "post_ln"), post_ln)):
        q.calibrate(x)
        ref = q(x)
        now = q.search_params()
        cands = q.search_candidates(x, torch.linspace(0.5, 1.2, 4))
        assert len(cands) >= 4
        for c in cands:
            q.apply_search_params(c)
            assert torch.isfinite(q(x)).all()
        q.apply_search_params(now)
        assert torch.equal(q(x), ref)


def test_quantized_input_search_reads_each_layer_s_input_from_the_quantized_stream(monkeypatch):
    """`search_inputs=quantized`: a layer is searched on the input the (already searched)
    quantized upstream layers give, taken before the layer runs, not on its FP input."""
    torch.set_num_threads(1)
    cfg = hs.SearchConfig(search_candidates=2, search_rounds=1, chunk_size=4, search_inputs="quantized")
    qm, x = _calibrated()
    layer = qm.model.blocks[0].mlp.fc2
    seen = {}
    real = hs.search_layer

    def spy(lyr, inputs, target, grad2, c, *rest):
        if lyr is layer:
            with torch.no_grad():
                block_in = qm.units[0].forward(x)
                seen["quantized"] = layer_call(qm.units[1].forward, layer, block_in, output=False)[0][0]
                with quant_disabled(qm.model):
                    seen["fp"] = layer_call(qm.units[1].forward, layer, block_in)[0][0]
            seen["searched"] = inputs[0]
        return real(lyr, inputs, target, grad2, c, *rest)

    monkeypatch.setattr(hs, "search_layer", spy)
    hs.search_model(qm.model, qm.units, x, cfg)
    assert torch.equal(seen["searched"], seen["quantized"])
    assert not torch.equal(seen["searched"], seen["fp"])
