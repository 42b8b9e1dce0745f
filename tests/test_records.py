import json

from omegaconf import OmegaConf

from ptqbench.records import finished, read_json, record_path, run_key, write_json_atomic

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
