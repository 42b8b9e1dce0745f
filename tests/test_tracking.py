"""wandb offline: stable groups, deterministic run ids (a relaunch updates, not duplicates), job
types, tags, what the record knows (summary values and numeric Tables), the run's id and folder
in the record; read back from the offline run files (ptqbench.wandb_offline)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import wandb
from tests.conftest import run_cli

from ptqbench.errors import ConfigError
from ptqbench.records import load_records
from ptqbench.tracking import (
    group_for, log_sweep_report, make_tracker, numeric_table, summary_run_id, sweep_group,
)
from ptqbench.wandb_offline import read_offline_run

RECORD = {
    "run_key": "abc123", "status": "ok",
    "metrics": {"top1": 71.5, "top5": 90.25, "fp_top1": 72.0, "drop_top1": 0.5},
    "timings": {"calibration_s": 1.5, "eval_s": 2.0},
    "memory": {"calibration": {"seconds": 1.5, "peak_rss_mb": 812.5}, "evaluation": {"peak_rss_mb": 640.0}},
    "quantized_modules": {"QuantLinear": 4, "quantizers.post_ln": 2},
    "method_stats": {"calibrated_quantizers": 12, "recon": {"loss_end": 0.125, "units": [1, 2]}, "bad": math.nan},
    "calibration": {"size": 32},
    "quantizers": {"blocks.0.attn.qkv.input_quantizer": {"kind": "uniform", "bits": 4, "role": "post_ln", "enabled": True}},
    "layer_sqnr": {"images": 4, "seconds": 0.1, "output_sqnr_db": 12.5, "mean_sqnr_db": 15.0, "min_sqnr_db": 9.0,
                   "layers": [{"index": 0, "layer": "blocks.0.attn.qkv", "kind": "QuantLinear", "role": "post_ln",
                               "quantizers": ["a"], "sqnr_db": 15.25, "local_sqnr_db": None}]},
}


def _config(tmp_path, **logger):
    return {"model": {"name": "deit_tiny"}, "method": {"name": "repq"}, "bits": {"w": 4, "a": 4},
            "task": {"name": "classification"}, "calib": {"size": 32, "seed": 0}, "data": {}, "seed": 0,
            "report": {"name": None},
            "logger": {"name": "wandb", "mode": "offline", "project": "p", "dir": str(tmp_path), "tags": ["mine"],
                       "sqnr_images": 16, **logger}}


def test_job_run_holds_group_type_tags_summary_and_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _config(tmp_path)
    tracker = make_tracker(cfg["logger"], group="sweep-x", name="job1", config=cfg)
    info = tracker.info()
    tracker.log_record(RECORD)
    tracker.finish(False)
    wandb.teardown()  # the wandb service writes the run file in the background: wait for it
    assert info["group"] == "sweep-x" and info["job_type"] == "job" and info["mode"] == "offline"
    run = read_offline_run(info["dir"])
    assert run.id == info["id"] and run.group == "sweep-x" and run.job_type == "job"
    assert run.tags == ["deit_tiny", "repq", "w4a4", "classification", "mine"]
    s = run.summary
    assert s["top1"] == 71.5 and s["run_key"] == "abc123" and s["calibration/size"] == 32
    assert s["memory/calibration/peak_rss_mb"] == 812.5 and s["count/QuantLinear"] == 4
    assert s["method/recon/loss_end"] == 0.125 and "method/bad" not in s  # NaN cannot be charted
    assert s["sqnr/output_sqnr_db"] == 12.5 and s["time/eval_s"] == 2.0
    sq = json.loads(run.table_files("layer_sqnr")[0].read_text())
    row = dict(zip(sq["columns"], sq["data"][0]))
    assert row["sqnr_db"] == 15.25 and row["layer"] == "blocks.0.attn.qkv" and row["local_sqnr_db"] is None
    qm = json.loads(run.table_files("quantizers")[0].read_text())
    assert dict(zip(qm["columns"], qm["data"][0]))["bits"] == 4
    from ptqbench.dashboard import JOB_METRICS, JOB_TABLES

    assert {k for ks in JOB_METRICS.values() for k in ks} <= set(s)  # the dashboard's panels are not empty
    assert all(run.table_files(t) for t in JOB_TABLES)
    # the id is deterministic: the same job in the same group resumes the same run
    again = make_tracker(cfg["logger"], group="sweep-x", name="job1", config=cfg)
    assert again.info()["id"] == info["id"]
    again.finish(False)


def test_summary_run_is_one_id_per_group_and_its_tables_hold_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cells = pd.DataFrame([
        {"w_bits": 4, "a_bits": 4, "method": "repq", "variant": "", "calib_size": 32, "model": "deit_tiny",
         "metric": "top1", "mean": 78.91, "std": 0.12, "n": 3, "shown": "78.91", "mark": "best"},
        {"w_bits": 4, "a_bits": 4, "method": "minmax", "variant": "", "calib_size": 32, "model": "deit_tiny",
         "metric": "top1", "mean": 40.5, "std": math.nan, "n": 1, "shown": "40.50", "mark": ""},
        {"w_bits": 32, "a_bits": 32, "method": "fp", "variant": "", "calib_size": None, "model": "deit_small",
         "metric": "top1", "mean": 79.8, "std": math.nan, "n": 1, "shown": "79.80", "mark": ""}]).astype({"calib_size": "Int64"})
    table = numeric_table(cells)
    assert len(table) == 3 and table.loc[table.method == "fp", "deit_small/top1"].item() == 79.8  # one row per table row
    assert table.loc[table.method == "repq", "deit_tiny/top1"].item() == 78.91
    assert table.loc[table.method == "repq", "deit_tiny/top1/std"].item() == 0.12
    logger = _config(tmp_path)["logger"]
    dirs = [log_sweep_report(logger, "exp1", {"table": table}, {}, {"sweep_dir": f"launch{i}"}) for i in range(2)]
    wandb.teardown()
    runs = [read_offline_run(d) for d in dirs]
    assert dirs[0] != dirs[1]  # offline: one folder per launch ...
    assert {r.id for r in runs} == {summary_run_id("p", "exp1")}  # ... under one id: `wandb sync` makes one run
    assert all(r.job_type == "summary" and r.group == "exp1" and r.name == "summary" for r in runs)
    t = json.loads(next((runs[1].path / "files" / "media" / "table" / "report").glob("table_*.json")).read_text())
    row = dict(zip(t["columns"], t["data"][0]))
    assert row["deit_tiny/top1"] == 78.91 and row["deit_tiny/top1/std"] == 0.12 and row["deit_tiny/top1/n"] == 3


def test_groups_are_stable_and_named():
    a = sweep_group(["method=repq,minmax", "bits=w4a4", "logger.mode=offline", "data.workers=0"])
    assert a == sweep_group(["bits=w4a4", "method=repq,minmax"])  # order and logging options do not matter
    assert a != sweep_group(["bits=w6a6", "method=repq,minmax"]) and a.startswith("sweep-")
    assert sweep_group([], {"method": "repq,erq"}) != sweep_group([], {"method": "repq"})
    assert group_for({"logger": {"group": "mine"}, "report": {"name": "erq_table"}}, a) == "mine"
    assert group_for({"logger": {}, "report": {"name": "erq_table"}}, a) == "erq_table"
    assert group_for({"logger": {}, "report": {}}, a) == a


@pytest.mark.parametrize("logger,match", [({"sqnr_images": -1}, "logger.sqnr_images"), ({"mode": "cloud"}, "logger.mode")])
def test_bad_logger_settings_are_refused_before_work(tmp_path, logger, match):
    cfg = _config(tmp_path, **logger)
    with pytest.raises(ConfigError, match=match):
        make_tracker(cfg["logger"], group="g", name="n", config=cfg)
    assert not (tmp_path / "wandb").exists()


def _sweep_args(tiny_imagenet, results) -> list[str]:
    return ["-m", "method=minmax", "bits=w8a8", f"data.root={tiny_imagenet}", f"results_dir={results}",
            "model.pretrained=false", "model.arch=test_vit", "model.tag=r160_in1k",  # timm's 6-block test ViT
            "calib.size=2", "data.eval_limit=8", "data.batch_size=4", "data.workers=0", "logger=wandb", "logger.sqnr_images=2"]


def test_piped_sweep_log_has_no_carriage_return(tiny_imagenet, tmp_path):
    """The issue's check, as a user runs it: a sweep whose output goes to a pipe (SLURM, `| tee`)."""
    first = run_cli(*_sweep_args(tiny_imagenet, tmp_path), env={"WANDB_MODE": None, "PTQBENCH_PROGRESS": None})
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-3000:]
    assert "\r" not in log
    assert "eval minmax w8a8: 100% (2/2 batch)" in log and "calibrate: 100% (" in log
    assert "table of this sweep" in log and "Notes:" in log  # the table and its notes end the log
    rec = load_records(tmp_path)[0]
    assert rec["layer_sqnr"]["images"] == 2 and len(rec["layer_sqnr"]["layers"]) == 38  # patch embedding, 6 x 6, head
    assert rec["layer_sqnr"]["reference"] == "fp_model"
    job = read_offline_run(rec["wandb"]["dir"])
    assert job.id == rec["wandb"]["id"] and job.group == rec["wandb"]["group"] and job.group.startswith("sweep-")
    summary = read_offline_run(next((tmp_path / "wandb").glob("offline-run-*summary*")))
    assert summary.group == job.group and summary.job_type == "summary"
    from ptqbench.dashboard import SUMMARY_MEDIA, SUMMARY_TABLES

    assert all(f"{k}/_type" in summary.summary for k in SUMMARY_TABLES + SUMMARY_MEDIA), sorted(summary.summary)


@pytest.mark.slow
def test_a_relaunched_sweep_updates_its_summary_run_in_the_same_group(tiny_imagenet, tmp_path):
    args = _sweep_args(tiny_imagenet, tmp_path)
    for _ in range(2):  # the second launch skips the finished job and updates the summary
        out = run_cli(*args, env={"WANDB_MODE": None})
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    job = read_offline_run(load_records(tmp_path)[0]["wandb"]["dir"])
    summaries = [read_offline_run(d) for d in sorted((tmp_path / "wandb").glob("offline-run-*summary*"))]
    assert len(summaries) == 2 and len({s.id for s in summaries}) == 1
    assert {s.group for s in summaries} == {job.group}


def test_dashboard_report_is_built_offline_with_the_group_filters(tmp_path):
    pytest.importorskip("wandb_workspaces", reason="optional: pip install -e '.[dashboard]'")
    from ptqbench.dashboard import build_report, main, panel_spec

    spec = panel_spec(build_report("sweep-abc", project="p", entity="me"))
    (summary, jobs) = spec["grids"]
    assert summary["runsets"][0]["filters"] == "Metric('Group') == 'sweep-abc' and Metric('JobType') == 'summary'"
    leaves = {(f["key"]["name"], f["value"]) for f in jobs["runsets"][0]["parsed"]["filters"]}
    assert leaves == {("group", "sweep-abc"), ("jobType", "job")}
    views = [p["viewType"] for p in jobs["panels"]]
    assert views.count("Scatter Plot") == 2 and views.count("Bar Chart") == 4
    bars = [p["config"] for p in jobs["panels"] if p["viewType"] == "Bar Chart"]
    assert ["summary_metrics.time/calibration_s", "summary_metrics.time/eval_s"] in [b["metrics"] for b in bars]
    out = tmp_path / "d.json"
    assert main(["--group", "sweep-abc", "--out", str(out)]) == 0 and json.loads(out.read_text())["grids"]
    assert main(["--group", "sweep-abc", "--save"]) == 2  # no entity: refused before any upload
