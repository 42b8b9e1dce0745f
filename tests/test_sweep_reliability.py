"""Sweeps at scale, as a user runs them: the joblib and submitit_local launchers, a sweep killed
with SIGKILL and relaunched, two sweeps on one results folder at once, a corrupted record, NaN
during calibration. Tiny jobs (random DeiT-Tiny, the synthetic 8-image tree), so each test takes
seconds to a minute on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from test_cli import _tiny_job_args

from ptqbench.launch import job_threads, joblib_workers
from ptqbench.records import finished, job_lock, load_records, read_json, record_path, write_json_atomic


def _sweep_lines(results: Path) -> list[dict]:
    """Every jobs.jsonl line of every sweep under `results` (each line must parse)."""
    lines = []
    for path in sorted((results / "logs" / "multirun").glob("*/jobs.jsonl")):
        lines += [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return lines


def _assert_one_ok_record_per_job(results: Path, n: int) -> list[dict]:
    paths = sorted((results / "runs").glob("*.json"))
    recs = [json.loads(p.read_text()) for p in paths]  # every record parses
    assert len(recs) == n, [p.name for p in paths]
    assert len({r["run_key"] for r in recs}) == n
    assert all(r["status"] == "ok" for r in recs), [(r["run_key"], r.get("error")) for r in recs]
    assert all(p.stem == r["run_key"] for p, r in zip(paths, recs))
    return recs


def _popen_cli(*args: str) -> subprocess.Popen:
    """`python -m ptqbench ARGS` in its own process group (so it and its workers can be killed)."""
    env = {**os.environ, "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, "-m", "ptqbench", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


# --- launchers ---------------------------------------------------------------------------------


def test_joblib_sweep_parallel_jobs_threads_and_resume(tiny_imagenet, tmp_path):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=minmax", "bits=w4a4,w8a8",
            "calib.seed=0,1", *_tiny_job_args(tiny_imagenet, tmp_path)]
    first = run_cli(*args)
    out = first.stderr + first.stdout
    assert first.returncode == 0, out[-3000:]
    recs = _assert_one_ok_record_per_job(tmp_path, 4)
    cpus = len(os.sched_getaffinity(0))
    assert {r["threads"] for r in recs} == {max(1, cpus // 2)}  # threads=null: cpus // n_jobs
    lines = _sweep_lines(tmp_path)  # written by the joblib worker processes
    assert len(lines) == 4 and {ln["run_key"] for ln in lines} == {r["run_key"] for r in recs}
    assert "4 jobs, 4 ran, 0 skipped" in out

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 jobs, 0 ran, 4 skipped" in second.stderr + second.stdout

    failing = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=minmax", "bits.w=99",
                      "bits.a=8", *_tiny_job_args(tiny_imagenet, tmp_path))
    assert failing.returncode == 1  # a failed job fails the sweep at its end, as with the basic launcher
    assert "1 jobs, 0 ran, 0 skipped (already finished), 1 failed" in failing.stderr + failing.stdout


def test_submitit_local_sweep_records_jobs_and_fails_at_the_end(tiny_imagenet, tmp_path):
    out = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", "method=minmax",
                  "bits.w=8,99", "bits.a=8", *_tiny_job_args(tiny_imagenet, tmp_path))
    text = out.stderr + out.stdout
    assert out.returncode == 1, text[-3000:]
    recs = {r["config"]["bits"]["w"]: r for r in load_records(tmp_path)}
    assert recs[8]["status"] == "ok" and recs[8]["threads"] == 1  # threads = hydra.launcher.cpus_per_task
    assert recs[99]["status"] == "failed" and "bits.w=99" in recs[99]["error"]
    lines = _sweep_lines(tmp_path)  # appended by two submitit processes
    assert sorted(ln["status"] for ln in lines) == ["failed", "ok"]
    assert "2 jobs, 1 ran, 0 skipped (already finished), 1 failed" in text


def test_thread_rule_per_launcher():
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    slurm = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 8}
    assert job_threads(None, {**joblib, "n_jobs": 4}, cpus=16)[0] == 4
    assert job_threads(None, {**joblib, "n_jobs": -1}, cpus=16)[0] == 1
    assert job_threads(None, {**joblib, "n_jobs": 32}, cpus=16)[0] == 1
    assert joblib_workers(-2, 16) == 15
    assert job_threads(3, {**joblib, "n_jobs": 4}, cpus=16)[0] == 3  # threads=N wins
    assert job_threads(None, slurm, cpus=64, env={})[0] == 8
    assert job_threads(None, slurm, cpus=64, env={"SLURM_CPUS_PER_TASK": "6"})[0] == 6
    assert job_threads(None, None, cpus=16)[0] is None  # basic launcher: torch's default


def test_slurm_launcher_configs_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        gpu = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
        cpu = compose("config", overrides=["hydra/launcher=slurm_cpu"], return_hydra_config=True).hydra.launcher
    assert gpu._target_.endswith("SlurmLauncher") and gpu.gpus_per_node == 1 and gpu.cpus_per_task == 8
    assert gpu.mem_gb and gpu.timeout_min and gpu.array_parallelism
    assert cpu._target_.endswith("SlurmLauncher") and cpu.gpus_per_node is None and cpu.cpus_per_task == 16


# --- reliability -------------------------------------------------------------------------------


def test_sweep_killed_with_sigkill_resumes_with_each_job_once(tiny_imagenet, tmp_path):
    # killed as soon as job 2 holds its lock (it then needs about a second to build its model)
    args = ["-m", "method=minmax", "bits=w4a4,w8a8", *_tiny_job_args(tiny_imagenet, tmp_path)]
    runs = tmp_path / "runs"
    proc = _popen_cli(*args)
    deadline = time.monotonic() + 240
    try:
        while not (list(runs.glob("*.json")) and len(list(runs.glob(".locks/*.lock"))) == 2):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "job 2 did not start within 240 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and anything it started
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = [json.loads(p.read_text()) for p in runs.glob("*.json")]
    assert len(before) == 1 and before[0]["status"] == "ok"  # the killed job left no record

    again = run_cli(*args)  # the killed job's lock file is still there: it must not block
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_one_ok_record_per_job(tmp_path, 2)
    assert "2 jobs, 1 ran, 1 skipped" in again.stderr + again.stdout


def test_two_sweeps_on_one_results_folder_run_each_job_once(tiny_imagenet, tmp_path):
    args = ["-m", "method=minmax", "bits=w4a4,w8a8", *_tiny_job_args(tiny_imagenet, tmp_path)]
    procs = [_popen_cli(*args), _popen_cli(*args)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    _assert_one_ok_record_per_job(tmp_path, 2)
    lines = _sweep_lines(tmp_path)
    assert len(lines) == 4 and all(ln["status"] == "ok" for ln in lines)
    ran = [ln["run_key"] for ln in lines if not ln["skipped"]]
    assert len(ran) == 2 and len(set(ran)) == 2  # the per-job lock: the other sweep waited, then skipped
    assert not list((tmp_path / "runs").glob(".*.tmp"))


def test_corrupted_record_is_quarantined_and_recomputed(tiny_imagenet, tmp_path):
    args = ["-m", "method=minmax", "bits=w8a8", *_tiny_job_args(tiny_imagenet, tmp_path)]
    assert run_cli(*args).returncode == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # truncated, e.g. copied back from a full disk

    again = run_cli(*args)
    out = again.stderr + again.stdout
    assert again.returncode == 0, out[-3000:]
    assert f"unreadable record {path}" in out and f"{path.name}.corrupt" in out
    assert (path.parent / f"{path.name}.corrupt").read_text() == text[: len(text) // 2]
    _assert_one_ok_record_per_job(tmp_path, 1)
    assert "1 jobs, 1 ran, 0 skipped" in out


def test_read_json_quarantine_and_report_reader(tmp_path, caplog):
    path = record_path(tmp_path, "abc")
    write_json_atomic(path, {"run_key": "abc", "status": "ok"})
    path.write_text("[1, 2")
    assert read_json(path) is None and path.exists()  # a reader (the report) only warns
    assert f"ignoring unreadable record {path}" in caplog.text
    assert finished(tmp_path, "abc") is None and not path.exists()  # the job's own check moves it aside
    assert (path.parent / "abc.json.corrupt").exists()
    path.write_text("[]")
    assert finished(tmp_path, "abc") is None and list(path.parent.glob("abc.json.*.corrupt"))


def test_job_lock_waits_for_the_holder(tmp_path):
    order = []

    def second() -> None:
        with job_lock(tmp_path, "k"):
            order.append("second")

    with job_lock(tmp_path, "k"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        order.append("first done")
    t.join(10)
    assert order == ["first done", "second"]


def test_nan_checkpoint_fails_the_job_with_the_quantizer_named(tiny_imagenet, tmp_path):
    import timm
    import torch

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    sd = model.state_dict()
    sd["blocks.2.mlp.fc1.weight"][0, 0] = float("nan")
    ckpt = tmp_path / "nan.pth"
    torch.save(sd, ckpt)
    tiny = [a for a in _tiny_job_args(tiny_imagenet, tmp_path) if a != "model.pretrained=false"]
    out = run_cli("-m", "method=fp,minmax", "bits=w8a8", f"model.checkpoint={ckpt}", *tiny)
    text = out.stderr + out.stdout
    assert out.returncode == 1, text[-3000:]  # the sweep went on and failed at its end
    recs = {r["config"]["method"]["name"]: r for r in load_records(tmp_path)}
    assert recs["fp"]["status"] == "ok"
    err = recs["minmax"]["error"]
    assert recs["minmax"]["status"] == "failed" and err.startswith("CalibrationError")
    assert "NaN" in err and "blocks.2.mlp.fc1" in err and "check the checkpoint" in err
    assert "2 jobs, 1 ran, 0 skipped (already finished), 1 failed" in text
