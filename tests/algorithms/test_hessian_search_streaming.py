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
