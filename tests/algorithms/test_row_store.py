"""Reconstruction's per-image activations in temporary files (ptqbench.algorithms.row_store): the
same rows back, the same trained model as with the activations in memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.conftest import make_tiny_vit

from ptqbench.algorithms import row_store
from ptqbench.algorithms.reconstruction import ReconConfig, reconstruct
from ptqbench.algorithms.row_store import RowStore
from ptqbench.errors import StorageError
from ptqbench.methods import Bits, build_method
from ptqbench.models.adapter import make_quantizable


def test_rows_come_back_as_written_by_index_slice_and_chunk(tmp_path):
    x = torch.randn(13, 5, 7)
    store = RowStore(13, (5, 7), torch.float32, directory=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # unlinked from the start: nothing to clean up after a crash
    for c in x.split(4):
        store.append(c)
    idx = torch.tensor([12, 0, 3, 3, 7])
    assert torch.equal(store[idx], x[idx])
    assert torch.equal(store[2:9], x[2:9]) and torch.equal(torch.cat(list(store.split(5))), x)
    assert store.shape == x.shape and len(store) == 13 and store.device.type == "cpu"
    with pytest.raises(ValueError, match="overflow"):
        store.append(x[:1])
    with pytest.raises(IndexError):
        store[torch.tensor([13])]
    with pytest.raises(ValueError, match="does not fit"):
        RowStore(2, (5, 7), torch.float32).append(torch.zeros(1, 5, 6))
    with pytest.raises(ValueError, match="expected 3 rows, got 2"):
        RowStore.of_chunks(x[:2].split(1), 3)


def test_a_disk_without_room_is_a_clear_error_naming_the_fixes(monkeypatch, tmp_path):
    monkeypatch.setattr(row_store.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(StorageError, match="TMPDIR.*recon_spill=false"):
        RowStore(100, (197, 192), torch.float32, directory=str(tmp_path))


def _trained(cfg: ReconConfig, spill: bool, fp_targets=None):
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    meth = build_method({"name": "dopq", "reconstruct": False}, Bits(4, 4))  # calibration only; `cfg` reconstructs
    qm = make_quantizable(make_tiny_vit(), meth.plan())
    meth.quantize(qm, images)
    row_store.set_spill(spill)
    try:
        stats = reconstruct(qm.model, qm.units, images, cfg, fp_targets)
    finally:
        row_store.set_spill(True)
    with torch.no_grad():
        return qm.model(images), {k: v for k, v in stats.items() if not k.endswith(("_s", "_per_iter")) and k != "recon_per_unit"}, [
            {k: v for k, v in u.items() if not k.endswith("seconds") and not k.endswith("_s")}
            for u in stats["recon_per_unit"]]


class _Lookup:
    """An FP-target store that computes every output (the cache's path through `unit_outputs`)."""

    def unit_outputs(self, model):
        return lambda index, compute: compute()


BASE = ReconConfig(iters=6, batch_size=4, learn=("act_scale", "weight_rounding"), progress=False)


@pytest.mark.parametrize("cfg, lookup", [
    (BASE, False),
    (dataclasses.replace(BASE, fp_input_prob=0.5, act_quant_prob=0.5, holdout=0.25, curriculum=True), False),
    (dataclasses.replace(BASE, loss_weights="perturbation_hessian", hessian_chunk=5, hessian_mean=False), False),
    (dataclasses.replace(BASE, loss_weights="fisher_dplr", fisher_k=2, hessian_chunk=5), False),
    (dataclasses.replace(BASE, units="blocks", loss_reduction="sum_dim1"), True),
], ids=["brecq", "qdrop_mix_holdout_curriculum", "aphq_hessian", "fimaq_fisher", "blocks_cached_targets"])
def test_spilled_reconstruction_trains_the_same_model_bit_for_bit(cfg, lookup, monkeypatch):
    written = []
    real = RowStore.append
    monkeypatch.setattr(RowStore, "append", lambda self, c: (written.append(c.shape[0]), real(self, c))[1])
    kept = _trained(cfg, spill=False, fp_targets=_Lookup() if lookup else None)
    assert written == []
    spilled = _trained(cfg, spill=True, fp_targets=_Lookup() if lookup else None)
    assert written, "nothing went to a RowStore"
    assert torch.equal(kept[0], spilled[0])
    assert kept[1:] == spilled[1:]


def test_spill_is_for_cpu_only():
    assert row_store.spill_enabled(torch.device("cpu"))
    assert not row_store.spill_enabled(torch.device("cuda"))
    row_store.set_spill(False)
    try:
        assert not row_store.spill_enabled(torch.device("cpu"))
    finally:
        row_store.set_spill(True)
