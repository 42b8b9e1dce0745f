"""The warm-up forward before each evaluation (`Task.warm_up`, `ptqbench.pipeline.evaluated`)
moves where the first forward's lasting allocations sit in the heap, and nothing else: a job's
results are the same with it and without it."""

from __future__ import annotations

import torch


def test_the_warm_up_runs_before_each_evaluation_and_changes_no_result(tiny_imagenet, tmp_path, monkeypatch):
    from ptqbench.run import run_job
    from ptqbench.tasks.classification import Classification
    from tests.conftest import compose_config

    base = [f"data.root={tiny_imagenet}", "model.pretrained=false", "model.arch=test_vit", "model.tag=r160_in1k",
            "data.batch_size=4", "data.workers=0", "logger=none", "method=minmax", "bits=w4a4", "calib.size=4"]
    shapes: list[tuple[int, ...]] = []
    warm_up = Classification.warm_up

    def recorded(self, module, data):
        shapes.append(tuple(data.context))
        before = {k: v.clone() for k, v in module.state_dict().items()}
        warm_up(self, module, data)
        assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())  # no state touched

    monkeypatch.setattr(Classification, "warm_up", recorded)
    warm = run_job(compose_config(*base, f"results_dir={tmp_path / 'warm'}"))
    assert shapes == [(3, 160, 160), (3, 160, 160)]  # the FP and the quantized evaluation, at the model's input size
    monkeypatch.setattr(Classification, "warm_up", lambda self, module, data: None)
    cold = run_job(compose_config(*base, f"results_dir={tmp_path / 'cold'}"))
    assert warm["status"] == cold["status"] == "ok", (warm.get("error"), cold.get("error"))
    assert warm["metrics"] == cold["metrics"] and warm["per_image"] == cold["per_image"]
