"""The block-reconstruction engine and the quantizers of DopQ-ViT (TanQ, MOSF) and AIQViT (DFQ,
low-rank branches), on tiny synthetic models (fast, no data needed)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import make_tiny_vit
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.methods import Bits, build_method
from ptqbench.models.adapter import make_quantizable
from ptqbench.algorithms.reparam import reparameterize
from ptqbench.models.structure import ReparamPair
from ptqbench.quant import QuantLinear, RangeSearch, UniformQuantizer
from ptqbench.quant.calibration import quant_disabled
from ptqbench.quant.dynamic_focus import DynamicFocusQuantizer, focus_fake_quant
from ptqbench.quant.learnable import AdaRoundQuantizer
from ptqbench.quant.lowrank import LowRankBranch
from ptqbench.quant.modules import QuantMatMul
from ptqbench.algorithms.reconstruction import ReconConfig, reconstruct
from ptqbench.algorithms.reparam import mad_inliers, mean_scale, mosf_scale
from ptqbench.quant.tan import TanQuantizer, tan_fake_quant, tan_levels


# -- TanQ --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [3, 4])
def test_tanq_levels_monotone_exact_ends_and_denser_near_both_ends(bits):
    levels = tan_levels(bits, 2.7)
    gaps = levels.diff()
    uniform = 1 / (2**bits - 1)
    assert (gaps > 0).all()
    assert levels[0].item() == pytest.approx(0.0, abs=1e-6) and levels[-1].item() == pytest.approx(1.0, abs=1e-6)
    assert gaps[0] < 0.5 * uniform and gaps[-1] < 0.5 * uniform  # crowded at 0 and at 1
    assert gaps[len(gaps) // 2] > uniform  # sparse in the middle
    x = torch.rand(1000)
    q = tan_fake_quant(x, 2.7, bits)
    assert (q[:, None] - levels[None, :]).abs().min(1).values.max() < 1e-5  # every output is a level


def test_tanq_calibration_picks_the_least_mse_theta_and_passes_gradients():
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(4, 50, 50) * 3, -1)  # power-law-like probabilities
    q = TanQuantizer(4, "post_softmax", thetas=(0.3, 1.5, 2.9))
    q.calibrate(attn)
    errs = {t: (tan_fake_quant(attn, t, 4) - attn).pow(2).mean().item() for t in q.thetas}
    assert q.theta == min(errs, key=errs.get)
    x = attn.clone().requires_grad_(True)
    q(x).sum().backward()  # straight-through rounding: a gradient reaches the input
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pi"):
        TanQuantizer(4, "post_softmax", thetas=(3.5,))


# -- MOSF ----------------------------------------------------------------------------------------
def test_mosf_ignores_injected_outlier_channels_where_the_mean_does_not():
    g = torch.Generator().manual_seed(0)
    scales = 0.02 * (1 + 0.05 * torch.randn(192, generator=g)).abs()
    scales[[7, 100, 150]] = torch.tensor([1.0, 2.0, 3.0])  # three outlier channels (50-150x)
    inliers = mad_inliers(scales, 3.0)
    assert not inliers[[7, 100, 150]].any() and inliers.sum() >= 180
    assert mosf_scale(3.0)(scales).item() == pytest.approx(0.02, rel=0.05)
    assert mean_scale(scales).item() > 0.04  # the mean is dragged up by the outliers
    assert mosf_scale(3.0, "mean")(scales).item() == pytest.approx(0.02, rel=0.05)


def test_reparameterization_is_exact_for_the_mosf_scale_too():
    """With an integer shared zero point the per-tensor quantization equals the per-channel one
    for any shared scale: MOSF changes which s~ is folded, not the quantized function."""
    torch.manual_seed(1)
    ln = nn.LayerNorm(16)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(16) * 2)
        ln.weight[3] = 25.0  # an outlier channel
        ln.bias.copy_(torch.randn(16))
    qlin = QuantLinear(nn.Linear(16, 12), UniformQuantizer(4, "post_ln", channel_axis=-1, search=RangeSearch("mse")), None)
    x = torch.randn(4, 30, 16)
    with torch.no_grad():
        qlin.input_quantizer.calibrate(ln(x))
        per_channel = qlin(ln(x))
        reparameterize(ReparamPair("p", ln, qlin), True, mosf_scale(3.0))
        assert torch.allclose(qlin(ln(x)), per_channel, atol=1e-4)


# -- DFQ -----------------------------------------------------------------------------------------
def test_dfq_clamp_reading_clamps_outside_its_interval_and_is_uniform_inside():
    q = DynamicFocusQuantizer(4, "post_softmax", below="clamp", init="mse")
    q.calibrate(torch.rand(1000))
    with torch.no_grad():
        q.b1.fill_(0.1)
        q.b2.fill_(0.6)
    x = torch.tensor([0.0, 0.05, 0.1, 0.3, 0.6, 0.9, 1.0])
    y = q(x)
    assert torch.allclose(y[:3], torch.full((3,), 0.1)) and torch.allclose(y[-3:], torch.full((3,), 0.6))
    inside = q(torch.linspace(0.1, 0.6, 200))
    codes = (inside - 0.1) / (0.5 / 15)
    assert torch.allclose(codes, codes.round(), atol=1e-4) and len(inside.unique()) == 16
    b1 = torch.tensor(0.1, requires_grad=True)
    b2 = torch.tensor(0.6, requires_grad=True)
    focus_fake_quant(torch.rand(500), b1, b2, 4).pow(2).sum().backward()
    assert b1.grad != 0 and b2.grad != 0  # both bounds are learnable


def test_dfq_zero_reading_keeps_zero_and_spreads_the_other_codes_over_the_interval():
    q = DynamicFocusQuantizer(4, "post_softmax", below="zero")
    q.calibrate(torch.rand(1000))
    with torch.no_grad():
        q.b1.fill_(0.1)
        q.b2.fill_(0.6)
    y = q(torch.tensor([0.0, 0.04, 0.06, 0.1, 0.6, 0.9]))
    assert torch.allclose(y, torch.tensor([0.0, 0.0, 0.1, 0.1, 0.6, 0.6]))  # nearest of {0, b1}, clamp above
    levels = q(torch.linspace(0.0, 1.0, 2001)).unique()
    assert len(levels) == 16 and levels[0] == 0  # 2^b codes: 0 and 15 levels on [b1, b2]
    assert torch.allclose(levels[1:].diff(), torch.full((14,), 0.5 / 14), atol=1e-5)
    with torch.no_grad():
        q.b1.fill_(-0.05)  # a negative b1 (training can push it there) reads as 0: zero stays exact
    assert q(torch.zeros(3)).abs().max() == 0
    b1 = torch.tensor(0.1, requires_grad=True)
    b2 = torch.tensor(0.6, requires_grad=True)
    focus_fake_quant(torch.rand(500), b1, b2, 4, below="zero").pow(2).sum().backward()
    assert b1.grad != 0 and b2.grad != 0
    with pytest.raises(ValueError):
        DynamicFocusQuantizer(4, "post_softmax", below="floor")


def test_dfq_output_init_uses_the_matmul_operand():
    """QuantMatMul hands V to an uncalibrated DFQ; the interval then minimizes the error of A @ V,
    which here (V's rows share a large common component, as in ViTs) keeps the large
    probabilities and zeroes the small ones, unlike the MSE pick on A alone."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 50, 50) * 2.5
    attn = logits.softmax(-1)
    v = torch.randn(2, 3, 50, 8) * 0.3 + 3.0
    errs = {}
    for init in ("output", "mse"):
        mm = QuantMatMul(DynamicFocusQuantizer(4, "post_softmax", init=init), None)
        mm.a_quantizer.auto_calibrate = True
        mm(attn, v)
        assert mm.a_quantizer.calibrated and mm.a_quantizer.operand is None  # not kept after the fit
        mm.a_quantizer.auto_calibrate = False
        errs[init] = float((mm(attn, v) - attn @ v).pow(2).mean())
    assert errs["output"] <= errs["mse"]
    standalone = DynamicFocusQuantizer(4, "post_softmax")  # no operand: the output error is the MSE
    standalone.calibrate(attn)
    assert 0 <= float(standalone.b1) < float(standalone.b2) <= float(attn.max()) + 1e-6


def test_aiq_config_refuses_bad_dfq_values():
    from ptqbench.methods.aiq import AIQConfig

    for bad in ({"dfq_below": "floor"}, {"dfq_init": "kl"}, {"dfq_percentiles": [0.3]},
                {"dfq_lower_percentiles": [1.0]}, {"dfq_max_fractions": [0.0]}, {"dfq_percentiles": []},
                {"lr_dfq": -1.0}):
        with pytest.raises(ConfigError):
            AIQConfig(**bad)


# -- learnable pieces ----------------------------------------------------------------------------
def test_adaround_starts_at_the_fp_weight_and_ends_on_the_grid():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    base = UniformQuantizer(3, "weight", channel_axis=0, search=RangeSearch("minmax"))
    base.calibrate(w)
    ada = AdaRoundQuantizer(base, w)
    with torch.enable_grad():
        soft = ada(w)
    codes = base.encode(w)
    inside = (codes > base.qmin) & (codes < base.qmax)  # the range ends clamp
    assert torch.allclose(soft[inside], w[inside], atol=1e-3)  # h(V) = fractional part at initialization
    hard = ada.hard_weight()
    assert torch.allclose(base(hard), hard, atol=1e-6)  # on the grid: the base quantizer is the identity
    assert torch.allclose(hard, base(w), atol=1e-6)  # initial hard rounding = round to nearest


def test_lowrank_search_commits_to_the_most_probable_rank():
    br = LowRankBranch(16, 8, (0, 2, 4), torch.Generator().manual_seed(0))
    assert br.searching and br.rank == 4
    with torch.no_grad():
        br.B.normal_()
        br.arch.copy_(torch.tensor([0.0, 5.0, 0.0]))
    assert br.commit() == 2 and not br.searching and br.num_params() == 2 * (16 + 8)
    with torch.no_grad():
        br.arch = None
    zero = LowRankBranch(16, 8, (0, 4))
    with torch.no_grad():
        zero.arch.copy_(torch.tensor([3.0, 0.0]))
    assert zero.commit() == 0 and zero.num_params() == 0


# -- the engine ------------------------------------------------------------------------------------
def _quantized(method: dict, bits: Bits = Bits(3, 3)):
    meth = build_method(method, bits)
    qm = make_quantizable(make_tiny_vit(), meth.plan())
    return meth, qm


def test_engine_lowers_block_loss_and_is_deterministic():
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    finals = []
    for _ in range(2):
        meth, qm = _quantized({"name": "dopq", "reconstruct": False})
        meth.quantize(qm, images)
        cfg = ReconConfig(iters=25, batch_size=8, learn=("act_scale", "weight_rounding"), lr_act_scale=1e-3,
                          lr_rounding=1e-2, progress=False)
        stats = reconstruct(qm.model, qm.units, images, cfg)
        blocks = [u for u in stats["recon_per_unit"] if u["unit"].startswith("blocks")]
        assert len(blocks) == 2 and all(u["loss_end"] < u["loss_start"] for u in blocks), blocks
        assert not any(p.requires_grad for n, p in qm.model.named_parameters() if "quantizer" in n)
        with torch.no_grad():
            finals.append(qm.model(images))
    assert torch.equal(finals[0], finals[1])


def test_holdout_images_never_train_and_their_loss_is_recorded():
    """With `holdout`, replacing the held-out images changes only the held-out losses: the trained
    model and the training images' losses are bit-identical (images are independent in a ViT)."""
    from ptqbench.algorithms.reconstruction import holdout_split

    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    cfg = ReconConfig(iters=10, batch_size=4, learn=("act_scale", "weight_rounding"), fp_input_prob=0.5,
                      act_quant_prob=0.5, holdout=0.25, progress=False)
    train, held = holdout_split(16, cfg)
    assert len(held) == 4 and sorted(torch.cat([train, held]).tolist()) == list(range(16))
    other = images.clone()
    other[held] = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    runs = []
    for x in (images, other):
        meth, qm = _quantized({"name": "dopq", "reconstruct": False})
        meth.quantize(qm, images)  # the same calibration for both
        stats = reconstruct(qm.model, qm.units, x, cfg)
        with torch.no_grad():
            runs.append((stats, qm.model(images[train])))
    (a, out_a), (b, out_b) = runs
    assert torch.equal(out_a, out_b)
    assert a["recon_loss_train_end"] == b["recon_loss_train_end"]
    assert a["recon_loss_holdout_end"] != b["recon_loss_holdout_end"]
    assert all({"loss_holdout_start", "loss_holdout_end", "loss_train_end"} <= set(u) for u in a["recon_per_unit"])
    assert holdout_split(16, ReconConfig(holdout=0.0)) is None
    with pytest.raises(ValueError, match="holdout"):
        ReconConfig(holdout=1.0)


def test_aiq_trains_lowrank_branches_dfq_bounds_and_reports_extra_params():
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    meth, qm = _quantized({"name": "aiq", "iters": 15, "batch_size": 8, "rank_search": "fixed", "rank": 4,
                           "progress": False})
    dfq = [m for m in qm.model.modules() if isinstance(m, DynamicFocusQuantizer)]
    assert len(dfq) == 2
    stats = meth.quantize(qm, images)
    linears = [m for m in qm.model.modules() if isinstance(m, QuantLinear)]
    assert all(isinstance(m.compensation, LowRankBranch) and m.compensation.rank == 4 for m in linears)
    assert stats["lowrank_extra_params"] == sum(4 * (m.in_features + m.out_features) for m in linears)
    assert stats["recon_loss_end"] < stats["recon_loss_start"]
    assert any(float(q.b2) != pytest.approx(1.0) or float(q.b1) != 0.0 for q in dfq)


def test_aiq_merge_folds_the_branch_into_quantized_weights():
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    meth, qm = _quantized({"name": "aiq", "iters": 5, "batch_size": 4, "ranks": [0, 2], "lowrank_merge": True,
                           "curriculum": False, "progress": False})
    stats = meth.quantize(qm, images)
    assert stats["lowrank_extra_params"] == 0 and stats["lowrank_placement"] == "merged"
    assert all(m.compensation is None for m in qm.model.modules() if isinstance(m, QuantLinear))


def test_aiq_side_branches_evaluate_folded_as_the_same_function_and_branch_keeps_two_paths():
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    outs, layers = {}, {}
    for mode in ("folded", "branch"):
        meth, qm = _quantized({"name": "aiq", "iters": 5, "batch_size": 4, "rank_search": "fixed", "rank": 4,
                               "lowrank_eval": mode, "curriculum": False, "progress": False})
        meth.quantize(qm, images)
        layers[mode] = [m for m in qm.model.modules() if isinstance(m, QuantLinear)]
        with torch.no_grad(), quant_disabled(qm.model):  # activation codes cannot flip: the fold's own rounding
            outs[mode] = qm.model(images)
        if mode == "folded":
            with torch.no_grad():
                qm.model(images)  # the cached fold is reused, not recomputed
            lin = layers[mode][0]
            before = lin._folded
            with torch.no_grad():
                qm.model(images)
            assert lin._folded is before
            with torch.no_grad():  # a changed branch refreshes the fold
                lin.compensation.B.add_(0.5)
                x = torch.randn(5, lin.in_features)
                want = F.linear(lin._quant_input(x), lin.quantized_weight(), lin.bias) + lin.compensation(lin._quant_input(x))
                torch.testing.assert_close(lin(x), want, rtol=1e-5, atol=1e-5)
            lin.compensation.A.requires_grad_(True)  # frozen after its unit; a training step unfreezes it
            lin.compensation.B.requires_grad_(True)
            assert lin.compensation.B.grad is None  # the finished unit's last gradient was dropped
            with torch.enable_grad():  # training runs the two paths: gradients reach B and A
                lin(x).sum().backward()
            assert lin.compensation.B.grad is not None and lin.compensation.A.grad is not None
    assert all(m.fold_compensation for m in layers["folded"]) and not any(m.fold_compensation for m in layers["branch"])
    assert all(m.compensation.rank == 4 for m in layers["folded"])
    # same branches on both sides (same seeds): the outputs differ by float rounding only
    torch.testing.assert_close(outs["folded"], outs["branch"], rtol=1e-5, atol=1e-5)


def test_aiq_evaluates_on_two_paths_by_default_and_rejects_an_unknown_lowrank_eval():
    assert build_method({"name": "aiq"}, Bits(4, 4)).config.lowrank_eval == "branch"  # earlier results, bit for bit
    with pytest.raises(ConfigError, match="lowrank_eval"):
        build_method({"name": "aiq", "lowrank_eval": "fused"}, Bits(4, 4))


@pytest.mark.parametrize("method, bad", [
    ("dopq", {"mosf_deviation": "mode"}), ("dopq", {"mosf_k": 0}), ("aiq", {"rank_search": "nas"}),
    ("aiq", {"weight_learning": "both"}), ("dopq", {"fp_input_prob": 2.0}),
])
def test_bad_options_are_clear_errors(method, bad):
    with pytest.raises((ConfigError, ValueError)):
        meth = build_method({"name": method, **bad}, Bits(4, 4))
        meth.config.engine_config(meth.bits)


def test_iterations_default_to_the_papers_by_bit_width():
    for bits, iters in ((Bits(3, 3), 1000), (Bits(4, 4), 1000), (Bits(6, 6), 200)):
        assert build_method({"name": "dopq"}, bits).config.engine_config(bits).iters == iters
    assert math.isclose(build_method({"name": "aiq"}, Bits(4, 4)).config.engine_config(Bits(4, 4)).lr_act_scale, 4e-5)


@pytest.mark.slow
def test_aiq_job_end_to_end_records_its_reconstruction(tiny_imagenet, tmp_path):
    """One real job through Hydra and run_job (random DeiT-Tiny weights, 4 synthetic images): the
    method's knobs compose, the stats are JSON-serializable, and the record carries them.
    `pytest -m slow`: about 90 s on the 2-core CPU (calibrating 148 quantizers dominates)."""
    from hydra import compose, initialize_config_dir

    from ptqbench.run import run_job

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"data.root={tiny_imagenet}", f"results_dir={tmp_path}", "model.pretrained=false", "calib.size=4",
            "data.batch_size=4", "data.workers=0", "logger=none", "method=aiq", "bits=w4a4", "method.iters=3",
            "method.batch_size=2", "method.ranks=[0,2]", "method.progress=false"])
    rec = run_job(cfg)
    assert rec["status"] == "ok", rec.get("error")
    st = rec["method_stats"]
    # the paper trains only the low-rank branches and the DFQ bounds (learn_act_scale: false)
    assert st["recon_units"] == 14 and st["recon_iters"] == 3 and set(st["recon_learn"]) == {"dfq", "lowrank"}
    assert len(st["lowrank_ranks"]) == 49 and set(st["lowrank_ranks"].values()) <= {0, 2}
    assert rec["quantized_modules"]["quantizers.post_softmax"] == 12
