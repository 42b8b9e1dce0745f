"""APHQ-ViT's and FIMA-Q's parts (one code family). APHQ-ViT: the clip percentile, the average perturbation Hessian, the GELU -> ReLU MLP
stage, the Hessian-weighted block loss, and the method's refusal of detectors (bit-identity with
the released code on DeiT-T: docs/anchors/aphq/compare_mlp_stage.py). FIMA-Q: the DPLR loss, the
Fisher rows, token-wise scales."""

from __future__ import annotations

import dataclasses
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


def _whole_graph(units: list[Unit], index: int, x: torch.Tensor, site, eps: float, chunk: int) -> torch.Tensor:
    """The site gradients by one backward through the whole rest of the model (the memory of
    every remaining unit's graph), the way the release takes them."""
    rest = units[index + 1:]

    def run(y):
        for u in rest:
            y = u.forward(y)
        return y

    out = []
    for xb in torch.split(x, chunk):
        with torch.no_grad():
            ref = F.softmax(run(units[index].forward(xb)) / 20.0, -1)
        pair = []
        for shift in (eps, -eps):
            seen = []

            def shifted(y, shift=shift, seen=seen):
                y = y.detach().requires_grad_(True) + torch.ones_like(y) * shift
                seen.append(y)
                return y
            with torch.enable_grad():
                if site is None:
                    with torch.no_grad():
                        y = units[index].forward(xb)
                    logits = run(shifted(y))
                else:
                    h = site.register_forward_hook(lambda _m, _i, o: shifted(o))
                    logits = run(units[index].forward(xb))
                    h.remove()
                loss = F.kl_div(F.log_softmax(logits / 20.0, -1), ref, reduction="batchmean")
                pair.append(torch.autograd.grad(loss, seen[0])[0])
        out.append((pair[0] - pair[1]).abs())
    return torch.cat(out)


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("at_mlp", [False, True])
@pytest.mark.parametrize("rebuild_images", [1, 8])
def test_unit_by_unit_backward_equals_the_whole_graph_bit_for_bit(index, at_mlp, rebuild_images):
    """perturbation_hessian backpropagates unit by unit (one unit's graph in memory), each unit's
    graph over `rebuild_images` images at a time; on a tiny ViT its weights equal the one-backward
    ones exactly, at a block's output and inside it."""
    model = make_tiny_vit().eval()
    units = family_of(model).units(model)
    site = units[index].module.mlp if at_mlp and index > 0 else None
    x = torch.randn(5, 3, 32, 32)
    for i in range(index):
        with torch.no_grad():
            x = units[i].forward(x)
    got = perturbation_hessian(units, index, x, site=site, eps=1e-6, chunk=2, mean=False,
                               rebuild_images=rebuild_images)
    assert torch.equal(got, _whole_graph(units, index, x, site, 1e-6, 2))
    assert got.abs().sum() > 0


def test_the_rest_units_graphs_are_built_a_few_images_at_a_time():
    """loss_grad_through builds a graph for the units before the last over `rebuild_images` images
    at a time (the loss, which couples the images by its batch mean, sees them all)."""
    from ptqbench.algorithms.unit_grad import loss_grad_through

    model = make_tiny_vit().eval()
    units = family_of(model).units(model)
    with torch.no_grad():
        x = units[0].forward(torch.randn(5, 3, 32, 32))
    graph_batches: dict[int, list[int]] = {}
    for i, u in enumerate(units[1:]):
        def spy(y, i=i, fwd=u.forward):
            if torch.is_grad_enabled():
                graph_batches.setdefault(i, []).append(y.shape[0])
            return fwd(y)
        u.forward = spy
    g = loss_grad_through(units[1:], x, lambda logits: logits.logsumexp(-1).mean(), rebuild_images=2)
    assert graph_batches[len(units) - 2] == [5]  # the head, with the loss
    assert all(graph_batches[i] == [2, 2, 1] for i in range(len(units) - 2))
    assert g.shape == x.shape and g.abs().sum() > 0


def test_the_sites_unit_graph_is_not_held_through_the_rest_backward(monkeypatch):
    """For a site inside a unit, the rest's unit-by-unit backward starts with no graph alive: the
    unit's own graph is rebuilt after it, so at most one unit's graph is held at a time."""
    import weakref

    from ptqbench.algorithms import perturbation_hessian as ph

    class Saved:
        def __init__(self, t: torch.Tensor) -> None:
            self.t = t

    live: weakref.WeakSet = weakref.WeakSet()

    def pack(t: torch.Tensor) -> Saved:
        s = Saved(t.detach())  # not t: a saved output would hold its own node in a cycle gc cannot see
        live.add(s)
        return s

    alive_at_entry: list[int] = []
    inner = ph.loss_grad_through
    monkeypatch.setattr(ph, "loss_grad_through", lambda *a, **k: (alive_at_entry.append(len(live)), inner(*a, **k))[1])
    model = make_tiny_vit().eval()
    units = family_of(model).units(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        x = units[0].forward(x)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.t):
        got = perturbation_hessian(units, 1, x, site=units[1].module.mlp, eps=1e-6, chunk=2, mean=False)
    assert alive_at_entry == [0, 0, 0, 0]  # two chunks x two signs
    assert torch.equal(got, _whole_graph(units, 1, x, units[1].module.mlp, 1e-6, 2))


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
    assert relu_mlps(s_units) == 2
    x = fam.unit_input(student, torch.randn(8, 3, 32, 32))
    stats = reconstruct_mlps(s_units, t_units, x, MLPReconConfig(iters=30, batch_size=4, lr=1e-3, progress=False))
    assert stats["mlp_recon_blocks"] == 2
    for b in stats["mlp_recon_per_block"]:
        assert b["loss_end"] < b["loss_start"] and b["ub"] > 0
    assert all(isinstance(blk.mlp.act, nn.ReLU) for blk in student.blocks)
    assert all(not isinstance(blk.mlp.act, nn.ReLU) for blk in teacher.blocks)
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"blocks.{i}.mlp.{fc}.{p}" for i in range(2) for fc in ("fc1", "fc2") for p in ("weight", "bias")}


def test_the_mlp_loss_divisor_scales_the_loss_and_is_a_method_key():
    import copy

    torch.manual_seed(0)
    teacher = make_tiny_vit(depth=1)
    x = None
    starts = []
    for divisor in (10.0, 5.0):
        student = copy.deepcopy(teacher)
        fam = family_of(student)
        s_units, t_units = fam.units(student), fam.units(teacher)
        relu_mlps(s_units)
        if x is None:
            x = fam.unit_input(student, torch.randn(4, 3, 32, 32))
        cfg = MLPReconConfig(iters=0, batch_size=4, loss_divisor=divisor, progress=False)
        starts.append(reconstruct_mlps(s_units, t_units, x, cfg)["mlp_recon_per_block"][0]["loss_start"])
    assert starts[1] == pytest.approx(2 * starts[0], rel=1e-5)  # the release divides by 10
    m = build_method({"name": "aphq", "mlp_loss_divisor": 5.0}, Bits(4, 4))
    assert m.config.mlp_config(4).loss_divisor == 5.0
    assert build_method({"name": "aphq"}, Bits(4, 4)).config.mlp_config(4).loss_divisor == 10.0
    with pytest.raises(ConfigError, match="loss_divisor"):
        build_method({"name": "aphq", "mlp_loss_divisor": 0}, Bits(4, 4))


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


@pytest.mark.parametrize("attention", ["timm", "unfused"])
def test_aphq_teacher_attention_key_picks_the_teachers_attention(attention):
    """method.teacher_attention=timm (the default, the release's plain timm `full_model`) gives
    the Hessian the plain timm model gives, bit for bit; the student keeps ptqbench's attention."""
    import copy

    from ptqbench.models import make_quantizable
    from ptqbench.models.attention import QuantAttention
    from ptqbench.quant.calibration import quant_disabled

    m = build_method({"name": "aphq", "teacher_attention": attention}, Bits(4, 4))
    model = make_tiny_vit()
    plain = copy.deepcopy(model)
    qm = make_quantizable(model, m.plan())
    teacher = m.steps()[0].teacher_of(qm)
    assert all(a.fused_attn == (attention == "timm") for a in teacher.model.modules() if isinstance(a, QuantAttention))
    assert not any(a.fused_attn for a in qm.model.modules() if isinstance(a, QuantAttention))
    if attention == "timm":
        fam = family_of(plain)
        x = fam.unit_input(plain, torch.randn(4, 3, 32, 32))
        with torch.no_grad():
            x = fam.units(plain)[0].forward(x)
        with quant_disabled(teacher.model):
            ours = perturbation_hessian(teacher.units, 1, x)
        assert torch.equal(ours, perturbation_hessian(fam.units(plain), 1, x))
    with pytest.raises(ConfigError, match="teacher_attention"):
        build_method({"name": "aphq", "teacher_attention": "sdpa"}, Bits(4, 4))


def test_embedding_hessian_is_taken_where_the_release_perturbs_it():
    """hessian_site=inner (the default): the patch embedding's Hessian is the release's, taken at
    PatchEmbed's output (`x + ones * 1e-6` there, the whole model's KL, the gradient at that output;
    written out below), with a zero row for the class token that the unit prepends after it."""
    model = make_tiny_vit()
    fam = family_of(model)
    units = fam.units(model)
    assert units[0].inner_output is model.patch_embed and all(u.inner_output is None for u in units[1:])
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    x = fam.unit_input(model, images)
    site = perturbation_hessian(units, 0, x, site=units[0].inner_output)
    grads = []
    for shift in (1e-6, -1e-6):
        seen = []

        def perturb(_m, _i, out, shift=shift):
            y = out.detach().requires_grad_(True)
            seen.append(y)
            return y + torch.ones_like(y) * shift

        with torch.no_grad():
            ref = F.softmax(model(images) / 20, -1)
        handle = model.patch_embed.register_forward_hook(perturb)
        loss = F.kl_div(F.log_softmax(model(images) / 20, -1), ref, reduction="batchmean")
        handle.remove()
        grads.append(torch.autograd.grad(loss, seen[0])[0])
    assert torch.equal(site, (grads[0] - grads[1]).abs().mean(0, keepdim=True))

    captured = {}

    def stop(unit, layers, x_q, x_fp, target, cfg, i, weights, fisher):
        captured[i] = weights
        raise StopIteration

    cfg = rc.ReconConfig(iters=1, batch_size=2, loss_weights="perturbation_hessian", progress=False)
    for where in ("inner", "output"):
        original = rc._train_unit
        rc._train_unit = stop
        try:
            with pytest.raises(StopIteration):
                rc.reconstruct(model, units, x, dataclasses.replace(cfg, hessian_site=where))
        finally:
            rc._train_unit = original
        w = captured.pop(0)
        assert w.shape == (1, 1 + site.shape[1], site.shape[2])
        if where == "inner":
            assert torch.equal(w[:, 1:], site) and not w[:, 0].any()
        else:
            assert torch.equal(w, perturbation_hessian(units, 0, x))
    with pytest.raises(ValueError, match="hessian_site"):
        rc.ReconConfig(hessian_site="conv")


# -- FIMA-Q (the same code family) --------------------------------------------------------------------
def test_dplr_loss_is_the_released_formula_and_renormalizes_at_each_refresh():
    from ptqbench.algorithms.fisher_dplr import DPLRLoss, refresh_steps

    torch.manual_seed(0)
    out, tgt = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    g1, d1, g2, d2 = (torch.rand(1, 15) for _ in range(4))
    loss = DPLRLoss(p1=1.0, p2=1.0)
    with pytest.raises(RuntimeError, match="refresh"):
        loss(out, tgt)
    loss.refresh(g1, d1)
    assert torch.allclose(loss(out, tgt), torch.tensor(2.0))  # each term over its own first value
    loss.refresh(g2, d2)
    G, D = torch.cat([g1, g2]), torch.cat([d1, d2])
    e = (out - tgt).abs().reshape(4, -1)
    a = e.unsqueeze(1) @ G.T
    l1 = (a @ torch.linalg.inv(D @ D.T) @ a.transpose(1, 2)).mean()
    l2 = (e.pow(2) * G.mean(0)).mean()
    assert loss.rank == 2 and torch.allclose(loss(out, tgt), torch.tensor(2.0))
    out2 = out * 0.5
    e2 = (out2 - tgt).abs().reshape(4, -1)
    a2 = e2.unsqueeze(1) @ G.T
    want = (a2 @ torch.linalg.inv(D @ D.T) @ a2.transpose(1, 2)).mean() / l1 + (e2.pow(2) * G.mean(0)).mean() / l2
    assert torch.allclose(loss(out2, tgt), want)
    assert refresh_steps(100, 5, "spread") == {0, 20, 40, 60, 80}
    assert refresh_steps(100, 5, "first") == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="iters >= k"):
        refresh_steps(3, 5, "spread")


def test_fisher_rows_are_sample_means_of_abs_gradient_and_error():
    from ptqbench.algorithms.fisher_dplr import fisher_rows

    units, _ = _chain()
    x = torch.randn(6, 4, 6)
    with torch.no_grad():
        y_fp = units[0].forward(x)
    noisy = Unit("blocks.0", lambda t: units[0].forward(t) * 1.1, units[0].module, BLOCK)
    g, d = fisher_rows(noisy, units[1:], x, y_fp, temperature=20.0, chunk=4)
    grads = []
    for xb, yb in zip(torch.split(x, 4), torch.split(y_fp, 4)):
        with torch.no_grad():
            ref = F.softmax(units[1].forward(yb) / 20, -1)
        y = noisy.forward(xb)
        loss = F.kl_div(F.log_softmax(units[1].forward(y) / 20, -1), ref, reduction="batchmean")
        grads.append(torch.autograd.grad(loss, y)[0])
    assert torch.equal(g, torch.cat(grads).reshape(6, -1).abs().mean(0)[None])
    with torch.no_grad():
        assert torch.equal(d, (noisy.forward(x) - y_fp).abs().mean(0).reshape(1, -1))


@pytest.mark.parametrize("rebuild_images", [1, 8])
def test_fisher_rows_on_a_tiny_vit_equal_one_backward_through_the_rest(rebuild_images):
    """fisher_rows backpropagates the rest unit by unit, each unit's graph over `rebuild_images`
    images at a time: the same gradient rows, bit for bit, as one backward through every remaining
    block and the head."""
    from ptqbench.algorithms.fisher_dplr import fisher_rows

    model = make_tiny_vit().eval()
    units = family_of(model).units(model)
    with torch.no_grad():
        x = units[0].forward(torch.randn(5, 3, 32, 32))
        y_fp = units[1].forward(x)
    g, _ = fisher_rows(units[1], units[2:], x, y_fp, temperature=20.0, chunk=4, rebuild_images=rebuild_images)
    grads = []
    for xb, yb in zip(torch.split(x, 4), torch.split(y_fp, 4)):
        with torch.no_grad():
            logits = yb
            for u in units[2:]:
                logits = u.forward(logits)
            ref = F.softmax(logits / 20, -1)
        y = units[1].forward(xb).detach().requires_grad_(True)
        logits = y
        for u in units[2:]:
            logits = u.forward(logits)
        loss = F.kl_div(F.log_softmax(logits / 20, -1), ref, reduction="batchmean")
        grads.append(torch.autograd.grad(loss, y)[0])
    assert torch.equal(g, torch.cat(grads).reshape(5, -1).abs().mean(0)[None])


def test_the_fisher_refresh_forward_drops_its_graph_and_changes_no_value(monkeypatch):
    """fisher_rows runs the training unit in grad mode (soft rounding, QDrop's drop) but drops the
    tensors autograd saves: FIMA-Q on a tiny ViT gives the same quantized model, bit for bit, as
    with the graph kept."""
    import contextlib

    from ptqbench.algorithms import fisher_dplr
    from ptqbench.algorithms.unit_grad import graph_values_dropped
    from ptqbench.models import make_quantizable

    def quantized_state() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        m = build_method({"name": "fimaq", "iters": 5, "batch_size": 2, "grid_candidates": 32, "grid_rounds": 0,
                          "progress": False}, Bits(4, 4))
        qm = make_quantizable(make_tiny_vit(depth=1), m.plan())
        m.quantize(qm, torch.randn(4, 3, 32, 32))
        return qm.model.state_dict()

    dropped = quantized_state()
    monkeypatch.setattr(fisher_dplr, "graph_values_dropped", contextlib.nullcontext)
    kept = quantized_state()
    assert dropped.keys() == kept.keys()
    assert all(torch.equal(dropped[k], kept[k]) for k in kept)

    w = torch.randn(3, requires_grad=True)
    with graph_values_dropped():
        y = (w * w).sum()
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="graph_values_dropped"):
        y.backward()


def test_fimaq_gives_every_token_its_scale_and_runs_on_a_tiny_vit():
    from ptqbench.models import make_quantizable
    from ptqbench.quant.calibration import quantizers

    m = build_method({"name": "fimaq", "iters": 5, "batch_size": 2, "grid_candidates": 32, "grid_rounds": 0,
                      "progress": False}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(depth=1), m.plan())
    x = torch.randn(4, 3, 32, 32)
    stats = m.quantize(qm, x)
    assert stats["recon_units"] == 3 and stats["token_wise_scales"] == 8
    qs = quantizers(qm.model)
    tokens = qm.model.patch_embed.num_patches + 1
    assert tuple(qs["blocks.0.mlp.fc2.input_quantizer"].scale.shape) == (1, tokens, 1)
    assert tuple(qs["blocks.0.attn.matmul_qk.b_quantizer"].scale.shape) == (1, 2, 1, tokens)
    assert qs["head.input_quantizer"].scale.dim() == 0  # the head's input is 2-D: one scale, as released
    with torch.no_grad():
        assert torch.isfinite(qm.model(x)).all()
    with pytest.raises(ConfigError, match="fisher_k"):
        build_method({"name": "fimaq", "iters": 3}, Bits(4, 4))


def test_an_expanded_scale_quantizes_like_the_per_tensor_one():
    from ptqbench.quant.uniform import UniformQuantizer

    q = UniformQuantizer(4, "post_gelu")
    x = torch.randn(2, 7, 5) * 3
    q.calibrate(x)
    before = q(x)
    q.expand_scale((1, 7, 1))
    assert q.scale.shape == (1, 7, 1) and torch.equal(q(x), before)
