"""End to end on the shared real data: DeiT-Tiny weights, 32 calibration images from
imagenet-mini/train, evaluation on all 1300 imagenet-mini/val images.

The default run keeps the FP band and the RepQ-ViT W4A4 band (one quantized job, about two minutes
on 2 cores); the other methods' bands run with `pytest -m slow`. Their code paths stay in the
default run on tiny models (tests/algorithms/test_error_reduction.py, tests/quant/test_full_quant.py
::test_every_method_runs_fully_quantized, tests/test_cli.py::test_erq_ablation_runs_both_settings_under_two_keys).

Bounds were set from measured runs (see docs/results.md): FP 81.54; RepQ-ViT W6A6 80.08 and
W4A4 68.77 with calib.seed=0. The released RepQ-ViT code scored 81.62 / 80.38 / 69.15 on its own
calibration draw, and 69.49 on average over ptqbench's draws 0-2 (docs/anchors/repq/).
A broken reparameterization, log-sqrt2 quantizer or range search lands far outside them.
ERQ measured 74.31 (W4A4) / 65.92 (W3A4) against the released ERQ code's 74.23 / 66.23; RepQ-ViT
W3A4 38.54 and GPTQ 52.38 / 71.62 (docs/results.md). With RepQ-ViT's weight clipping grid instead
of ERQ's, ERQ W3A4 measured 59.85, far below its lower bound.

The same code, data and seed land about a point apart on different CPUs: float summation order
in MKL/ATen kernels differs by instruction set, and a low-bit range search or rounding flips on
such differences. Measured (docs/results.md, "Across machines"): RepQ-ViT W4A4 68.77 / 70.08 /
69.69, ERQ W4A4 73.23 / 73.31 / 74.54, ERQ W3A4 65.92 / 65.08 / 64.54 (first machine; an AVX-512
machine; the same machine restricted to AVX2). The bands cover that spread and still exclude a
broken method by a wide margin.
"""

import pytest
from tests.conftest import shared_data_job as _job

# one xdist worker runs them all: they share the session results folder (one FP baseline)
pytestmark = [pytest.mark.data, pytest.mark.xdist_group("shared_data")]


def test_fp_top1_of_the_shared_checkpoint(e2e_results, shared_data):
    rec = _job(e2e_results, shared_data, "method=fp")
    assert rec["model"]["source"] == "local"
    assert 81.0 <= rec["metrics"]["top1"] <= 82.2, rec["metrics"]


@pytest.mark.slow
def test_repq_w6a6_is_near_lossless(e2e_results, shared_data):
    m = _job(e2e_results, shared_data, "method=repq", "bits=w6a6")["metrics"]
    assert m["top1"] >= 79.4 and m["drop_top1"] <= 2.2, m


def test_repq_w4a4_within_a_point_and_a_half_of_the_released_code(e2e_results, shared_data):
    rec = _job(e2e_results, shared_data, "method=repq", "bits=w4a4")
    m = rec["metrics"]
    assert 67.3 <= m["top1"] <= 72.0, m  # released 69.23 on this draw; a quantizer that does nothing would score ~81
    assert rec["method_stats"]["reparameterized_pairs"] == 24
    assert rec["quantized_modules"]["quantizers.post_softmax"] == 12


@pytest.mark.slow
def test_erq_w4a4_matches_the_released_code_and_beats_repq(e2e_results, shared_data):
    rec = _job(e2e_results, shared_data, "method=erq", "bits=w4a4")
    m = rec["metrics"]
    assert 72.5 <= m["top1"] <= 75.5, m  # released ERQ code: 74.23
    assert m["top1"] > _job(e2e_results, shared_data, "method=repq", "bits=w4a4")["metrics"]["top1"] + 2.5
    st = rec["method_stats"]
    assert st["aqer_layers"] == 49 and st["wqer_layers"] == 50 and st["dual_uniform_layers"] == 24
    assert rec["protocol"]["patch_input_bits"] is None


@pytest.mark.slow
def test_erq_w3a4_matches_the_released_code_and_beats_repq(e2e_results, shared_data):
    m = _job(e2e_results, shared_data, "method=erq", "bits=w3a4")["metrics"]
    assert 64.0 <= m["top1"] <= 67.5, m  # released ERQ code: 66.23
    repq = _job(e2e_results, shared_data, "method=repq", "bits=w3a4")["metrics"]
    assert m["top1"] > repq["top1"] + 10, (m, repq)


@pytest.mark.slow
def test_gptq_w3a4_beats_repq_and_trails_erq(e2e_results, shared_data):
    rec = _job(e2e_results, shared_data, "method=gptq", "bits=w3a4")
    m = rec["metrics"]
    assert rec["method_stats"]["gptq_layers"] == 50
    assert _job(e2e_results, shared_data, "method=repq", "bits=w3a4")["metrics"]["top1"] < m["top1"], m
    assert m["top1"] < _job(e2e_results, shared_data, "method=erq", "bits=w3a4")["metrics"]["top1"], m


@pytest.mark.slow
def test_gptq_w4a4_between_repq_and_erq(e2e_results, shared_data):
    """`pytest -m slow`."""
    m = _job(e2e_results, shared_data, "method=gptq", "bits=w4a4")["metrics"]
    assert _job(e2e_results, shared_data, "method=repq", "bits=w4a4")["metrics"]["top1"] < m["top1"], m
    assert m["top1"] < _job(e2e_results, shared_data, "method=erq", "bits=w4a4")["metrics"]["top1"], m


# The released RepQ-ViT code on ptqbench's calibration draws 0, 1, 2 and the same 1300 images
# (docs/anchors/repq/, `run.sh 4 4 SEED`, 2026-12-04). ptqbench with the release's arithmetic keys
# gave these same numbers on every draw on that machine; its defaults 69.15 / 69.69 / 70.62.
REPQ_RELEASED_W4A4 = {0: 69.23, 1: 69.92, 2: 69.31}


@pytest.mark.slow
def test_repq_w4a4_mean_over_calibration_draws_matches_the_released_code(e2e_results, shared_data):
    """`pytest -m slow`: the mean over three calibration draws within 1 point of the released code's
    mean over the same draws (69.49)."""
    top1 = [_job(e2e_results, shared_data, "method=repq", "bits=w4a4", f"calib.seed={s}")["metrics"]["top1"]
            for s in REPQ_RELEASED_W4A4]
    released = sum(REPQ_RELEASED_W4A4.values()) / len(REPQ_RELEASED_W4A4)
    assert abs(sum(top1) / len(top1) - released) <= 1.0, (top1, released)


# DopQ-ViT / AIQViT at the CPU reconstruction setting of +experiment=recon_deit_tiny (the papers'
# is 1024 images x 1000 iterations; docs/results.md). Measured (seed 0, 32 calibration images) on
# two machines: dopq W4A4 72.77 / 71.15, aiq W4A4 72.85 / 73.46 (74.00 / 74.62 with dfq=false),
# repq W4A4 68.77 / 70.08. DopQ-ViT's margin over RepQ-ViT at 30 steps per unit is within the
# cross-machine spread (+4.0 / +1.1), so its test asks only that it stays ahead.
# AIQViT's defaults before issue 18, which the measured bands below were taken with
AIQ_BEFORE_ISSUE_18 = ("method.dfq_below=zero", "method.learn_act_scale=true", "method.ranks=[0,4,8,16,32]")
RECON_CPU = ("method.iters=30", "method.batch_size=8", "method.lr_rounding=1e-2", "method.lr_act_scale=4e-4",
             "method.progress=false")


@pytest.mark.slow
def test_dopq_w4a4_beats_repq(e2e_results, shared_data):
    """`pytest -m slow` (about 10 min on the 2-core CPU). On the I&S-ViT pipeline (issue 18): 74.15
    at 2567a98, its two reconstruction stages (activations with FP weights; weights) recorded apart."""
    rec = _job(e2e_results, shared_data, "method=dopq", "bits=w4a4", *RECON_CPU)
    m = rec["metrics"]
    assert 72.1 <= m["top1"] <= 76.1, m
    assert m["top1"] > _job(e2e_results, shared_data, "method=repq", "bits=w4a4")["metrics"]["top1"] + 0.5, m
    st = rec["method_stats"]
    for stage in ("stage_one", "stage_three"):
        assert st[f"{stage}_recon_units"] == 14 and st[f"{stage}_recon_loss_end"] < st[f"{stage}_recon_loss_start"], stage


@pytest.mark.slow
def test_aiq_w4a4_beats_repq(e2e_results, shared_data):
    """`pytest -m slow`. AIQViT with the defaults before issue 18 (DFQ `zero` reading, dfq_init=output,
    lr_dfq=1e-4, LSQ activation steps trained, ranks up to 32) measured 72.85 / 73.46 against
    RepQ-ViT's 68.77 / 70.08 at this CPU setting (docs/results.md; the first DFQ reading was
    58.46 / 55.23). The paper-reading defaults (docs/methods/aiq.md) have no measured band yet."""
    rec = _job(e2e_results, shared_data, "method=aiq", "bits=w4a4", *AIQ_BEFORE_ISSUE_18, *RECON_CPU)
    assert 71.3 <= rec["metrics"]["top1"] <= 74.4, rec["metrics"]
    assert rec["metrics"]["top1"] > _job(e2e_results, shared_data, "method=repq", "bits=w4a4")["metrics"]["top1"] + 2, rec["metrics"]
    assert rec["method_stats"]["lowrank_extra_params"] > 0


@pytest.mark.slow
def test_aiq_lowrank_with_log_sqrt2_w4a4_beats_repq(e2e_results, shared_data):
    """`pytest -m slow`. AIQViT's low-rank reconstruction on log-sqrt2 post-softmax (dfq=false)
    measured 74.00 / 74.62 against RepQ-ViT's 68.77 / 70.08 (docs/results.md)."""
    m = _job(e2e_results, shared_data, "method=aiq", "bits=w4a4", "method.dfq=false", *AIQ_BEFORE_ISSUE_18,
             *RECON_CPU)["metrics"]
    assert 72.5 <= m["top1"] <= 75.5, m
    assert m["top1"] > _job(e2e_results, shared_data, "method=repq", "bits=w4a4")["metrics"]["top1"] + 3, m
