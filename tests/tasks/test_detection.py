"""task=detection: mmdet detectors with a Swin backbone, patched by the one adapter, evaluated with
CocoMetric through mmengine's Runner.

No detection checkpoint exists offline, so these run a randomly initialised Mask R-CNN Swin-T at a
reduced input scale: they check the pipeline (patching, calibration, evaluation, records), the
metric (ground truth scores 1.0), and that quantization acts; not accuracy. Building a detector
costs seconds on a CPU, so tests that only need an FP one copy the module's (`fp_detector`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tests.conftest import run_cli

from ptqbench.errors import ConfigError
from ptqbench.paths import data_root, data_root_origin

HAS_MMDET = all(importlib.util.find_spec(m) is not None for m in ("mmdet", "mmcv", "mmengine"))
needs_mmdet = pytest.mark.skipif(not HAS_MMDET, reason="mmdet/mmcv not installed: run `bash scripts/install_det.sh`")
SCALE = (256, 160)  # test Resize (long, short): a few hundred tokens per image, seconds per forward
TINY = ["model.pretrained=false", "task.score_thr=0", "task.max_per_img=20", f"data.scale=[{SCALE[0]},{SCALE[1]}]"]
# in-process jobs that only check the pipeline: smaller still, no data-loader processes
TINY_FAST = ["model.pretrained=false", "task.score_thr=0", "task.max_per_img=5", "data.scale=[192,128]", "data.workers=0"]

# Mask R-CNN Swin-T, counted from the architecture: backbone Linears 12 blocks x (qkv, proj, fc1,
# fc2) + 3 PatchMerging reductions = 51; RoI box head 2 shared fcs + fc_cls + fc_reg = 4. Conv2d:
# patch embedding 1, FPN 4 lateral + 4 output, RPN 3 (conv, cls, reg), mask head 4 convs + logits;
# the mask head's ConvTranspose2d stays FP. Attention: 2 matmuls in each of the 12 blocks.
EXPECTED_ALL = {"QuantLinear": 55, "QuantConv2d": 17, "QuantMatMul": 24}
EXPECTED_BACKBONE = {"QuantLinear": 51, "QuantConv2d": 1, "QuantMatMul": 24}
REPARAM_PAIRS = 12 * 2 + 3  # norm1 -> qkv and norm2 -> fc1 per block, norm -> reduction per PatchMerging


@pytest.fixture(scope="session")
def coco_tiny() -> Path:
    root = data_root() / "coco-tiny"
    if not (root / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"coco-tiny not found at {root} ({data_root_origin()}); export PTQBENCH_DATA=/path/to/shared/data")
    return root


def _mm_cfg(score_thr: float = 0.0):
    from ptqbench.models.detectors import detector_entry, load_config, set_test_cfg

    cfg = load_config(detector_entry("mask_rcnn_swin_t"))
    set_test_cfg(cfg, score_thr, 20)
    return cfg


def _random_detector(cfg=None):
    from ptqbench.models.detectors import build_detector

    return build_detector("mask_rcnn_swin_t", cfg or _mm_cfg(), None, pretrained=False, unsafe_load=False, seed=0)[0]


@pytest.fixture(scope="module")
def fp_detector():
    """One random Mask R-CNN Swin-T (score_thr 0, 20 per image) for the module; tests that patch
    or quantize take a deep copy."""
    if not HAS_MMDET:
        pytest.skip("mmdet/mmcv not installed: run `bash scripts/install_det.sh`")
    return _random_detector()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_missing_mmdet_names_the_install_script(monkeypatch):
    from ptqbench.models import detectors

    real = importlib.util.find_spec
    monkeypatch.setattr(detectors.importlib.util, "find_spec", lambda name, *a: None if name == "mmdet" else real(name, *a))
    with pytest.raises(ConfigError, match="scripts/install_det.sh"):
        detectors.require_mmdet()


@needs_mmdet
def test_adapter_patches_every_conv_and_linear_of_the_detector(fp_detector):
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable
    from ptqbench.models.mmdet_swin import QuantWindowMSA
    from ptqbench.quant import roles
    from ptqbench.tasks.detection import SCOPES, DetectorForward

    plan = build_method({"name": "repq"}, Bits(4, 4)).plan()
    qm = make_quantizable(DetectorForward(copy.deepcopy(fp_detector)), plan, scope=SCOPES["all"])
    counts = qm.counts()
    assert {k: counts[k] for k in EXPECTED_ALL} == EXPECTED_ALL
    assert len(qm.reparam_pairs) == REPARAM_PAIRS
    assert sum(isinstance(m, QuantWindowMSA) for m in qm.model.modules()) == 12
    # norm1 -> qkv pairs sit behind ShiftWindowMSA's padding; norm2 -> fc1 and PatchMerging do not
    padded = {p.name for p in qm.reparam_pairs if p.pad_site is not None}
    assert len(padded) == 12 and all(n.endswith(".norm1") for n in padded)
    assert counts["quantizers.post_softmax"] == 12 and counts["quantizers.patch_in"] == 1
    lr = qm.linear_roles
    blk = "detector.backbone.stages.0.blocks.0"
    assert lr[f"{blk}.attn.w_msa.qkv"] == roles.POST_LN and lr[f"{blk}.attn.w_msa.proj"] == roles.ATTN_OUT
    assert lr[f"{blk}.ffn.layers.0.0"] == roles.POST_LN and lr[f"{blk}.ffn.layers.1"] == roles.POST_GELU
    assert lr["detector.backbone.stages.0.downsample.reduction"] == roles.POST_LN
    assert lr["detector.roi_head.bbox_head.fc_cls"] == roles.OTHER_IN

    qb = make_quantizable(DetectorForward(copy.deepcopy(fp_detector)), plan, scope=SCOPES["backbone"])
    cb = qb.counts()
    assert {k: cb[k] for k in EXPECTED_BACKBONE} == EXPECTED_BACKBONE
    assert len(qb.reparam_pairs) == REPARAM_PAIRS
    assert type(qb.model.detector.neck.lateral_convs[0].conv).__name__ != "QuantConv2d"


@needs_mmdet
def test_checkpoint_loads_strictly_and_a_mismatch_names_the_keys(tmp_path, fp_detector):
    from ptqbench.errors import WeightsError
    from ptqbench.models import state_fingerprint
    from ptqbench.models.detectors import build_detector

    src = fp_detector
    sd = src.state_dict()
    torch.save({"state_dict": sd, "meta": {"epoch": 36}}, tmp_path / "ok.pth")
    model, info = build_detector("mask_rcnn_swin_t", _mm_cfg(), str(tmp_path / "ok.pth"), True, False, seed=1)
    assert info["source"] == "checkpoint" and state_fingerprint(model) == state_fingerprint(src)
    bad = {k: v for k, v in sd.items() if not k.startswith("roi_head.mask_head")}
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="missing keys: roi_head.mask_head"):
        build_detector("mask_rcnn_swin_t", _mm_cfg(), str(tmp_path / "bad.pth"), True, False, seed=1)
    with pytest.raises(WeightsError, match="model.checkpoint="):
        build_detector("mask_rcnn_swin_t", _mm_cfg(), None, True, False, seed=1)


@needs_mmdet
@pytest.mark.data
def test_ground_truth_through_the_metric_scores_one(coco_tiny):
    """The evaluator of every detection job, fed the val annotations (as mmdet's dataset parses
    them) as predictions, gives box and mask mAP 1.0; dropping half of them does not."""
    import numpy as np
    from mmdet.registry import METRICS
    from mmdet.structures.mask import PolygonMasks

    from ptqbench.data.coco import build_dataset, coco_dataset_cfg, split_paths
    from ptqbench.tasks.detection import evaluator_cfg

    ds = build_dataset(coco_dataset_cfg(coco_tiny, "val2017", []))
    samples = []
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        inst = [x for x in info["instances"] if not x["ignore_flag"]]
        h, w = info["height"], info["width"]
        masks = PolygonMasks([[np.asarray(p, np.float64) for p in x["mask"]] for x in inst], h, w).to_ndarray() if inst else np.zeros((0, h, w), np.uint8)
        samples.append({"img_id": info["img_id"], "ori_shape": (h, w), "pred_instances": {
            "bboxes": torch.tensor([x["bbox"] for x in inst], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([x["bbox_label"] for x in inst], dtype=torch.long),
            "scores": torch.ones(len(inst)),
            "masks": torch.from_numpy(masks).bool()}})
    ann, _ = split_paths(coco_tiny, "val2017")

    def score(preds: list[dict]) -> dict[str, float]:
        metric = METRICS.build(evaluator_cfg(ann))
        metric.dataset_meta = ds.metainfo
        metric.process({}, preds)
        return metric.evaluate(len(preds))

    m = score(samples)
    assert m["coco/bbox_mAP"] == pytest.approx(1.0, abs=1e-3) and m["coco/segm_mAP"] == pytest.approx(1.0, abs=1e-3), m
    half = [{**s, "pred_instances": {k: v[::2] for k, v in s["pred_instances"].items()}} for s in samples]
    m2 = score(half)
    assert m2["coco/bbox_mAP"] < 0.8 and m2["coco/segm_mAP"] < 0.8, m2


@needs_mmdet
@pytest.mark.data
def test_w8a8_is_close_to_fp_and_w4a4_is_not(coco_tiny, fp_detector):
    """Relative error of the FPN features of two val images: small at W8A8, several times larger at
    W4A4 (min-max, every Conv2d and Linear quantized, 4 calibration images from train2017).

    Min-max, not RepQ-ViT: on these random weights RepQ-ViT's W8A8 error is about twice min-max's,
    at inputs that pad the Swin windows and at inputs that do not, mostly from the reparameterization
    (`python scripts/det_quant_error.py w8a8`, 2 val images, FPN relative error: minmax
    0.026-0.033; repq 0.052-0.079; repq reparam=false 0.035-0.049; repq with the released zero
    padding, exact_padding=false, 0.088-0.14 where the windows pad). Padding itself is checked in
    test_reparameterized_detector_with_quantizers_off_is_the_fp_detector."""
    from mmengine.dataset import pseudo_collate

    from ptqbench.data.coco import build_dataset, calibration_batch, coco_dataset_cfg, test_pipeline
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable
    from ptqbench.tasks.detection import DetectorForward, check_calibrated

    cfg = _mm_cfg()
    pipe = test_pipeline(cfg, SCALE, annotations=False)
    calib, ids = calibration_batch(coco_tiny, "train2017", pipe, 4, 0)
    assert len(set(ids)) == 4
    val = build_dataset(coco_dataset_cfg(coco_tiny, "val2017", pipe))
    batch = pseudo_collate([val[0], val[1]])

    def features(det) -> list[torch.Tensor]:
        with torch.no_grad():
            data = det.data_preprocessor(batch, False)
            return [f.clone() for f in det.extract_feat(data["inputs"])]

    fp = features(fp_detector)
    err = {}
    for bits in (Bits(8, 8), Bits(4, 4)):
        det = copy.deepcopy(fp_detector)
        method = build_method({"name": "minmax"}, bits)
        qm = make_quantizable(DetectorForward(det), method.plan())
        stats = method.quantize(qm, calib)
        check_calibrated(qm.model)
        assert stats["calibrated_quantizers"] == len(qm.quantizer_map())
        q = features(det)
        err[bits.name] = max(float((a - b).norm() / b.norm()) for a, b in zip(q, fp))
    assert err["w8a8"] < 0.05, err
    assert err["w4a4"] > 0.15 and err["w4a4"] > 5 * err["w8a8"], err


@needs_mmdet
@pytest.mark.data
def test_job_end_to_end_records_box_and_mask_ap_refuses_full_quant_and_skips_when_rerun(coco_tiny, tmp_path):
    """In process (a sweep's exit status and end report are tests/test_cli.py's part): repq runs,
    quant.full=true is refused with its reason before any work and records nothing, a rerun skips
    the finished job."""
    from ptqbench.run import run_job

    base = ["task=detection", "model=mask_rcnn_swin_t", "bits=w4a4", f"data.coco_root={coco_tiny}",
            "data.eval_limit=4", "calib.size=2", "logger=none", f"results_dir={tmp_path}", *TINY]
    with pytest.raises(ConfigError, match="quant.full=true: the fully quantized roles exist for timm classifiers only"):
        run_job(_compose([*base, "method=repq", "quant.full=true"]))
    assert not list(tmp_path.glob("runs/*.json"))  # refused by the config check: no record (docs/reliability.md)
    ok = run_job(_compose([*base, "method=repq"]))
    assert ok["status"] == "ok", ok.get("traceback")
    m = ok["metrics"]
    for key in ("coco/bbox_mAP", "coco/segm_mAP", "coco/bbox_mAP_50", "coco/bbox_mAP_75", "coco/segm_mAP_50",
                "fp_coco/bbox_mAP", "fp_coco/segm_mAP"):
        assert 0.0 <= m[key] <= 1.0, (key, m)
    assert ok["data"]["eval_images"] == 4 and ok["calibration"]["size"] == 2
    assert ok["calibration"]["split"] == "train2017"
    assert {k: ok["quantized_modules"][k] for k in EXPECTED_ALL} == EXPECTED_ALL
    assert ok["timings"]["eval_s_per_image"] > 0 and ok["fp"]["seconds_per_image"] > 0
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert [r["config"]["method"]["name"] for r in recs] == ["repq"]

    again = run_job(_compose([*base, "method=repq"]))
    assert again.get("skipped") is True and again["run_key"] == ok["run_key"]


@needs_mmdet
def test_bad_detection_configs_fail_with_the_fix(tmp_path):
    """In process: each is an error with a user message (the CLI prints it as one line and exits
    with status 2: tests/test_cli.py checks that path)."""
    from ptqbench.errors import user_message
    from ptqbench.run import run_job

    def refusal(*overrides: str) -> str:
        with pytest.raises(Exception) as e:
            run_job(_compose(["logger=none", f"results_dir={tmp_path}", *overrides]))
        msg = user_message(e.value)
        assert msg is not None, repr(e.value)
        return msg

    out = refusal("task=detection", "data.coco_root=/nonexistent/coco", *TINY)
    assert "data.coco_root" in out and "/nonexistent/coco" in out, out
    assert "task=detection takes one of" in refusal("task=detection", "model=deit_tiny")
    assert "run it with task=detection" in refusal("model=mask_rcnn_swin_t")


@needs_mmdet
def test_missing_checkpoint_is_reported_before_the_detector_is_built(tmp_path, monkeypatch, coco_tiny):
    """A wrong model.checkpoint (or none found in the weights folders) stops the job before the
    detector is built, and does not suggest model.unsafe_load (which cannot help)."""
    from ptqbench.errors import WeightsError
    from ptqbench.models import detectors
    from ptqbench.config import job_settings
    from ptqbench.pipeline import execute

    def no_build(*args, **kwargs):
        raise AssertionError("the detector was built before the checkpoint was checked")

    monkeypatch.setattr(detectors, "build_detector", no_build)
    monkeypatch.setenv("PTQBENCH_WEIGHTS", str(tmp_path))
    base = ["task=detection", "model=mask_rcnn_swin_t", f"data.coco_root={coco_tiny}", "logger=none",
            f"results_dir={tmp_path}", f"model.weights_dir={tmp_path}"]
    with pytest.raises(WeightsError, match="no such file") as e:
        execute(job_settings(_compose([*base, f"model.checkpoint={tmp_path / 'missing.pth'}"])), tmp_path)
    assert "unsafe_load" not in str(e.value)
    with pytest.raises(WeightsError, match="needs a checkpoint") as e:
        execute(job_settings(_compose(base)), tmp_path)
    assert "unsafe_load" not in str(e.value)


@needs_mmdet
@pytest.mark.data
def test_sweep_jobs_in_one_process_each_build_a_detector(coco_tiny, tmp_path):
    """A three-job sweep through the CLI (Hydra's launcher runs the jobs one after the other in one
    process and reconfigures logging for each job, which closes every open log handler), each job
    building a detector after the previous job's evaluation Runner is gone: all succeed, without
    mmengine's per-parameter "Initialized by" log, and the records name the detection libraries'
    versions. A subprocess because Hydra's per-job logging setup is part of what is tested."""
    from importlib import metadata

    r = run_cli("-m", "task=detection", "model=mask_rcnn_swin_t", "method=fp,minmax,repq", "bits=w8a8",
                f"data.coco_root={coco_tiny}", "data.eval_limit=1", "calib.size=1", "logger=none",
                f"results_dir={tmp_path}", *TINY_FAST)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    recs = {rec["config"]["method"]["name"]: rec for rec in
            (json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json"))}
    assert sorted(recs) == ["fp", "minmax", "repq"] and all(rec["status"] == "ok" for rec in recs.values())
    # the FP evaluation ran in the first job; the others read it from the cache and say so
    assert recs["fp"]["timings"]["fp_eval_timed_in"] == "this_job"
    assert recs["minmax"]["timings"]["fp_eval_timed_in"] == recs["repq"]["timings"]["fp_eval_timed_in"] == "cache"
    for dist in ("mmdet", "mmcv", "mmengine", "pycocotools"):
        assert recs["repq"]["versions"][dist] == metadata.version(dist)
    assert "Initialized by" not in out


@needs_mmdet
@pytest.mark.data
def test_cascade_mask_rcnn_job_end_to_end(coco_tiny, tmp_path):
    """Cascade Mask R-CNN (BatchNorm in its bbox heads: a 0-dim num_batches_tracked buffer in the
    weights fingerprint) quantized and evaluated."""
    from ptqbench.run import run_job

    rec = run_job(_compose(["task=detection", "model=cascade_mask_rcnn_swin_t", "method=minmax", "bits=w8a8",
                            f"data.coco_root={coco_tiny}", "data.eval_limit=1", "calib.size=1", "logger=none",
                            f"results_dir={tmp_path}", *TINY_FAST]))
    assert rec["status"] == "ok"
    assert 0.0 <= rec["metrics"]["coco/bbox_mAP"] <= 1.0 and 0.0 <= rec["metrics"]["coco/segm_mAP"] <= 1.0
    assert rec["quantized_modules"]["QuantConv2d"] > EXPECTED_ALL["QuantConv2d"]  # the 3 stages' 4 shared convs


@needs_mmdet
@pytest.mark.data
@pytest.mark.parametrize("options", [{"name": "repq"}, {"name": "dopq", "reconstruct": False}],
                         ids=["repq", "dopq_no_recon"])
def test_reparameterized_detector_with_quantizers_off_is_the_fp_detector(coco_tiny, fp_detector, options):
    """Reparameterizing methods on detectors (repq; dopq without reconstruction; erq, gptq and aiq
    reparameterize the same pairs, tests/tasks/test_detection_methods.py runs them): after quantization, with every quantizer off, the FPN levels and the RPN
    outputs equal the FP detector's at an input whose Swin feature maps are padded to the window
    (160 x 256: 40 x 64 tokens -> 42 x 70, ...) and at one that pads nothing (224 x 448)."""
    from ptqbench.data.coco import calibration_batch, test_pipeline
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable
    from ptqbench.quant.calibration import quant_disabled
    from ptqbench.tasks.detection import DetectorForward

    det = copy.deepcopy(fp_detector)
    # min-max ranges: the range search does not change what is checked, and costs most of the time
    method = build_method({**options, "weight_search": "minmax", "act_search": "minmax"}, Bits(8, 8))
    qm = make_quantizable(DetectorForward(det), method.plan())
    calib, _ = calibration_batch(coco_tiny, "train2017", test_pipeline(_mm_cfg(), SCALE, annotations=False), 1, 0)
    method.quantize(qm, calib)

    def outputs(d, x):
        feats = d.extract_feat(x)
        cls, reg = d.rpn_head(feats)
        return [*feats, *cls, *reg]

    torch.manual_seed(0)
    for h, w in ((160, 256), (224, 448)):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad(), quant_disabled(det):
            err = max(_rel(a, b) for a, b in zip(outputs(det, x), outputs(fp_detector, x)))
        assert err < 1e-4, (options, (h, w), err)
