"""The Hessian-guided search computes each unit's output gradients in its own FP pass: the same
gradients, so the same search result, as one pass that keeps every layer's gradients."""

import torch

import ptqbench.algorithms.hessian_search as hs
from ptqbench.methods import Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.quant import quantizers
from tests.conftest import make_tiny_vit


def _calibrated(seed: int = 0):
    method = build_method({"name": "ptq4vit", "search_rounds": 0}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(seed=seed), method.plan())
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    method.quantize(qm, x)
    return qm, x


def _unit_layers(unit):
    return [m for m in unit.module.modules() if isinstance(m, hs.Layer)]


def test_a_units_gradients_alone_equal_those_of_the_pass_over_every_layer():
    torch.set_num_threads(1)
    qm, x = _calibrated()
    every = hs.output_grads(qm.model, x, chunk_size=4)
    for unit in qm.units:
        alone = hs.output_grads(qm.model, x, 4, layers=_unit_layers(unit))
        assert alone.keys() == {m for m in _unit_layers(unit) if m in every}
        for layer, g in alone.items():
            assert torch.equal(g, every[layer])


def test_search_with_per_unit_gradients_equals_search_with_all_gradients_kept(monkeypatch):
    torch.set_num_threads(1)
    cfg = hs.SearchConfig(search_candidates=4, search_rounds=1, chunk_size=4)
    per_unit, x = _calibrated()
    kept, _ = _calibrated()
    calls = []
    real = hs.output_grads
    stats = hs.search_model(per_unit.model, per_unit.units, x, cfg)

    everything = real(kept.model, x, cfg.chunk_size)  # the former single pass, before any search

    def from_the_single_pass(model, calib, chunk_size, loss=None, layers=None):
        calls.append(len(layers))
        return {m: everything[m] for m in layers if m in everything}

    monkeypatch.setattr(hs, "output_grads", from_the_single_pass)
    assert hs.search_model(kept.model, kept.units, x, cfg) == stats
    assert len(calls) == len(kept.units) and stats["searched_layers"] == sum(calls)
    qa, qb = quantizers(per_unit.model), quantizers(kept.model)
    for name in qa:
        sa, sb = qa[name].state_dict(), qb[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_tsptq_two_scale_quantizers_join_the_hessian_search():
    """TSPTQ-ViT with `search_rounds`: V-2SF and O-2SF take part in PTQ4ViT's search (their own
    candidates), and the search moves some of their parameters."""
    from ptqbench.quant.two_scale import OutlierTwoScaleQuantizer, ValueTwoScaleQuantizer

    torch.set_num_threads(1)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    states = []
    for rounds in (0, 2):
        method = build_method({"name": "tsptq", "search_rounds": rounds, "search_candidates": 6, "chunk_size": 3},
                              Bits(4, 4))
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
