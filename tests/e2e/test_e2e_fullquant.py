"""End to end on the shared real data (DeiT-Tiny, 32 calibration images, all 1300 val images):
the fully quantized mode, TSPTQ-ViT and PTQ4ViT. Measured numbers and commands: docs/results.md.

All with `pytest -m slow`: 16-bit everything in the fully quantized mode must reproduce FP
(measured: 81.54 = FP); the W8A8 fully quantized comparison and the W6A6 / W4A4 bounds, set from the
measured runs (each bound leaves about a point and a half of room; a broken two-scale quantizer
or search lands far outside). The default run checks the same code paths on a tiny ViT and Swin
(tests/quant/test_full_quant.py: 16-bit full quantization reproduces FP, every method runs fully
quantized, the record names the quantized tensors).
"""

import pytest

from ptqbench.methods.ptq4vit import READING_KEYS
from tests.conftest import shared_data_job as _job

# PTQ4ViT's bounds below were measured with ptqbench's earlier reading (its defaults then)
READING = [f"method.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in READING_KEYS.items()]
# TSPTQ-ViT's bounds below were measured with its MSE calibration (its default then), the 8-bit patch input
MSE = ["method.search_rounds=0", "method.patch_input_bits=8"]

# one xdist worker runs them all: they share the session results folder (one FP baseline)
pytestmark = [pytest.mark.data, pytest.mark.xdist_group("shared_data")]


@pytest.mark.slow
def test_full_16_bit_reproduces_fp(e2e_results, shared_data):
    rec = _job(e2e_results, shared_data, "method=minmax", "bits.w=16", "bits.a=16", "quant.full=true", "quant.bits=16")
    assert abs(rec["metrics"]["drop_top1"]) <= 0.2, rec["metrics"]
    p = rec["protocol"]
    assert p["full"] and p["full_bits"] == 16
    assert {"ln_in", "softmax_in", "gelu_in", "residual"} <= set(p["quantized_roles"])


@pytest.mark.slow
def test_w8a8_full_tsptq_near_lossless_and_beats_minmax(e2e_results, shared_data):
    """`pytest -m slow`. Measured: TSPTQ-ViT 81.00 at 548c5d8 (81.62 before d356d97; seeds 1-2: 81.38,
    80.92), min-max 80.85 (FP 81.54)."""
    ts = _job(e2e_results, shared_data, "method=tsptq", "bits=w8a8", "quant.full=true", *MSE)["metrics"]
    mm = _job(e2e_results, shared_data, "method=minmax", "bits=w8a8", "quant.full=true")["metrics"]
    assert ts["drop_top1"] <= 0.8, ts
    assert ts["top1"] > mm["top1"], (ts, mm)
    assert 79.3 <= mm["top1"] <= 81.6, mm


@pytest.mark.slow
def test_w8a8_full_tsptq_defaults_near_lossless(e2e_results, shared_data):
    """`pytest -m slow` (about 50 min on one CPU core): the default, PTQ4ViT's released search.
    Measured: 81.69 (FP 81.54; docs/methods/tsptq.md)."""
    ts = _job(e2e_results, shared_data, "method=tsptq", "bits=w8a8", "quant.full=true")["metrics"]
    assert ts["drop_top1"] <= 0.5, ts


@pytest.mark.slow
def test_w8a8_full_ptq4vit(e2e_results, shared_data):
    """`pytest -m slow` (one search round, about 5 min on 2 CPU cores). Measured 2026-12-05: 80.23,
    both at 0afbb64 and at 6781934, the commit that set this test with "81.31" (78.31 with the
    quantized-input search, method.search_inputs=quantized, from the same note), which neither
    reproduces on the shared data."""
    rec = _job(e2e_results, shared_data, "method=ptq4vit", "bits=w8a8", "quant.full=true", "method.search_rounds=1", *READING)
    assert 79.2 <= rec["metrics"]["top1"] <= 81.3, rec["metrics"]
    assert rec["method_stats"]["searched_layers"] == 74


@pytest.mark.slow
@pytest.mark.parametrize("bits,lo,hi", [("w6a6", 76.7, 80.0), ("w4a4", 62.3, 65.3)])
def test_tsptq_standard_protocol(e2e_results, shared_data, bits, lo, hi):
    """`pytest -m slow`. Measured: W6A6 78.92 at 548c5d8 (78.23 before d356d97), 78.08 at 2567a98;
    W4A4 63.77 at 2567a98 (60.23 before d356d97) (RepQ-ViT 80.08 / 68.77, min-max 77.15 / 1.23)."""
    m = _job(e2e_results, shared_data, "method=tsptq", f"bits={bits}", *MSE)["metrics"]
    assert lo <= m["top1"] <= hi, m


@pytest.mark.slow
def test_w4a4_ptq4vit_does_not_collapse(e2e_results, shared_data):
    """`pytest -m slow`. Measured: 59.38 with the FP-input search (one round); the quantized-input
    search collapsed to 0.46 (docs/results.md)."""
    rec = _job(e2e_results, shared_data, "method=ptq4vit", "bits=w4a4", "method.search_rounds=1", *READING)
    assert 57.4 <= rec["metrics"]["top1"] <= 61.4, rec["metrics"]


@pytest.mark.slow
def test_w4a4_ptq4vit_defaults_land_on_the_released_code(e2e_results, shared_data):
    """`pytest -m slow` (about 40 min on one CPU core). The defaults are the released recipe: the
    release gives 45.769 on these 32 images (docs/anchors/ptq4vit/README.md), ptqbench with the
    recipe as explicit keys 45.15."""
    rec = _job(e2e_results, shared_data, "method=ptq4vit", "bits=w4a4")
    assert 44.77 <= rec["metrics"]["top1"] <= 46.77, rec["metrics"]
