"""Sweeps at scale, as a user runs them: the joblib and submitit_local launchers at their default
settings (data.workers=auto: DataLoader worker processes inside the launcher's workers), a sweep
killed with SIGKILL and relaunched and two sweeps on one results folder at once (with each
launcher), a failed or Ctrl-C'd rerun of a finished job, a corrupted record, NaN during
calibration. Tiny jobs (a random timm test ViT, the synthetic 8-image tree), so each test takes seconds
to a minute on 2 cores; the joblib and submitit_local variants of the kill and concurrency tests
are `slow` (the default suite keeps the basic-launcher ones), and so is the joblib sweep test
(the default suite keeps the submitit_local sweep and, for the DataLoader-inside-a-loky-worker
failure the joblib test guards, tests/data/test_data.py::test_loader_workers_start_inside_a_joblib_worker)."""

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
from tests.conftest import REPO, compose_config, run_cli
from tests.test_cli import _tiny_job_args

from ptqbench.launch import job_threads, joblib_workers
from ptqbench.records import finished, job_lock, load_records, read_json, record_path, run_key, write_json_atomic
from ptqbench.run import run_job

LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1"],
}
LAUNCHER_PARAMS = [pytest.param("basic"), pytest.param("joblib", marks=pytest.mark.slow),
                   pytest.param("submitit_local", marks=pytest.mark.slow)]


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
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_sigint_default)


def _sigint_default() -> None:
    """SIGINT back to its default in the child, as in a terminal: a test run started in the
    background by a non-interactive shell inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler, so the Ctrl-C tests would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- launchers ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_joblib_sweep_parallel_jobs_threads_and_resume(tiny_imagenet, tmp_path):
    # the documented command at default data.workers=auto: each job's DataLoader starts worker
    # processes from inside a loky worker (that failed every job with "'Process' object has no
    # attribute 'env'" while this test set data.workers=0)
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=minmax", "bits=w4a4,w8a8",
            "calib.seed=0,1", *_tiny_job_args(tiny_imagenet, tmp_path, workers=True)]
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
    assert "bits.w=99: must be an integer in 2..16" in failing.stderr + failing.stdout


def test_submitit_local_sweep_records_jobs_and_fails_at_the_end(tiny_imagenet, tmp_path):
    out = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", "method=minmax",
                  "bits.w=8,99", "bits.a=8", *_tiny_job_args(tiny_imagenet, tmp_path, workers=True))
    text = out.stderr + out.stdout
    assert out.returncode == 1, text[-3000:]
    recs = {r["config"]["bits"]["w"]: r for r in load_records(tmp_path)}
    assert set(recs) == {8}  # bits.w=99 was refused before any work: no record
    assert recs[8]["status"] == "ok" and recs[8]["threads"] == 1  # threads = hydra.launcher.cpus_per_task
    lines = _sweep_lines(tmp_path)  # appended by two submitit processes
    assert sorted(ln["status"] for ln in lines) == ["failed", "ok"]
    assert "bits.w=99: must be an integer in 2..16" in next(ln["error"] for ln in lines if ln["status"] == "failed")
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


@pytest.mark.parametrize("launcher", LAUNCHER_PARAMS)
def test_sweep_killed_with_sigkill_resumes_with_each_job_once(tiny_imagenet, tmp_path, launcher):
    # killed (with every process it started) while a job is running and another has finished
    grid = ["bits=w4a4,w8a8"] if launcher == "basic" else ["bits=w4a4,w8a8", "calib.seed=0,1"]
    n = 2 if launcher == "basic" else 4
    args = ["-m", *LAUNCHERS[launcher], "method=minmax", *grid, *_tiny_job_args(tiny_imagenet, tmp_path, workers=True)]
    runs = tmp_path / "runs"
    proc = _popen_cli(*args)
    deadline = time.monotonic() + 300
    try:  # a record exists and more jobs hold (or held) a lock than have a record: one is running
        while not (list(runs.glob("*.json")) and len(list(runs.glob(".locks/*.lock"))) > len(list(runs.glob("*.json")))):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no job finished within 300 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and anything it started
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = [json.loads(p.read_text()) for p in runs.glob("*.json")]  # every record left parses
    assert 1 <= len(before) < n and all(r["status"] == "ok" for r in before)  # the killed jobs left none

    again = run_cli(*args)  # the killed jobs' lock files are still there: they must not block
    out = again.stderr + again.stdout
    assert again.returncode == 0, out[-3000:]
    _assert_one_ok_record_per_job(tmp_path, n)
    assert f"{n} jobs, {n - len(before)} ran, {len(before)} skipped" in out


@pytest.mark.parametrize("launcher", LAUNCHER_PARAMS)
def test_two_sweeps_on_one_results_folder_run_each_job_once(tiny_imagenet, tmp_path, launcher):
    args = ["-m", *LAUNCHERS[launcher], "method=minmax", "bits=w4a4,w8a8",
            *_tiny_job_args(tiny_imagenet, tmp_path, workers=True)]
    procs = [_popen_cli(*args), _popen_cli(*args)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    _assert_one_ok_record_per_job(tmp_path, 2)
    lines = _sweep_lines(tmp_path)
    assert len(lines) == 4 and all(ln["status"] == "ok" for ln in lines)
    ran = [ln["run_key"] for ln in lines if not ln["skipped"]]
    assert len(ran) == 2 and len(set(ran)) == 2  # the per-job lock: the other sweep waited, then skipped
    assert not list((tmp_path / "runs").glob(".*.tmp"))


# --- a rerun that fails never replaces a finished result (issue 19, item 2) ---------------------


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _finished_record(cfg) -> tuple[Path, dict]:
    """An `ok` record for `cfg`'s job, as an earlier run left it."""
    key = run_key(cfg)
    path = record_path(Path(cfg.results_dir), key)
    ok = {"run_key": key, "status": "ok", "metrics": {"top1": 12.5}, "started_at": "2026-01-01T00:00:00+00:00",
          "finished_at": "2026-01-01T00:01:00+00:00"}
    write_json_atomic(path, ok)
    return path, ok


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_failed_rerun_keeps_the_finished_result(tiny_imagenet, tmp_path, monkeypatch, error):
    """resume=false reruns a finished job; the rerun fails (an exception, Ctrl-C): the record keeps
    its `ok` result and lists the attempt, and the error says so (it was replaced by `failed`)."""
    import ptqbench.run as run
    from ptqbench.errors import describe

    cfg = _compose(*_tiny_job_args(tiny_imagenet, tmp_path), "method=minmax", "bits=w8a8", "resume=false")
    path, ok = _finished_record(cfg)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(run, "_execute", fail)
    with pytest.raises(type(error)) as raised:
        run.run_job(cfg)
    rec = read_json(path)
    assert rec["status"] == "ok" and rec["metrics"] == ok["metrics"] and rec["finished_at"] == ok["finished_at"]
    (attempt,) = rec["attempts"]
    expected = "RuntimeError: out of memory" if isinstance(error, RuntimeError) else "KeyboardInterrupt: interrupted (Ctrl-C)"
    assert attempt["status"] == ("failed" if isinstance(error, RuntimeError) else "interrupted")
    assert attempt["error"] == expected and "Traceback" in attempt["traceback"]
    assert describe(raised.value) == (
        f"{expected}\n{path} keeps its finished result of 2026-01-01T00:01:00+00:00 (top-1 12.50); "
        "this attempt is listed under its `attempts` (1 so far)")
    assert finished(tmp_path, ok["run_key"]) is not None  # a relaunch still skips it


def test_refused_rerun_leaves_the_finished_record_untouched(tiny_imagenet, tmp_path):
    """A rerun refused by the config check (device=cuda without CUDA, a bad value) never gets to
    the record: it stays byte for byte."""
    import torch

    from ptqbench.errors import ConfigError
    from ptqbench.run import run_job

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = _compose(*_tiny_job_args(tiny_imagenet, tmp_path), "method=minmax", "bits=w8a8", "resume=false", "device=cuda")
    path, _ = _finished_record(cfg)
    text = path.read_text()
    with pytest.raises(ConfigError, match="device=cuda but CUDA is not available here"):
        run_job(cfg)
    assert path.read_text() == text


def test_ctrl_c_during_a_rerun_keeps_the_finished_result(tiny_imagenet, tmp_path):
    """The real Ctrl-C: SIGINT to the process group of `python -m ptqbench resume=false` while
    the job runs. Exit status 130, the `ok` record kept with the interrupted attempt, one line."""
    args = [*_tiny_job_args(tiny_imagenet, tmp_path, workers=True), "method=minmax", "bits=w8a8", "resume=false"]
    path, ok = _finished_record(_compose(*args))
    proc = _popen_cli(*args)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "started; record:" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(240), "".join(lines)[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(10)
    out = "".join(lines)
    # 130, or death by SIGINT (-2), which a shell shows as the same $? == 130. CPython 3.11 exits
    # by re-sending itself SIGINT when a KeyboardInterrupt ever left a C-level PyRun_* call
    # (run_eval_code_obj sets _Py_UnhandledKeyboardInterrupt), even if __main__ caught it later;
    # where the signal lands decides which one (CI on 0e4bef9 saw -2, record intact).
    assert proc.returncode in (130, -signal.SIGINT), out[-3000:]
    rec = read_json(path)
    assert rec["status"] == "ok" and rec["metrics"] == ok["metrics"]
    assert [a["status"] for a in rec["attempts"]] == ["interrupted"]
    assert "KeyboardInterrupt: interrupted (Ctrl-C)" in out and f"{path} keeps its finished result" in out


def test_corrupted_record_is_quarantined_and_recomputed(tiny_imagenet, tmp_path, caplog):
    """In process: the quarantine happens in the job's own resume check (run_job)."""
    cfg = compose_config("method=minmax", "bits=w8a8", *_tiny_job_args(tiny_imagenet, tmp_path))
    assert run_job(cfg)["status"] == "ok"
    (path,) = (tmp_path / "runs").glob("*.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # truncated, e.g. copied back from a full disk

    again = run_job(cfg)
    assert again["status"] == "ok" and not again.get("skipped")
    assert f"unreadable record {path}" in caplog.text and f"{path.name}.corrupt" in caplog.text
    assert (path.parent / f"{path.name}.corrupt").read_text() == text[: len(text) // 2]
    _assert_one_ok_record_per_job(tmp_path, 1)


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
    """In process (a sweep going on after a failed job is test_cli.py's
    test_failing_job_is_recorded_and_sweep_continues): FP runs, calibration stops on the NaN."""
    import timm
    import torch

    from ptqbench.errors import CalibrationError

    model = timm.create_model("test_vit.r160_in1k", pretrained=False)  # the tiny jobs' architecture
    sd = model.state_dict()
    sd["blocks.2.mlp.fc1.weight"][0, 0] = float("nan")
    ckpt = tmp_path / "nan.pth"
    torch.save(sd, ckpt)
    tiny = [a for a in _tiny_job_args(tiny_imagenet, tmp_path) if a != "model.pretrained=false"]
    assert run_job(compose_config("method=fp", "bits=w8a8", f"model.checkpoint={ckpt}", *tiny))["status"] == "ok"
    with pytest.raises(CalibrationError):
        run_job(compose_config("method=minmax", "bits=w8a8", f"model.checkpoint={ckpt}", *tiny))
    recs = {r["config"]["method"]["name"]: r for r in load_records(tmp_path)}
    assert recs["fp"]["status"] == "ok"
    err = recs["minmax"]["error"]
    assert recs["minmax"]["status"] == "failed" and err.startswith("CalibrationError")
    assert "NaN" in err and "blocks.2.mlp.fc1" in err and "check the checkpoint" in err
