"""One validation pass over the whole composed config, before any work: every case is composed
with Hydra's compose API and checked in-process (no subprocess, no model, no data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ptqbench.config_store import register_configs
from ptqbench.errors import ConfigError
from ptqbench.records import run_key
from ptqbench.validate import config_problems, group_options, validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _compose(*overrides: str, hydra: bool = False):
    return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def _problems(*overrides: str) -> list[str]:
    return config_problems(_compose(*overrides))


# Each bad value of issue 19 (and its class), the message it now gets: key, value, what is valid.
BAD = [
    (["bits.w=4.5"], "bits.w=4.5: must be an integer in 2..16"),  # ran as 4-bit under a new key before
    (["bits.w=abc"], "bits.w=abc: must be an integer in 2..16"),  # a ValueError traceback before
    (["bits.a=1"], "bits.a=1: must be an integer in 2..16"),
    (["data.eval_limit=0"], "data.eval_limit=0: must be null (every image) or an integer >= 1"),  # evaluated every image
    (["+calib.sizee=64"], "calib.sizee=64: unknown key; calib has the keys seed, size, split (did you mean calib.size?)"),
    (["+model.chekpoint=/x"], "model.chekpoint=/x: unknown key; model has the keys allow_download, arch, checkpoint, "
                              "name, pretrained, tag, weights_dir (did you mean model.checkpoint?)"),
    (["+foo=1"], "foo=1: unknown key; the top-level keys are "),
    (["+method.reparm=false"], "method.reparm=false: unknown key; method 'repq' has the options "),
    (["method.reparam=maybe"], "method.reparam=maybe: must be true or false"),
    (["method=erq", "method.coe=abc"], "method.coe=abc: must be a number"),
    (["method=gptq", "method.blocksize=1.5"], "method.blocksize=1.5: must be an integer"),
    (["calib.size=0"], "calib.size=0: must be an integer >= 1 (calibration images)"),
    (["calib.seed=-1"], "calib.seed=-1: must be an integer >= 0"),
    (["calib.split=val"], "calib.split=val: that is the evaluation split (data.val_split)"),
    (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    (["data.workers=-2"], "data.workers=-2: must be auto or an integer >= 0"),
    (["threads=0"], "threads=0: must be null (the launcher decides) or an integer >= 1"),
    (["heap_reuse_mib=64"], "heap_reuse_mib=64: must be an integer in 1..32 (MiB; glibc keeps no larger heap blocks)"),
    (["seed=1.5"], "seed=1.5: must be an integer >= 0"),
    (["resume=maybe"], "resume=maybe: must be true or false"),
    (["recon_spill=maybe"], "recon_spill=maybe: must be true or false"),
    (["device=gpu"], "device=gpu: must be auto, cpu, cuda or cuda:N"),
    (["model.pretrained=yes"], "model.pretrained=yes: must be true or false"),
    (["cache.max_gb=0"], "cache.max_gb=0: must be a number of GiB > 0"),
    (["+cache.maxgb=1"], "cache.maxgb=1: unknown key; cache has the keys dir, enabled, fp_activations, max_gb"),
    (["logger.mode=onlin"], "logger.mode=onlin: must be offline, online or disabled"),
    (["quant.bits=99"], "quant.bits=99; use an integer in 2..16"),
    (["+quant.fulll=true"], "quant.fulll=true: unknown key; quant has the options "),
    (["model=mask_rcnn_swin_t"], "model=mask_rcnn_swin_t is a detector: run it with task=detection"),
    (["task=detection", "quant.full=true"], "quant.full=true: the fully quantized roles exist for timm classifiers only"),
    (["data=coco"], "data=coco: task=classification evaluates on data=imagenet"),
    (["task=detection", "method=ptq4vit", "method.grad_loss=kl"],
     "method=ptq4vit: its loss differentiates a classifier's logits, which a detector does not have; set method.grad_loss=auto or ce"),
    (["method=ptq4vit", "method.accept=maybe"], "bad option for method 'ptq4vit': accept='maybe'; choose one of"),
    # keys the configured search never reads: search_rounds=0 runs none
    (["method=tsptq", "method.search_rounds=0", "method.search_candidates=20"],
     "bad option for method 'tsptq': search_candidates=20 would change nothing: search_rounds=0 runs no search"),
    (["method=ptq4vit", "method.search_metric=mse", "method.grad_loss=kl"],
     "bad option for method 'ptq4vit': grad_loss='kl' would change nothing: grad_loss weights only search_metric=hessian"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_is_refused_with_key_value_and_valid_range(overrides, message):
    problems = _problems(*overrides)
    assert len(problems) == 1 and problems[0].startswith(message), problems
    with pytest.raises(ConfigError, match="Nothing was run or recorded"):
        validate_config(_compose(*overrides))


def test_search_keys_are_accepted_where_the_search_reads_them():
    assert _problems("method=tsptq", "method.search_rounds=3", "method.search_candidates=20", "method.grad_loss=kl") == []
    assert _problems("method=ptq4vit", "method.search_rounds=0") == []


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        validate_config(_compose("bits.w=4.5", "data.eval_limit=0", "+foo=1"))
    text = str(e.value)
    assert text.startswith("3 problems in the config; nothing was run or recorded")
    assert "bits.w=4.5" in text and "data.eval_limit=0" in text and "foo=1" in text


def test_checkpoint_path_is_checked_before_any_work(tmp_path):
    (tmp_path / "deit.pth").write_bytes(b"x")
    assert _problems(f"model.checkpoint={tmp_path}") == [
        f"model.checkpoint={tmp_path}: {tmp_path} is a directory, not a weights file (it holds deit.pth: give "
        f"one of them, e.g. {tmp_path / 'deit.pth'})"]
    assert _problems(f"model.checkpoint={tmp_path}/nope.pth") == [
        f"model.checkpoint={tmp_path}/nope.pth: {tmp_path}/nope.pth does not exist"]
    assert _problems(f"model.checkpoint={tmp_path}/nope.pth", "model.pretrained=false") == []  # not read then


def test_cuda_without_cuda_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _problems("device=cuda") == ["device=cuda but CUDA is not available here; use device=cpu or device=auto"]


def _every_shipped_config() -> list[list[str]]:
    from ptqbench.config import model_kind

    sets = [[f"method={m}"] for m in group_options("method")] + [[f"bits={b}"] for b in group_options("bits")]
    for m in group_options("model"):
        sets.append([f"model={m}"] if model_kind(m) == "timm" else ["task=detection", f"model={m}"])
    sets += [[f"logger={lg}"] for lg in group_options("logger")]
    sets += [[f"+experiment={p.stem}"] for p in sorted((CONF.parent / "experiments" / "experiment").glob("*.yaml"))]
    sets += [["quant.full=true"], ["method=tsptq", "quant.full=true", "quant.ln_input=ptf"],
             ["method=percentile", "++method.act_percentiles=[0.999]"]]
    return sets


def test_every_shipped_option_and_experiment_validates():
    bad = {" ".join(ov): p for ov in _every_shipped_config() if (p := config_problems(_compose(*ov, hydra=True)))}
    assert not bad, bad


def test_validation_does_not_change_run_keys():
    """The run key of a valid config is computed exactly as before (tests/report/fixtures/runs hold old
    records): validation reads the config, never rewrites it."""
    cfg = _compose("method=minmax", "bits=w8a8")
    before = run_key(cfg)
    validate_config(cfg)
    assert run_key(cfg) == before


def test_a_refused_job_runs_nothing_and_records_nothing(tiny_imagenet, tmp_path):
    """run_job refuses before it loads a model, reads an image or writes a record."""
    from ptqbench.run import run_job

    cfg = _compose(f"data.root={tiny_imagenet}", f"results_dir={tmp_path}", "logger=none", "bits.w=4.5")
    with pytest.raises(ConfigError, match=r"bits.w=4.5: must be an integer in 2..16"):
        run_job(cfg)
    assert not os.listdir(tmp_path)


def test_too_many_calibration_images_fail_before_the_fp_evaluation(tiny_imagenet, tmp_path):
    """calib.size beyond the split is checked before the weights load (it came after the FP
    evaluation, 10-20 s in): no FP baseline is computed or cached."""
    from ptqbench.errors import DataNotFoundError
    from ptqbench.run import run_job

    cfg = _compose(f"data.root={tiny_imagenet}", f"results_dir={tmp_path}", "logger=none", "model.pretrained=false",
                   "calib.size=99", "data.workers=0", "method=minmax")
    with pytest.raises(DataNotFoundError, match=r"calib.size=99 but .*train has 16 images; use calib.size=1..16"):
        run_job(cfg)
    assert not (tmp_path / "cache" / "fp_eval").exists()


def test_the_heap_reuse_limit_is_set_per_job_and_kept_out_of_the_run_key(tiny_imagenet, tmp_path, monkeypatch):
    """heap_reuse_mib changes where memory comes from, never a result: set before the job's work
    starts (here the job then stops at its data check), and two jobs that differ only in it share
    one record."""
    from ptqbench import heap
    from ptqbench.algorithms import row_store
    from ptqbench.errors import DataNotFoundError
    from ptqbench.run import run_job

    monkeypatch.setattr(heap, "_reuse_limit", heap._reuse_limit)
    monkeypatch.setattr(row_store, "_spill", row_store._spill)
    common = (f"data.root={tiny_imagenet}", f"results_dir={tmp_path}", "logger=none", "model.pretrained=false",
              "calib.size=99", "data.workers=0", "method=minmax")
    cfg = _compose(*common, "heap_reuse_mib=4", "recon_spill=false")
    with pytest.raises(DataNotFoundError):
        run_job(cfg)
    assert heap._reuse_limit == 4 << 20
    assert run_key(cfg) == run_key(_compose(*common))
    assert not row_store._spill  # recon_spill, the same kind of setting: set per job, not in the key
