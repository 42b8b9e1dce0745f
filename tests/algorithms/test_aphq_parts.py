"""APHQ-ViT's parts: the clip percentile, the average perturbation Hessian, the GELU -> ReLU MLP
stage, the Hessian-weighted block loss, and the method's refusal of detectors. (Bit-identity with
the released code on DeiT-T: docs/anchors/aphq/compare_mlp_stage.py.)"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tests.conftest import make_tiny_vit

from ptqbench.algorithms import reconstruction as rc
from ptqbench.algorithms.mlp_recon import MLPReconConfig, positive_percentile, reconstruct_mlps, relu_mlps
from ptqbench.algorithms.perturbation_hessian import perturbation_hessian
from ptqbench.errors import ConfigError
from ptqbench.methods import Bits, build_method
from ptqbench.models.families import family_of
from ptqbench.models.structure import BLOCK, HEAD, Unit


def test_positive_percentile_is_the_ranked_positive_entry():
    torch.manual_seed(0)
    t = torch.randn(7, 301)
    t[0, :5] = 0.0
    for pct in (0.5, 0.98, 0.99, 1.0):
        pos = torch.sort(t[t > 0]).values
        rank = math.ceil(float(torch.tensor(float(pos.numel())) * pct)) - 1
        assert positive_percentile(t, pct) == float(pos[rank])
    with pytest.raises(ValueError, match="no positive"):
        positive_percentile(-t.abs(), 0.9)


def _chain() -> tuple[list[Unit], nn.Module]:
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
    block = nn.Sequential(inner, nn.Linear(6, 6))
    head = nn.Linear(6, 5)
    units = [Unit("blocks.0", block, block, BLOCK), Unit("head", head, head, HEAD)]
    return units, inner


def _explicit(units: list[Unit], x: torch.Tensor, shift: float, at_inner: bool) -> torch.Tensor:
    """The gradient of KL(p || softmax(logits / 20)) at the (shifted) site, written out."""
    block, head = units[0].module, units[1].module
    with torch.no_grad():
        ref = F.softmax(head(block(x)) / 20, -1)
    if at_inner:
        y = block[0](x).detach().requires_grad_(True)
        ys = y + torch.ones_like(y) * shift
        logits = head(block[1](ys))
    else:
        y = block(x).detach().requires_grad_(True)
        ys = y + torch.ones_like(y) * shift
        logits = head(ys)
    loss = F.kl_div(F.log_softmax(logits / 20, -1), ref, reduction="batchmean")
    return torch.autograd.grad(loss, ys)[0]


@pytest.mark.parametrize("at_inner", [False, True])
def test_perturbation_hessian_is_the_gradient_difference_at_the_site(at_inner):
    units, inner = _chain()
    x = torch.randn(10, 4, 6)
    eps = 1e-3
    got = perturbation_hessian(units, 0, x, site=inner if at_inner else None, eps=eps, chunk=4, mean=False)
    want = torch.cat([(_explicit(units, xb, eps, at_inner) - _explicit(units, xb, -eps, at_inner)).abs()
                      for xb in torch.split(x, 4)])
    assert torch.equal(got, want)
    mean = perturbation_hessian(units, 0, x, site=inner if at_inner else None, eps=eps, chunk=4)
    assert mean.shape == (1, 4, 6) and torch.equal(mean, want.mean(0, keepdim=True))


def test_weighted_block_loss_and_its_config():
    out, tgt = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    w = torch.rand(1, 5, 4)
    assert torch.equal(rc._loss(out, tgt, "mse", weights=w), ((out - tgt).pow(2) * w).mean())
    assert torch.equal(rc._loss(out, tgt, "mse", weights=torch.ones(1, 5, 4)), rc._loss(out, tgt, "mse"))
    with pytest.raises(ValueError, match="loss_weights"):
        rc.ReconConfig(loss_weights="fisher")
    with pytest.raises(ValueError, match="squared"):
        rc.ReconConfig(loss="l1", loss_weights="perturbation_hessian")


def test_mlp_stage_swaps_gelu_for_relu_and_trains_fc1_fc2_only():
    import copy


    torch.manual_seed(0)
    teacher = make_tiny_vit(depth=2)
    student = copy.deepcopy(teacher)
    fam = family_of(student)
    s_units, t_units = fam.units(student), fam.units(teacher)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert relu_mlps(student, s_units) == 2
    x = fam.unit_input(student, torch.randn(8, 3, 32, 32))
    stats = reconstruct_mlps(s_units, t_units, x, MLPReconConfig(iters=30, batch_size=4, lr=1e-3, progress=False))
    assert stats["mlp_recon_blocks"] == 2
    for b in stats["mlp_recon_per_block"]:
        assert b["loss_end"] < b["loss_start"] and b["ub"] > 0
    assert all(isinstance(blk.mlp.act, nn.ReLU) for blk in student.blocks)
    assert all(not isinstance(blk.mlp.act, nn.ReLU) for blk in teacher.blocks)
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"blocks.{i}.mlp.{fc}.{p}" for i in range(2) for fc in ("fc1", "fc2") for p in ("weight", "bias")}


def test_aphq_runs_on_a_tiny_vit_and_detection_refuses_it():
    from ptqbench.models import make_quantizable
    from ptqbench.tasks.detection import Detection

    m = build_method({"name": "aphq", "iters": 2, "batch_size": 2, "grid_candidates": 32, "grid_rounds": 0,
                      "progress": False}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(depth=1), m.plan())
    stats = m.quantize(qm, torch.randn(4, 3, 32, 32))
    assert stats["mlp_recon_blocks"] == 1 and stats["recon_units"] == 3
    assert isinstance(qm.model.blocks[0].mlp.act, nn.ReLU)
    assert m.config.mlp_config(3).pct == 0.99 and m.config.mlp_config(4).pct == 0.98  # released best.py
    settings = SimpleNamespace(task=SimpleNamespace(quantize="all"))
    with pytest.raises(ConfigError, match="logits"):
        Detection().validate(settings, m)
