import json
import os
import stat

import pytest
from omegaconf import OmegaConf

from ptqbench.records import MAX_ATTEMPTS, finished, read_json, record_path, run_key, save_record, write_json_atomic

BASE = {
    "seed": 0, "model": {"name": "deit_tiny", "weights_dir": None}, "method": {"name": "repq", "reparam": True},
    "bits": {"w": 4, "a": 4}, "calib": {"size": 32, "seed": 0, "split": "train"},
    "data": {"root": None, "eval_limit": None, "batch_size": 100, "workers": "auto"},
    "task": {"name": "classification"}, "logger": {"name": "wandb"}, "results_dir": "results",
}


def _cfg(**over):
    c = OmegaConf.create(BASE)
    for k, v in over.items():
        OmegaConf.update(c, k, v)
    return c


def test_key_ignores_non_semantic_and_tracks_semantic_changes():
    k = run_key(_cfg())
    assert k == run_key(_cfg(**{"logger.name": "none", "data.workers": 0, "data.batch_size": 7, "results_dir": "x"}))
    for change in ({"bits.w": 6}, {"calib.seed": 1}, {"method.reparam": False}, {"data.eval_limit": 100}, {"model.name": "vit_base"}):
        assert run_key(_cfg(**change)) != k, change


def test_atomic_write_and_corrupt_record_is_treated_as_missing(tmp_path, caplog):
    path = record_path(tmp_path, "abc")
    write_json_atomic(path, {"run_key": "abc", "status": "ok"})
    assert finished(tmp_path, "abc")["status"] == "ok"
    assert not list(path.parent.glob("*.tmp"))
    path.write_text('{"run_key": "abc", "sta')  # truncated by a crash elsewhere
    assert read_json(path) is None and finished(tmp_path, "abc") is None
    assert f"ignoring unreadable record {path}" in caplog.text
    assert f"moved aside to {path}.corrupt" in caplog.text and not path.exists()
    path.write_text(json.dumps({"run_key": "abc", "status": "failed"}))
    assert finished(tmp_path, "abc") is None  # failed jobs rerun


# --- a failed or interrupted rerun never replaces a finished result (issue 19, item 2) ----------


def _ok(key: str = "abc", top1: float = 71.5) -> dict:
    return {"run_key": key, "status": "ok", "metrics": {"top1": top1}, "started_at": "t0", "finished_at": "t1"}


def _failed(key: str = "abc", error: str = "RuntimeError: boom") -> dict:
    return {"run_key": key, "status": "failed", "error": error, "traceback": "Traceback ...", "started_at": "t2",
            "finished_at": "t3"}


def test_failed_rerun_keeps_the_ok_record_and_lists_the_attempt(tmp_path):
    path = record_path(tmp_path, "abc")
    save_record(path, _ok())
    saved = save_record(path, _failed())
    on_disk = read_json(path)
    assert on_disk == saved and on_disk["status"] == "ok" and on_disk["metrics"] == {"top1": 71.5}
    assert on_disk["attempts"] == [{"status": "failed", "error": "RuntimeError: boom", "traceback": "Traceback ...",
                                    "started_at": "t2", "finished_at": "t3"}]
    save_record(path, _failed(error="KeyboardInterrupt: interrupted (Ctrl-C)"), interrupted=True)
    on_disk = read_json(path)
    assert on_disk["status"] == "ok" and [a["status"] for a in on_disk["attempts"]] == ["failed", "interrupted"]
    assert finished(tmp_path, "abc")["metrics"] == {"top1": 71.5}  # resume still skips it


def test_failed_record_collects_attempts_and_a_success_supersedes_with_a_trace(tmp_path):
    path = record_path(tmp_path, "abc")
    save_record(path, _failed(error="E1"))
    save_record(path, _failed(error="E2"))
    rec = read_json(path)
    assert rec["status"] == "failed" and rec["error"] == "E2" and [a["error"] for a in rec["attempts"]] == ["E1", "E2"]
    save_record(path, _ok(top1=70.0))
    rec = read_json(path)
    assert rec["status"] == "ok" and [a["error"] for a in rec["attempts"]] == ["E1", "E2"]
    save_record(path, _ok(top1=72.0))  # resume=false rerun that succeeds
    rec = read_json(path)
    assert rec["metrics"] == {"top1": 72.0}
    assert rec["attempts"][-1] == {"status": "superseded", "started_at": "t0", "finished_at": "t1", "metrics": {"top1": 70.0}}


def test_attempts_are_bounded(tmp_path):
    path = record_path(tmp_path, "abc")
    save_record(path, _ok())
    for i in range(MAX_ATTEMPTS + 5):
        save_record(path, _failed(error=f"E{i}"))
    rec = read_json(path)
    assert len(rec["attempts"]) == MAX_ATTEMPTS and rec["attempts"][-1]["error"] == f"E{MAX_ATTEMPTS + 4}"
    assert rec["status"] == "ok"


def test_valid_record_is_written_as_before(tmp_path):
    """A first successful run writes exactly the record it was given (no `attempts` key)."""
    path = record_path(tmp_path, "abc")
    assert save_record(path, _ok()) == _ok() and json.loads(path.read_text()) == _ok()


# --- records and cache entries honour the umask (issue 19, item 6) -----------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_records_and_cache_files_get_the_umask_permissions(tmp_path, umask):
    import torch

    from ptqbench.cache import ContentCache

    old = os.umask(umask)
    try:
        path = record_path(tmp_path, "abc")
        write_json_atomic(path, {"run_key": "abc", "status": "ok"})
        cache = ContentCache(tmp_path / "cache")
        cache.get_or_compute("calib", "k", lambda: {"x": torch.zeros(2)})
        cache.get_or_compute("fp_eval", "j", lambda: {"top1": 1.0}, fmt="json")
    finally:
        os.umask(old)
    files = [path, *sorted((tmp_path / "cache").glob("*/*.pt")), *sorted((tmp_path / "cache").glob("*/*.json"))]
    assert len(files) == 5
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # mkstemp gave 0600 whatever the umask


def test_write_errors_name_the_path_and_the_fix(tmp_path, monkeypatch):
    import errno

    from ptqbench.errors import StorageError
    from ptqbench.fileio import check_writable

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match=rf"cannot write {blocker}/runs: Not a directory .*Fix: .*results_dir=DIR"):
        write_json_atomic(blocker / "runs" / "abc.json", {})
    with pytest.raises(StorageError, match=rf"cannot write to {blocker}/results: Not a directory"):
        check_writable(blocker / "results")

    def full(fd):  # a full disk shows at the latest when the data is flushed to it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = record_path(tmp_path, "abc")
    with pytest.raises(StorageError, match=rf"cannot write {target}: No space left on device \(errno 28\). "
                                           r"Fix: free space on that disk, or pass results_dir=DIR on another disk"):
        write_json_atomic(target, {"run_key": "abc"})
    monkeypatch.undo()
    assert not list(target.parent.glob(".*.tmp"))  # no temp file left behind


# --- RunRecord: the one writer's schema and the one reader of every schema ------------------------


def test_run_record_round_trips_every_key_and_adds_the_schema_version():
    from ptqbench.record import RECORD_SCHEMA, RunRecord

    on_disk = {**_ok(), "schema_version": RECORD_SCHEMA, "group": "g", "config": {"quant": {"full": True, "bits": 8}},
               "timings": {"eval_s": 1.5}, "wandb": {"id": "x"}, "attempts": [{"status": "failed"}]}
    rec = RunRecord.from_dict(on_disk)
    assert rec.metrics == {"top1": 71.5} and rec.results["timings"] == {"eval_s": 1.5} and rec.group == "g"
    assert rec.to_dict() == on_disk


def test_run_record_reads_a_record_from_before_the_schema_and_the_quant_group(tmp_path):
    """A version-1 record (no `schema_version`, no `quant` in its config) reads as the current
    schema with the fully quantized mode off; the file itself is left as it was."""
    from ptqbench.record import RECORD_SCHEMA, RunRecord
    from ptqbench.records import load_records

    old = {**_ok(), "config": {"model": {"name": "deit_tiny"}}}
    path = record_path(tmp_path, "abc")
    write_json_atomic(path, old)
    rec = RunRecord.from_dict(read_json(path))
    assert rec.schema_version == RECORD_SCHEMA and rec.config["quant"] == {"full": False}
    assert rec.config["model"] == {"name": "deit_tiny"} and rec.finished_at == "t1"
    (loaded,) = load_records(tmp_path)
    assert loaded == {**old, "schema_version": RECORD_SCHEMA, "config": {**old["config"], "quant": {"full": False}},
                      "wandb": None}
    assert read_json(path) == old
