"""The det_eval bench part: each part's call is timed into its own slot and the detector is left
as it was; the part's table is rendered from a cell's row. (The cell itself builds Mask R-CNN
Swin-T and runs full-scale forwards: minutes on CPU, so it runs on request only,
`python -m ptqbench.bench --parts det_eval`.)"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

from torch import nn

from ptqbench.bench.__main__ import table
from ptqbench.bench.det_eval import PARTS, _timed_forward, det_eval_part, part_timers


class _Sleeper(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: Any) -> Any:
        time.sleep(self.seconds)
        return x


class _RoI(nn.Module):
    def predict_bbox(self, x: Any) -> Any:
        time.sleep(0.03)
        return x

    def predict_mask(self, x: Any) -> Any:
        time.sleep(0.04)
        return x


class _Rpn(nn.Module):
    def predict(self, x: Any) -> Any:
        time.sleep(0.02)
        return x


class _FakeDetector(nn.Module):
    """The attributes and call order of an mmdet two-stage detector's test_step."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.neck = _Sleeper(0.05), _Sleeper(0.01)
        self.rpn_head, self.roi_head = _Rpn(), _RoI()

    def test_step(self, batch: Any) -> Any:
        time.sleep(0.02)  # preprocessing: "other"
        x = self.neck(self.backbone(batch))
        return self.roi_head.predict_mask(self.roi_head.predict_bbox(self.rpn_head.predict(x)))


def test_each_part_is_timed_and_the_detector_restored():
    det = _FakeDetector()
    t = _timed_forward(det, 1)
    assert set(t) == {p for p, _, _ in PARTS} | {"other", "total"}
    for part, low in (("backbone", 0.05), ("neck", 0.01), ("rpn", 0.02), ("roi_bbox", 0.03), ("roi_mask", 0.04),
                      ("other", 0.02)):
        assert low <= t[part] < low + 0.5, (part, t)  # slack for a loaded machine
    assert abs(sum(v for k, v in t.items() if k != "total") - t["total"]) < 1e-9
    # the timers are instance attributes removed on exit: the class methods are back
    assert "forward" not in det.backbone.__dict__ and "predict_mask" not in det.roi_head.__dict__
    sink: dict[str, float] = defaultdict(float)
    with part_timers(nn.Module(), sink):  # a model without these parts: nothing patched, nothing timed
        pass
    assert not sink


def test_det_eval_part_prints_the_per_part_table_and_failures():
    rows = {"repq": {"model": "mask_rcnn_swin_t", "method": "repq", "bits": "w4a4", "weights": "random",
                     "quantize_s": 12.5, "ratio": 1.1,
                     "parts": [{"part": "backbone", "fp_ms": 100.0, "q_ms": 120.0, "ratio": 1.2},
                               {"part": "total", "fp_ms": 200.0, "q_ms": 220.0, "ratio": 1.1}],
                     "ops": [{"op": "aten::div", "fp_ms": 0.1, "q_ms": 9.0}]},
            "erq": {"model": "mask_rcnn_swin_t", "method": "erq", "error": "ConfigError: no units"}}
    calls, out = [], []

    def run_cell(kind: str, threads: Any, **kw: Any) -> dict[str, Any]:
        calls.append((kind, kw))
        return rows[kw["method"]]

    args = argparse.Namespace(det_models="mask_rcnn_swin_t", det_methods="repq,erq", det_bits="w4a4", det_images=2,
                              det_repeats=3, det_calib=1, det_calib_scale=[256, 160], det_scale=[1333, 800],
                              det_top_ops=5, recon_iters=30, threads=1)
    det_eval_part(args, out.append, run_cell, table, lambda m, i: {})
    text = "\n".join(out)
    assert [c[0] for c in calls] == ["det_eval", "det_eval"]
    assert calls[0][1]["scale"] == [1333, 800] and calls[0][1]["images"] == 2 and calls[0][1]["top_ops"] == 5
    assert "2 coco-tiny val2017 images at 1333x800, best of 3" in text
    assert "| backbone | 100.0 | 120.0 | 1.2 |" in text and "| aten::div | 0.1 | 9.0 |" in text
    assert "mask_rcnn_swin_t erq: failed: ConfigError: no units" in text
