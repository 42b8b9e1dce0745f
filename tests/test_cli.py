"""The real CLI, as a user runs it: help, a 2x2 sweep, resume, a failing job, clear errors.

Jobs here use random DeiT-Tiny weights and a synthetic 8-image ImageNet tree, so they check the
pipeline, not accuracy (the shared-data end-to-end test does that).
"""

from pathlib import Path

import torch
from conftest import run_cli

from ptqbench.records import load_records


def _tiny_job_args(tiny_imagenet: Path, results: Path) -> list[str]:
    return [f"data.root={tiny_imagenet}", f"results_dir={results}", "model.pretrained=false",
            "calib.size=4", "data.batch_size=4", "data.workers=0", "logger=none"]


def test_help_lists_groups_and_choices():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    for line in ("method: aiq, dopq, erq, fp, gptq, minmax, percentile, ptq4vit, repq, tsptq", "quant: default", "bits: w3a3, w3a4, w4a4, w4a8, w5a5, w6a6, w8a8",
                 "model: cascade_mask_rcnn_swin_s, cascade_mask_rcnn_swin_t, deit_base, deit_small, deit_tiny, mask_rcnn_swin_s",
                 "logger: none, wandb", "calib: default", "data: coco, imagenet", "task: classification, detection"):
        assert line in out.stdout, line


def test_sweep_records_every_job_and_relaunch_runs_nothing(tiny_imagenet, tmp_path):
    args = ["-m", "method=minmax,repq", "bits=w4a4,w8a8", *_tiny_job_args(tiny_imagenet, tmp_path)]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    recs = load_records(tmp_path)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert {(r["config"]["method"]["name"], r["bits"]["name"]) for r in recs} == {
        ("minmax", "w4a4"), ("minmax", "w8a8"), ("repq", "w4a4"), ("repq", "w8a8")}
    r = recs[0]
    for key in ("config", "metrics", "fp", "timings", "memory", "versions", "calibration", "quantizers", "run_key"):
        assert key in r, key
    assert len(r["calibration"]["ids"]) == 4 and r["fp"]["images"] == 8
    assert r["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()  # results depend on it (docs/results.md)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")}

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")} == mtimes
    assert "4 jobs, 0 ran, 4 skipped" in second.stderr + second.stdout
    assert len(list((tmp_path / "cache" / "fp_eval").glob("*.pt"))) == 1  # one FP baseline for the whole sweep
    assert len(list((tmp_path / "cache" / "calib").glob("*.pt"))) == 1  # one calibration batch
    cached = [(r["fp"]["cached"], r["calibration"]["cached"]) for r in recs]
    assert sorted(cached) == [(False, False)] + [(True, True)] * 3, cached  # computed once, then hits


def test_erq_ablation_is_a_sweep(tiny_imagenet, tmp_path):
    out = run_cli("-m", "method=erq", "method.rounding_refinement=true,false", "bits=w3a4",
                  *_tiny_job_args(tiny_imagenet, tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    recs = {r["config"]["method"]["rounding_refinement"]: r for r in load_records(tmp_path)}
    assert set(recs) == {True, False} and all(r["status"] == "ok" for r in recs.values())
    assert recs[True]["method_stats"]["refine_flips"] > 0 == recs[False]["method_stats"]["refine_flips"]
    assert recs[True]["run_key"] != recs[False]["run_key"]


def test_an_option_shared_by_several_swept_methods_is_set_with_double_plus(tiny_imagenet, tmp_path):
    """Hydra composes a multirun's base config with the default method before it expands the
    sweep, so `method.KEY=` fails there when the default method lacks KEY; `++method.KEY=` works
    (docs/sweeps.md). A swept method without that option fails its own job with a ConfigError."""
    out = run_cli("-m", "method=minmax,percentile", "++method.act_percentiles=[0.999]", "bits=w8a8",
                  *_tiny_job_args(tiny_imagenet, tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    recs = load_records(tmp_path)
    assert sorted(r["config"]["method"]["name"] for r in recs) == ["minmax", "percentile"]
    assert all(r["status"] == "ok" and r["config"]["method"]["act_percentiles"] == [0.999] for r in recs)


def test_failing_job_is_recorded_and_sweep_continues(tiny_imagenet, tmp_path):
    out = run_cli("-m", "method=minmax", "bits.w=99,8", "bits.a=8", *_tiny_job_args(tiny_imagenet, tmp_path))
    assert out.returncode == 1  # the sweep reports its failure after running every job
    recs = {r["config"]["bits"]["w"]: r for r in load_records(tmp_path)}
    assert recs[8]["status"] == "ok"
    assert recs[99]["status"] == "failed"
    assert "bits.w=99" in recs[99]["error"] and "Traceback" in recs[99]["traceback"]
    assert "1 failed" in out.stderr + out.stdout
    # relaunch: the finished job is skipped, the failed one is tried again
    again = run_cli("-m", "method=minmax", "bits.w=99,8", "bits.a=8", *_tiny_job_args(tiny_imagenet, tmp_path))
    assert "2 jobs, 0 ran, 1 skipped (already finished), 1 failed" in again.stderr + again.stdout


def test_missing_data_fails_with_path_and_fix(tmp_path):
    out = run_cli(f"results_dir={tmp_path}", "logger=none", env={"PTQBENCH_DATA": str(tmp_path / "nowhere")})
    assert out.returncode == 2
    err = out.stderr + out.stdout
    assert f"tried {tmp_path}/nowhere/imagenet-mini" in err and "data.root=" in err and "PTQBENCH_DATA" in err
    rec = load_records(tmp_path)[0]
    assert rec["status"] == "failed" and "DataNotFoundError" in rec["error"]


def test_unknown_method_lists_the_choices(tmp_path):
    out = run_cli("method=nope", f"results_dir={tmp_path}")
    assert out.returncode != 0
    assert "nope" in out.stderr and "repq" in out.stderr


def test_wandb_offline_run_files(tiny_imagenet, tmp_path):
    out = run_cli(*_tiny_job_args(tiny_imagenet, tmp_path)[:-1], "logger=wandb", "bits=w8a8", "method=minmax",
                  env={"WANDB_MODE": None})
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), list(runs[0].iterdir())
    rec = load_records(tmp_path)[0]
    assert rec["config"]["logger"]["mode"] == "offline" and rec["status"] == "ok"
