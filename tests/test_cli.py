"""The real CLI, as a user runs it: help, a 2x2 sweep, resume, a failing job, clear errors (each a
subprocess, because the process is what they check: exit status, Hydra's multirun, one-line errors).

Jobs here use a random timm test ViT (model=deit_tiny with model.arch=test_vit) and a synthetic 8-image ImageNet tree, so they check the
pipeline, not accuracy (the shared-data end-to-end test does that).
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from tests.conftest import compose_config, run_cli

from ptqbench import heap
from ptqbench.methods import METHODS
from ptqbench.records import load_records


def _tiny_job_args(tiny_imagenet: Path, results: Path, workers: bool = False) -> list[str]:
    """A tiny job's overrides; `workers=True` keeps the default data.workers=auto (loader processes)."""
    return [f"data.root={tiny_imagenet}", f"results_dir={results}", "model.pretrained=false",
            "model.arch=test_vit", "model.tag=r160_in1k",  # timm's 6-block test ViT at 160 px: seconds per job
            "calib.size=4", "data.batch_size=4", *([] if workers else ["data.workers=0"]), "logger=none"]


def test_help_lists_groups_and_choices():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    method_line = next((ln.strip() for ln in out.stdout.splitlines() if ln.strip().startswith("method: ")), "")
    assert set(method_line.removeprefix("method: ").split(", ")) == set(METHODS), method_line  # every registered method
    for line in ("quant: default", "bits: w3a3, w3a4, w4a4, w4a8, w5a5, w6a6, w8a8",
                 "model: cascade_mask_rcnn_swin_s, cascade_mask_rcnn_swin_t, deit_base, deit_small, deit_tiny, mask_rcnn_swin_s",
                 "logger: none, wandb", "calib: default", "data: coco, imagenet", "task: classification, detection"):
        assert line in out.stdout, line



def test_console_command_is_python_dash_m(tmp_path):
    # the `ptqbench` script (pyproject's [project.scripts]) calls ptqbench.command; from another
    # folder, as a user runs it (Hydra once failed there to find conf/ for an imported main)
    code = "import sys; sys.argv = ['ptqbench', '--help']; import ptqbench; ptqbench.command()"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "python -m ptqbench -m method=repq,percentile" in out.stdout

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
    if heap._glibc() is not None and heap.KEEP_TCACHE_ENV not in os.environ:  # every job runs with glibc's cache off
        assert "glibc.malloc.tcache_count" in (r["memory"]["glibc_tunables"] or ""), r["memory"]
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")}

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")} == mtimes
    assert "4 jobs, 0 ran, 4 skipped" in second.stderr + second.stdout
    assert len(list((tmp_path / "cache" / "fp_eval").glob("*.pt"))) == 1  # one FP baseline for the whole sweep
    assert len(list((tmp_path / "cache" / "calib").glob("*.pt"))) == 1  # one calibration batch
    cached = [(r["fp"]["cached"], r["calibration"]["cached"]) for r in recs]
    assert sorted(cached) == [(False, False)] + [(True, True)] * 3, cached  # computed once, then hits


def test_erq_ablation_runs_both_settings_under_two_keys(tiny_imagenet, tmp_path):
    """In process: the ablation is one option of one method (a sweep over a method option is
    test_an_option_shared_by_several_swept_methods_is_set_with_double_plus)."""
    from ptqbench.run import run_job

    recs = {flag: run_job(compose_config("method=erq", f"method.rounding_refinement={str(flag).lower()}", "bits=w3a4",
                                         *_tiny_job_args(tiny_imagenet, tmp_path)))
            for flag in (True, False)}
    assert {r["config"]["method"]["rounding_refinement"] for r in recs.values()} == {True, False}
    assert all(r["status"] == "ok" for r in recs.values())
    assert recs[True]["method_stats"]["refine_flips"] > 0 == recs[False]["method_stats"]["refine_flips"]
    assert recs[True]["run_key"] != recs[False]["run_key"]
    assert len(load_records(tmp_path)) == 2


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
    """A job that fails while it works (here: more calibration images than the split has) is
    recorded as failed; a job whose config is refused (bits.w=99) runs nothing and records
    nothing; the sweep runs every job and fails at its end, naming both."""
    tiny = [a for a in _tiny_job_args(tiny_imagenet, tmp_path) if not a.startswith("calib.size")]
    args = ["-m", "method=minmax", "bits.w=99,8", "bits.a=8", "calib.size=99,4", *tiny]
    out = run_cli(*args)
    text = out.stderr + out.stdout
    assert out.returncode == 1, text[-3000:]  # the sweep reports its failure after running every job
    recs = {(r["config"]["bits"]["w"], r["config"]["calib"]["size"]): r for r in load_records(tmp_path)}
    assert set(recs) == {(8, 99), (8, 4)}  # the two bits.w=99 jobs were refused: no record
    assert recs[8, 4]["status"] == "ok"
    assert recs[8, 99]["status"] == "failed" and "Traceback" in recs[8, 99]["traceback"]
    assert recs[8, 99]["error"].startswith("DataNotFoundError: calib.size=99 but ")
    assert "4 jobs, 1 ran, 0 skipped (already finished), 3 failed" in text
    assert "ConfigError: bits.w=99: must be an integer in 2..16 (bits=w4a4, or bits.w=4 bits.a=4). Nothing was run" in text
    # relaunch: the finished job is skipped, the failed ones are tried again
    again = run_cli(*args)
    assert "4 jobs, 0 ran, 1 skipped (already finished), 3 failed" in again.stderr + again.stdout


def test_bad_value_is_one_line_and_exit_status_2(tmp_path):
    """A refused config is one message naming the key, the value and the valid range: no
    traceback (bits.w=abc was a ValueError traceback), no record, exit status 2."""
    out = run_cli("bits.w=abc", "+calib.sizee=64", f"results_dir={tmp_path}", "logger=none")
    text = out.stderr + out.stdout
    assert out.returncode == 2, text[-3000:]
    assert "2 problems in the config; nothing was run or recorded" in text
    assert "bits.w=abc: must be an integer in 2..16" in text
    assert "calib.sizee=64: unknown key; calib has the keys seed, size, split (did you mean calib.size?)" in text
    assert "Traceback" not in text and not (tmp_path / "runs").exists()


def test_unwritable_results_folder_is_one_line(tmp_path):
    """A results folder that cannot be written (here a path through a file; read-only and full
    disks take the same path) is one line naming it and the fix, before Hydra writes its logs."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = run_cli(f"results_dir={blocker}/results", "logger=none")
    text = out.stderr + out.stdout
    assert out.returncode == 2, text[-3000:]
    assert (f"ptqbench: StorageError: cannot write to {blocker}/results: Not a directory (errno 20). "
            "Fix: a part of that path is a file, not a folder; pass results_dir=DIR to a folder") in text
    assert "Traceback" not in text and "OSError" not in text


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
