"""I&S-ViT's recipe on the engine: weights trained through the weight quantizer, the released loss
reduction, FP targets from a teacher copy, and the three stages in order (tiny models, no data)."""

import copy

import pytest
import torch
from tests.conftest import make_tiny_swin, make_tiny_vit

from ptqbench.algorithms.reconstruction import FPTeacher, ReconConfig, _loss, reconstruct
from ptqbench.methods import Bits, build_method
from ptqbench.models.adapter import make_quantizable
from ptqbench.models.families import FAMILIES
from ptqbench.quant.calibration import quant_disabled, quantizers
from ptqbench.quant.sulq import SULQQuantizer


def _images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ias(**options):
    return build_method({"name": "ias", "iters": 6, "batch_size": 4, "progress": False, **options}, Bits(4, 4))


def test_sum_dim1_reduction_is_the_released_lp_loss():
    out, tgt = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    assert torch.allclose(_loss(out, tgt, "mse", "sum_dim1"), (out - tgt).abs().pow(2).sum(1).mean())
    assert torch.allclose(_loss(out, tgt, "mse", "mean"), (out - tgt).pow(2).mean())
    logits, ref = torch.randn(3, 10), torch.randn(3, 10)
    assert torch.allclose(_loss(logits, ref, "mse", "sum_dim1"), (logits - ref).pow(2).sum(1).mean())


def test_weights_train_through_the_weight_quantizer_and_quantizers_stay_frozen():
    images = _images()
    meth = build_method({"name": "repq"}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(), meth.plan())
    meth.quantize(qm, images)
    scales = {n: b.clone() for n, b in qm.model.named_buffers() if "quantizer" in n}
    weights = {n: p.detach().clone() for n, p in qm.model.named_parameters()}
    flags = {n: p.requires_grad for n, p in qm.model.named_parameters()}
    cfg = ReconConfig(iters=20, batch_size=4, learn=("weights",), lr_weights=1e-3, loss_reduction="sum_dim1",
                      progress=False)
    stats = reconstruct(qm.model, qm.units, images, cfg)
    blocks = [u for u in stats["recon_per_unit"] if u["unit"].startswith("blocks")]
    assert all(u["loss_end"] < u["loss_start"] for u in blocks), blocks
    changed = {n for n, p in qm.model.named_parameters() if not torch.equal(p, weights[n])}
    assert changed and all(n.endswith(("weight", "bias")) for n in changed)
    assert not any("norm" in n for n in changed)  # LayerNorm affine stays (as released)
    assert all(torch.equal(b, scales[n]) for n, b in qm.model.named_buffers() if n in scales)
    assert {n: p.requires_grad for n, p in qm.model.named_parameters()} == flags  # restored after training


def test_teacher_supplies_the_fp_targets_after_the_weights_moved():
    images = _images()
    meth = build_method({"name": "repq"}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(), meth.plan())
    meth.quantize(qm, images)
    teacher = copy.deepcopy(qm.model)
    with torch.no_grad():
        for p in qm.model.blocks[0].mlp.fc2.parameters():
            p.add_(0.5)  # the student's FP function changed; the teacher's did not
    cfg = ReconConfig(iters=0, batch_size=4, learn=("weights",), progress=False)
    with_teacher = reconstruct(qm.model, qm.units, images, cfg,
                               teacher=FPTeacher(teacher, FAMILIES[qm.family].units(teacher)))
    without = reconstruct(qm.model, qm.units, images, cfg)
    # unit 0 (patch embedding) is untouched: same target either way; block 0's target differs
    assert with_teacher["recon_per_unit"][0]["loss_start"] == pytest.approx(without["recon_per_unit"][0]["loss_start"])
    assert with_teacher["recon_per_unit"][1]["loss_start"] != pytest.approx(without["recon_per_unit"][1]["loss_start"])
    with torch.no_grad(), quant_disabled(teacher):
        x = FAMILIES[qm.family].units(teacher)[0].forward(images)
        target = FAMILIES[qm.family].units(teacher)[1].forward(x)
        out = qm.units[1].forward(qm.units[0].forward(images))
    assert with_teacher["recon_per_unit"][1]["loss_start"] == pytest.approx(float(_loss(out, target, "mse")), rel=1e-5)


def test_refuses_weights_with_adaround_and_unknown_reductions():
    with pytest.raises(ValueError, match="weights or weight_rounding"):
        ReconConfig(learn=("weights", "weight_rounding"))
    with pytest.raises(ValueError, match="loss_reduction"):
        ReconConfig(loss_reduction="sum")


def test_ias_plan_is_the_released_quantizer_set():
    plan = _ias().plan()
    assert plan.weight.search.percentiles == (0.97, 0.98, 0.99, 0.995, 0.9995, 0.9997, 0.9999, 0.99995, 0.99999)
    assert plan.activations["post_softmax"].kind == "sulq"
    assert plan.activations.get("patch_in") is None  # the image stays FP
    assert _ias(sulq=False).plan().activations["post_softmax"].kind == "log_sqrt2"


@pytest.mark.parametrize("make", [make_tiny_vit, pytest.param(make_tiny_swin, marks=pytest.mark.slow)])
def test_ias_runs_its_three_stages_against_the_original_fp_model(make):
    model, images = make(), _images()
    with torch.no_grad():
        fp = model(images)
    meth = _ias()
    qm = make_quantizable(model, meth.plan())
    stats = meth.quantize(qm, images)
    one, three = stats["stage_one_recon_per_unit"], stats["stage_three_recon_per_unit"]
    assert [u["unit"] for u in one] == [u["unit"] for u in three] == [u.name for u in qm.units]
    assert one[0]["loss_start"] == 0.0  # FP image input and FP weights: the patch embedding is exact in stage one
    assert all(u["loss_end"] <= u["loss_start"] + 1e-9 for u in one)
    assert stats["reparameterized_pairs"] > 0 and stats["weight_quantizers_fitted"] > 0
    assert qm.fp_teacher is None
    qs = quantizers(qm.model)
    assert any(isinstance(q, SULQQuantizer) for q in qs.values())
    assert all(q.calibrated for q in qs.values() if q.enabled)
    # the fractional mean zero point of the released reparameterization
    zps = [m.input_quantizer.zero_point for m in qm.model.modules() if getattr(m, "input_quantizer", None) is not None
           and m.input_quantizer.role == "post_ln"]
    assert zps and any(float(z) != round(float(z)) for z in zps)
    with torch.no_grad():
        out = qm.model(images)
    assert torch.nn.functional.cosine_similarity(out.flatten(), fp.flatten(), dim=0) > 0.8


def test_ias_stage_switches_skip_the_reconstruction():
    images = _images()
    meth = _ias(stage_one=False, stage_three=False)
    qm = make_quantizable(make_tiny_vit(), meth.plan())
    stats = meth.quantize(qm, images)
    assert not any(k.startswith(("stage_one", "stage_three")) for k in stats)
    assert stats["reparameterized_pairs"] > 0


def test_calibrate_step_fits_on_the_first_images_only():
    images = _images(8)
    meth = _ias(act_calib_images=2, stage_one=False, stage_three=False)
    a = make_quantizable(make_tiny_vit(), meth.plan())
    meth.quantize(a, images)
    b = make_quantizable(make_tiny_vit(), meth.plan())
    meth.quantize(b, torch.cat([images[:2], _images(6, seed=5)]))
    for (n, qa), qb in zip(quantizers(a.model).items(), quantizers(b.model).values()):
        for (bn, x), y in zip(qa.named_buffers(), qb.buffers()):
            assert torch.equal(x, y), (n, bn)
