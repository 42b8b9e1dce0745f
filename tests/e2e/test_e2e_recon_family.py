"""The reconstruction family on the shared real data, at the budget it was compared with its
released code (issue 17): DeiT-Tiny, 32 calibration images of seed 0, 100 steps of batch 8 per unit
(and per stage), all 1300 val images. `pytest -m slow`: each job is 30-60 minutes on one CPU core.

Each band holds the released code's draws and ptqbench's own (docs/anchors/*/README.md,
docs/results.md), widened by the spread seen for one job across CPUs (about 1.3 top-1 for RepQ-ViT
W4A4, tests/e2e/test_e2e_imagenet.py). Each lower bound also excludes the same pipeline with its
reconstruction doing nothing: the calibrated model before reconstruction scores 67.85 (QDrop /
BRECQ / FIMA-Q calibration, both sides), 69.85 (I&S-ViT's released code with one step per stage),
and 26.46 / 26.15 (APHQ-ViT after its MLP stage and calibration, released / ptqbench).
"""

import pytest
from tests.conftest import shared_data_job as _job

pytestmark = [pytest.mark.data, pytest.mark.slow, pytest.mark.xdist_group("shared_data")]

REDUCED_BUDGET = ("bits=w4a4", "calib.seed=0", "method.iters=100", "method.batch_size=8", "method.progress=false")


def test_qdrop_w4a4_within_the_released_range(e2e_results, shared_data):
    """Released 70.25 +- 0.77 over 4 random streams (69.23-70.85); ptqbench 70.95 +- 0.22 over 3."""
    rec = _job(e2e_results, shared_data, "method=qdrop", *REDUCED_BUDGET)
    assert 69.0 <= rec["metrics"]["top1"] <= 72.5, rec["metrics"]
    st = rec["method_stats"]
    assert st["recon_units"] == 14 and st["recon_loss_end"] < st["recon_loss_start"], st


def test_brecq_w4a4_within_the_released_range(e2e_results, shared_data):
    """Released 71.31 +- 0.20 over 3 streams; ptqbench 71.38 +- 0.62 (70.77, 71.38, 72.00)."""
    rec = _job(e2e_results, shared_data, "method=brecq", *REDUCED_BUDGET)
    assert 69.5 <= rec["metrics"]["top1"] <= 73.0, rec["metrics"]
    assert rec["method_stats"]["recon_units"] == 14


def test_fimaq_w4a4_within_the_released_range(e2e_results, shared_data):
    """Released 71.67 +- 0.53 over 4 streams (70.92-72.08); ptqbench 72.41 +- 0.38 over 3, and 73.31
    for the first draw."""
    rec = _job(e2e_results, shared_data, "method=fimaq", *REDUCED_BUDGET)
    assert 70.3 <= rec["metrics"]["top1"] <= 74.5, rec["metrics"]
    assert rec["method_stats"]["recon_units"] == 14


def test_ias_w4a4_within_the_released_range(e2e_results, shared_data):
    """Released 74.385 at calibration seed 0 (74.26 +- 0.16 over seeds 0-2); ptqbench 74.69 (74.67 +-
    0.04). The three stages all ran: stage one (activations) and stage three (weights) each train
    every unit."""
    rec = _job(e2e_results, shared_data, "method=ias", *REDUCED_BUDGET)
    assert 73.0 <= rec["metrics"]["top1"] <= 76.0, rec["metrics"]
    st = rec["method_stats"]
    assert st["stage_one_recon_units"] == 14 and st["stage_three_recon_units"] == 14, st


def test_aphq_w4a4_within_the_released_range(e2e_results, shared_data):
    """Released 47.13 +- 1.00 over 4 streams (46.23-48.00); ptqbench 46.49 +- 0.44 over 3 and 47.62
    for the first draw. At this budget the GELU -> ReLU MLP stage costs the FP model 16 points, so
    APHQ-ViT lands far below QDrop; the band is the release's, not the paper's."""
    rec = _job(e2e_results, shared_data, "method=aphq", *REDUCED_BUDGET)
    assert 44.5 <= rec["metrics"]["top1"] <= 49.5, rec["metrics"]
    st = rec["method_stats"]
    assert st["mlp_recon_blocks"] == 12 and st["recon_units"] == 14, st
