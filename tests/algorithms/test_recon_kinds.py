"""Reconstruction trains what a quantizer says it trains (`Quantizer.start_training`), so a kind
defined outside ptqbench (tests.quant.test_kinds) learns under `learn=("act_scale",)` unchanged."""

import pytest
import torch
from tests.conftest import make_tiny_vit
from tests.quant.test_kinds import ScaledSignQuantizer

from ptqbench.algorithms.reconstruction import ReconConfig, reconstruct
from ptqbench.models.adapter import make_quantizable
from ptqbench.quant import QuantizerSpec, QuantPlan, calibrate, roles


def _toy_plan() -> QuantPlan:
    acts = {r: QuantizerSpec(4) for r in roles.ACTIVATION_ROLES}
    acts[roles.POST_SOFTMAX] = QuantizerSpec(4, kind="test_scaled_sign")
    return QuantPlan(weight=QuantizerSpec(4, per_channel=True), activations=acts)


def test_a_new_kind_trains_its_scale_group_and_is_frozen_after():
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    qm = make_quantizable(make_tiny_vit(), _toy_plan())
    calibrate(qm.model, images)
    toys = [m for m in qm.model.modules() if isinstance(m, ScaledSignQuantizer)]
    assert len(toys) == 2
    before = [float(t.step) for t in toys]
    cfg = ReconConfig(iters=3, batch_size=4, learn=("act_scale",), lr_act_scale=1e-2, progress=False)
    reconstruct(qm.model, qm.units, images, cfg)
    assert all(float(t.step) != b for t, b in zip(toys, before))
    assert not any(t.step.requires_grad for t in toys)


def test_reconstruct_refuses_an_empty_unit_list():
    qm = make_quantizable(make_tiny_vit(), _toy_plan())
    with pytest.raises(ValueError, match="needs the model's units"):
        reconstruct(qm.model, [], torch.zeros(1, 3, 32, 32), ReconConfig(iters=1, progress=False))
