"""Sensitivity analysis (`python -m ptqbench.analyze`): one unit quantized, or all but one, with
accuracy and logits SQNR per unit; known answers on a tiny model, the Hydra app in-process."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import REPO, make_tiny_vit
from hydra import compose, initialize_config_dir

from ptqbench.analyze.plots import plot_layer_sqnr
from ptqbench.analyze.sensitivity import analysis_units, logits_of, sensitivity_table, top1
from ptqbench.errors import ConfigError
from ptqbench.methods import Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.quant.calibration import quant_disabled, quantizers
from ptqbench.analyze.sqnr import measure_layer_sqnr

GEN = torch.Generator().manual_seed(0)
IMAGES = torch.randn(16, 3, 32, 32, generator=GEN)


def _setup():
    model = make_tiny_vit()
    meth = build_method({"name": "minmax"}, Bits(3, 3))
    qm = make_quantizable(model, meth.plan())
    meth.quantize(qm, IMAGES[:8])
    batches = [IMAGES[:8], IMAGES[8:]]
    with quant_disabled(qm.model):
        labels = logits_of(qm.model, batches).argmax(1)  # FP is right on every image: top-1 100
    return qm, batches, labels


def test_one_unit_holding_every_quantizer_gives_the_known_answers():
    qm, batches, labels = _setup()
    units = {"everything": [q for q in quantizers(qm.model).values() if q.enabled]}
    frame = sensitivity_table(qm.model, batches, labels, units)
    quant_top1 = top1(logits_of(qm.model, batches), labels)
    row = frame.iloc[0]
    assert frame.attrs["fp_top1"] == 100.0 and frame.attrs["quant_top1"] == quant_top1
    assert row["only_top1"] == quant_top1 and row["only_sqnr_db"] == pytest.approx(frame.attrs["quant_sqnr_db"])
    assert row["all_but_top1"] == 100.0 and row["all_but_sqnr_db"] is None and row["all_but_drop"] == 0.0


def test_layer_and_role_units_restore_the_quantizers():
    qm, batches, labels = _setup()
    before = {n: q.enabled for n, q in quantizers(qm.model).items()}
    layers = analysis_units(qm.model, "layer")
    roles = analysis_units(qm.model, "role")
    assert list(layers)[0] == "patch_embed.proj" and len(layers) == 14
    assert {"weight", "post_ln", "post_softmax", "q", "k", "v", "post_gelu"} <= set(roles)
    assert sum(len(v) for v in roles.values()) == sum(before.values())
    sq = {ly["layer"]: ly for ly in measure_layer_sqnr(qm.model, IMAGES[:4]).as_record()["layers"]}
    frame = sensitivity_table(qm.model, batches, labels, layers, ["only"], sq)
    assert {n: q.enabled for n, q in quantizers(qm.model).items()} == before
    assert list(frame["unit"]) == list(layers) and "all_but_top1" not in frame
    assert frame["layer_sqnr_db"].notna().all() and (frame["only_sqnr_db"] > frame.attrs["quant_sqnr_db"]).all()
    with pytest.raises(ConfigError, match="analyze.granularity"):
        analysis_units(qm.model, "block")
    with pytest.raises(ConfigError, match="analyze.modes"):
        sensitivity_table(qm.model, batches, labels, layers, ["some"])


def test_analysis_files(tmp_path):
    from ptqbench.analyze.app import write_analysis

    qm, batches, labels = _setup()
    frame = sensitivity_table(qm.model, batches, labels, analysis_units(qm.model, "role"))
    cfg = {"model": {"name": "tiny"}, "method": {"name": "minmax"}, "bits": {"w": 3, "a": 3}, "calib": {"size": 8, "seed": 0}}
    files = write_analysis(frame, None, tmp_path / "a", "tiny minmax W3A3: sensitivity per role", cfg, "role")
    assert [f.name for f in files] == ["a.md", "a.csv", "a.json", "a.png", "a.pdf"]
    md = files[0].read_text()
    assert md.startswith("## tiny minmax W3A3: sensitivity per role") and "FP top-1 100.00" in md
    assert "| post_softmax | 2 |" in md and "| unit | quantizers | only_top1 | only_drop | only_sqnr_db | all_but_top1 |" in md
    rows = json.loads(files[2].read_text())["rows"]
    assert rows[0]["unit"] == frame["unit"][0] and isinstance(rows[0]["only_top1"], float)


def _cfg(tiny_imagenet, tmp_path, *extra: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        # timm's 6-block test ViT (160 px, width 64, random weights): the whole pipeline, fast
        return compose("analyze", overrides=[f"data.root={tiny_imagenet}", f"results_dir={tmp_path}", "model.pretrained=false",
                                             "model.arch=test_vit", "model.tag=r160_in1k",
                                             "calib.size=2", "data.eval_limit=4", "data.batch_size=4", "data.workers=0",
                                             "method=minmax", "bits=w4a4", "analyze.sqnr_images=2", *extra])


@pytest.mark.slow  # ~20 s on 2 busy cores; test_analysis_files covers the writing in-process
def test_the_app_writes_table_json_and_figure(tiny_imagenet, tmp_path):
    from ptqbench.analyze.app import run_analysis

    cfg = _cfg(tiny_imagenet, tmp_path, "analyze.granularity=role", "analyze.modes=[only]")
    result = run_analysis(cfg)
    prefix = tmp_path / "analysis" / "deit_tiny-minmax-w4a4-role"
    md = prefix.with_name(prefix.name + ".md").read_text()
    assert "| unit | quantizers | only_top1 | only_drop | only_sqnr_db |" in md and "| post_softmax | 6 |" in md
    data = json.loads(prefix.with_name(prefix.name + ".json").read_text())
    assert len(data["rows"]) == len(result.frame) >= 9 and data["attrs"]["images"] == 4
    assert len(data["layer_sqnr"]["layers"]) == 38  # patch embedding, 6 blocks x 6, head
    assert prefix.with_name(prefix.name + ".png").stat().st_size > 0


@pytest.mark.parametrize("override,match", [("analyze.granularity=block", "analyze.granularity"),
                                            ("data.eval_limit=null", "data.eval_limit"),
                                            ("method=fp", "method=fp"), ("analyze.modes=[]", "analyze.modes")])
def test_bad_options_are_refused_before_work(tiny_imagenet, tmp_path, override, match):
    from ptqbench.analyze.app import check_config

    with pytest.raises(ConfigError, match=match):
        check_config(_cfg(tiny_imagenet, tmp_path, override))


def test_layer_sqnr_plot_from_records(tmp_path):
    qm, _, _ = _setup()
    layers = measure_layer_sqnr(qm.model, IMAGES[:4]).as_record()
    recs = [{"status": "ok", "config": {"model": {"name": "deit_tiny"}, "method": {"name": m}},
             "bits": {"name": "w3a3"}, "layer_sqnr": layers} for m in ("minmax", "repq")]
    out = plot_layer_sqnr(recs, tmp_path / "sqnr")
    assert [p.suffix for p in out] == [".png", ".pdf"] and out[0].stat().st_size > 10_000
    assert plot_layer_sqnr([{"status": "ok", "config": {}, "bits": {}}], tmp_path / "none") is None
