"""The engine's knobs for the released BRECQ/QDrop/APHQ-ViT loop: QDrop inside the activation
quantizers, the linear beta decay, a constant rounding learning rate, the head's KL loss and the
loss normalized by its first value."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ptqbench.algorithms import reconstruction as rc
from ptqbench.algorithms.reconstruction import ReconConfig
from ptqbench.quant.uniform import UniformQuantizer


def _quantizer() -> UniformQuantizer:
    q = UniformQuantizer(2, "attn_out")
    q.calibrate(torch.linspace(-1, 1, 50))
    return q


def test_qdrop_inside_a_quantizer_mixes_per_element_only_while_training():
    q, x = _quantizer(), torch.randn(4000, requires_grad=True)
    xq = q.quantize(x.detach())
    q.drop = (0.0, torch.Generator().manual_seed(0))
    assert torch.equal(q(x), x)  # never quantized
    q.drop = (0.3, torch.Generator().manual_seed(0))
    y = q(x)
    quantized = (y == xq) & (xq != x)
    assert 0.25 < quantized.float().mean() < 0.35 and torch.all((y == x) | (y == xq))
    with torch.no_grad():  # evaluation and the engine's no-grad passes are never dropped
        assert torch.equal(q(x), xq)
    q.drop = None
    assert torch.equal(q(x), xq)


def test_qdrop_masks_are_the_released_ones_for_the_same_generator_state():
    """The released ports draw `torch.rand_like(x) < p` from the global generator: the same numbers
    laid out like x (strided q, k^T and v views of the qkv output included) give the same mask."""
    q = _quantizer()
    qkv = torch.randn(2, 5, 3 * 2 * 4).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    k_t = qkv[1].transpose(-2, -1).detach().requires_grad_(True)  # non-contiguous, as attention passes it
    q.drop = (0.5, torch.Generator().manual_seed(7))
    y = q(k_t)
    torch.manual_seed(7)
    released = torch.where(torch.rand_like(k_t) < 0.5, q.quantize(k_t.detach()), k_t.detach())
    assert torch.equal(y.detach(), released)


def test_qdrop_unit_input_mix_is_the_released_one_for_the_same_generator_state():
    """Unit inputs: quantized where u < drop_prob (the release's `torch.where(rand_like(x_q) < p,
    x_q, x_fp)`), u drawn right after the batch indices."""
    x_q, x_fp = torch.randn(6, 3, 4), torch.randn(6, 3, 4)
    unit_in = []

    class Unit:
        name, kind = "blocks.0", "block"
        module = torch.nn.Linear(4, 4)

        def forward(self, x):
            unit_in.append(x.detach().clone())
            return self.module(x)

    cfg = ReconConfig(iters=1, batch_size=3, learn=(), fp_input_prob=0.5, loss_normalize=None, progress=False)
    st = rc._UnitState()
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    gen = torch.Generator().manual_seed(11)
    rc._train_loop(Unit(), st, x_q, x_fp, x_fp, cfg, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0),
                   gen, torch.arange(6), torch.arange(6), 3, False, torch.device("cpu"))
    torch.manual_seed(11)
    idx = torch.randperm(6)[:3]
    want = torch.where(torch.rand_like(x_q[idx]) < 0.5, x_q[idx], x_fp[idx])
    assert torch.equal(unit_in[0], want)


def test_linear_beta_is_the_released_linear_temp_decay():
    cfg = ReconConfig(iters=10, warmup=0.2, beta_schedule="linear", progress=False)
    # LinearTempDecay(t_max=10, rel_start_decay=0.2, 20, 2) at t = count = it + 1; regularizer off while t < 2
    want = [None] + [2 + 18 * max(0.0, 1 - (t - 2) / 8) for t in range(2, 11)]
    assert [rc._beta(cfg, it, int(0.2 * 10)) for it in range(10)] == pytest.approx(want)
    cos = ReconConfig(iters=10, warmup=0.2, progress=False)
    assert rc._beta(cos, 1, 2) is None and rc._beta(cos, 2, 2) == pytest.approx(20.0)


def test_constant_rounding_rate_keeps_its_lr_while_the_others_follow_the_cosine():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    groups = [{"params": [a], "lr": 1e-3, "name": "weight_rounding"}, {"params": [b], "lr": 4e-5, "name": "act_scale"}]
    opt = torch.optim.Adam([{k: v for k, v in g.items() if k != "name"} for g in groups])
    sched = rc._scheduler(opt, groups, ReconConfig(iters=4, rounding_schedule="constant", progress=False), 4)
    for t in range(1, 5):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == 1e-3
        assert opt.param_groups[1]["lr"] == pytest.approx(4e-5 * (1 + math.cos(math.pi * t / 4)) / 2, abs=1e-12)


def test_head_kl_loss_and_bad_knobs():
    out, tgt = torch.randn(3, 7), torch.randn(3, 7)
    kl = ReconConfig(head_loss="kl", progress=False)
    want = F.kl_div(F.log_softmax(out, -1), F.softmax(tgt, -1), reduction="batchmean")
    assert torch.equal(rc._unit_loss(out, tgt, kl, head=True), want)
    assert torch.equal(rc._unit_loss(out, tgt, kl, head=False), rc._loss(out, tgt, "mse"))
    for bad in ({"beta_schedule": "step"}, {"rounding_schedule": "x"}, {"head_loss": "ce"}, {"loss_normalize": 0.0},
                {"act_quant_prob": 1.5}):
        with pytest.raises(ValueError):
            ReconConfig(**bad)


def test_the_engine_clears_the_drop_after_each_unit():
    from tests.conftest import make_tiny_vit

    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable
    from ptqbench.quant.calibration import quantizers

    m = build_method({"name": "qdrop", "iters": 3, "batch_size": 2, "grid_candidates": 32, "grid_rounds": 0,
                      "progress": False}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(depth=1), m.plan())
    stats = m.quantize(qm, torch.randn(4, 3, 32, 32))
    assert stats["recon_units"] == 3
    assert all(q.drop is None for q in quantizers(qm.model).values())
