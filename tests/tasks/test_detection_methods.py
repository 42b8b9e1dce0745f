"""Every method on mmdet Swin detectors: the backbone's units, and each method's distance to FP.

No detector checkpoint exists offline, so the methods run on random weights and the check is the
distance of each part of the quantized detector to the FP one on fixed inputs
(ptqbench.tasks.detection_outputs: FPN levels, RPN maps, RoI box and mask heads on the FP
detector's proposals), worst SQNR in dB: W8A8 close, W4A4 further. The default run uses a tiny Mask
R-CNN Swin (the real config, narrow and shallow, see `_tiny_cfg`) at 128 x 96; the same check on
the real Mask R-CNN Swin-T is `slow`.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import compose_config

from ptqbench.paths import data_root

HAS_MMDET = all(importlib.util.find_spec(m) is not None for m in ("mmdet", "mmcv", "mmengine"))
pytestmark = pytest.mark.skipif(not HAS_MMDET, reason="mmdet/mmcv not installed: run `bash scripts/install_det.sh`")

# the iteration knobs of each method at their smallest useful values (reconstruction 2 steps per
# unit; PTQ4ViT's and TSPTQ-ViT's Hessian search 8 candidates x 1 round: the released grid then
# reaches 1.05 x max, with 2 candidates only 0.6 x max); min-max calibration ranges where a method
# would search them (that does not change what is checked here and costs most of the time)
FAST = {"weight_search": "minmax", "act_search": "minmax"}
SEARCH = {"search_candidates": 8, "search_rounds": 1}
METHODS: dict[str, dict[str, Any]] = {
    "minmax": {}, "percentile": {}, "repq": FAST, "tsptq": {**FAST, **SEARCH}, "gptq": FAST,
    "erq": {**FAST, "refine_steps": 10},
    "ptq4vit": SEARCH,
    "dopq": {**FAST, "iters": 2, "batch_size": 2, "progress": False},
    "ias": {**FAST, "iters": 2, "batch_size": 2, "progress": False},
    "aiq": {**FAST, "iters": 2, "batch_size": 2, "progress": False},
    "qdrop": {"iters": 2, "batch_size": 2, "grid_candidates": 32, "grid_rounds": 1, "progress": False},
    "brecq": {"iters": 2, "batch_size": 2, "grid_candidates": 32, "grid_rounds": 1, "progress": False},
}
TINY_SCALE = (128, 96)


def _coco_tiny() -> Path:
    root = data_root() / "coco-tiny"
    if not (root / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"coco-tiny not found at {root}; export PTQBENCH_DATA=/path/to/shared/data")
    return root


def _tiny_cfg():
    """Mask R-CNN Swin-T's config, narrow (32 channels) and shallow (2-1-1-1 blocks: one shifted
    block), so a forward takes milliseconds; every part and every layer kind is still there."""
    from ptqbench.models.detectors import detector_entry, load_config, set_test_cfg

    cfg = load_config(detector_entry("mask_rcnn_swin_t"))
    set_test_cfg(cfg, 0.0, 10)
    m = cfg.model
    m.test_cfg.rpn.update(nms_pre=200, max_per_img=100)
    m.backbone.update(embed_dims=32, depths=[2, 1, 1, 1], num_heads=[1, 2, 4, 8])
    m.neck.update(in_channels=[32, 64, 128, 256], out_channels=32)
    m.rpn_head.update(in_channels=32, feat_channels=32)
    m.roi_head.bbox_roi_extractor.out_channels = 32
    m.roi_head.bbox_head.update(in_channels=32, fc_out_channels=64)
    m.roi_head.mask_roi_extractor.out_channels = 32
    m.roi_head.mask_head.update(in_channels=32, conv_out_channels=32)
    return cfg


class Bench:
    """A random FP detector, 2 calibration images (train2017), 2 probe images (val2017), the FP
    detector's proposals on them and its part outputs there."""

    def __init__(self, cfg: Any, scale: tuple[int, int], calib_size: int = 2) -> None:
        from mmengine.dataset import pseudo_collate

        from ptqbench.data.coco import build_dataset, calibration_batch, coco_dataset_cfg, test_pipeline
        from ptqbench.models.detectors import build_detector
        from ptqbench.tasks.detection_outputs import fixed_rois, part_outputs

        root = _coco_tiny()
        self.fp = build_detector("mask_rcnn_swin_t", cfg, None, False, False, 0)[0]
        pipe = test_pipeline(cfg, scale, annotations=False)
        self.calib, self.calib_ids = calibration_batch(root, "train2017", pipe, calib_size, 0)
        val = build_dataset(coco_dataset_cfg(root, "val2017", pipe))
        self.batch = pseudo_collate([val[0], val[1]])
        self.rois = fixed_rois(self.fp, self.batch, per_image=50)
        self.ref = part_outputs(self.fp, self.batch, self.rois)

    def quantize(self, name: str, options: dict[str, Any], bits: Any) -> tuple[Any, dict[str, Any], dict[str, float]]:
        """(the QuantizedModel, the method's stats, worst SQNR per part) of method `name` at `bits`."""
        from ptqbench.methods import build_method
        from ptqbench.models import make_quantizable
        from ptqbench.tasks.detection import DetectorForward, check_calibrated
        from ptqbench.tasks.detection_outputs import distances, part_outputs

        det = copy.deepcopy(self.fp)
        method = build_method({"name": name, **options}, bits)
        qm = make_quantizable(DetectorForward(det), method.plan())
        stats = method.quantize(qm, self.calib)
        check_calibrated(qm.model)
        return qm, stats, distances(part_outputs(det, self.batch, self.rois), self.ref)


@pytest.fixture(scope="module")
def tiny() -> Bench:
    return Bench(_tiny_cfg(), TINY_SCALE)


def test_units_are_the_backbone_chain_and_reproduce_its_stage_outputs(tiny):
    """Patch embedding, every SwinBlock, every PatchMerging, in forward order, on [B, h, w, C]
    tokens: run in order on the preprocessed calibration batch, each stage's last block gives that
    stage's output exactly (what the backbone's norm_i reads), and the last unit the last stage's."""
    from ptqbench.models.families import family_of
    from ptqbench.models.structure import BLOCK, DOWNSAMPLE, EMBED
    from ptqbench.tasks.detection import DetectorForward

    model = DetectorForward(tiny.fp)
    family = family_of(model)
    units = family.units(model)
    assert [u.kind for u in units] == [EMBED, BLOCK, BLOCK, DOWNSAMPLE, BLOCK, DOWNSAMPLE, BLOCK, DOWNSAMPLE, BLOCK]
    assert units[0].name == "detector.backbone.patch_embed" and units[3].name == "detector.backbone.stages.0.downsample"
    x = family.unit_input(model, tiny.calib)
    assert x.shape[:2] == (2, 3) and x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0  # one padded size
    bb = tiny.fp.backbone
    stage_outs: list[torch.Tensor] = []
    hooks = [s.register_forward_hook(lambda _m, _a, out: stage_outs.append(out[2])) for s in bb.stages]
    with torch.no_grad():
        bb(x)
        for h in hooks:
            h.remove()
        h = x
        ends = []
        for u in units:
            if u.kind == DOWNSAMPLE:
                ends.append(h)
            h = u.forward(h)
        ends.append(h)
    for end, ref in zip(ends, stage_outs, strict=True):
        assert torch.equal(end.reshape(ref.shape), ref)
    # a subset of the images is again a valid unit input (reconstruction samples batches)
    with torch.no_grad():
        assert torch.equal(units[1].forward(units[0].forward(x[1:])), units[1].forward(units[0].forward(x))[1:])


def test_real_swin_t_has_a_unit_per_block_and_patch_merging():
    from ptqbench.models.detectors import build_detector, detector_entry, load_config
    from ptqbench.models.families import family_of
    from ptqbench.models.structure import BLOCK, DOWNSAMPLE, EMBED
    from ptqbench.tasks.detection import DetectorForward

    det = build_detector("mask_rcnn_swin_t", load_config(detector_entry("mask_rcnn_swin_t")), None, False, False, 0)[0]
    model = DetectorForward(det)
    kinds = [u.kind for u in family_of(model).units(model)]
    assert (kinds.count(EMBED), kinds.count(BLOCK), kinds.count(DOWNSAMPLE), len(kinds)) == (1, 12, 3, 16)


def _check_close(name: str, d8: dict[str, float], d4: dict[str, float], min_w8a8_db: float) -> None:
    """W8A8 close to FP in every part; W4A4 further in the FPN levels (3 dB: twice the noise power)
    and the RPN maps (6 dB). Measured on the tiny detector: W8A8 worst part 13.9-26.9 dB, W4A4
    FPN 6.2-23.4 dB below W8A8 and RPN 11.1-24.5 dB below (docs/detection.md has Swin-T's)."""
    assert min(d8.values()) > min_w8a8_db, (name, d8)
    assert d4["fpn"] < d8["fpn"] - 3 and d4["rpn"] < d8["rpn"] - 6, (name, d8, d4)


@pytest.mark.data
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_on_a_detector_w8a8_close_w4a4_further(tiny, name):
    from ptqbench.methods import Bits

    qm8, stats, d8 = tiny.quantize(name, METHODS[name], Bits(8, 8))
    _, _, d4 = tiny.quantize(name, METHODS[name], Bits(4, 4))
    _check_close(name, d8, d4, min_w8a8_db=10.0)
    if name in ("gptq", "erq"):  # the backbone is solved; the neck and heads get their weights rounded
        # FPN 4 lateral + 4 output convs, RPN 3 convs, RoI box head 4 Linears, mask head 4 convs + logits
        assert stats["weights_fitted_outside_units"] == 8 + 3 + 4 + 5
    if name == "ptq4vit":
        assert stats["searched_layers"] > 0
    if name in ("aiq", "qdrop", "brecq"):
        assert stats["recon_units"] == 9
    if name in ("dopq", "ias"):  # I&S-ViT's two training stages
        assert stats["stage_one_recon_units"] == stats["stage_three_recon_units"] == 9
    if name in ("qdrop", "brecq"):
        assert stats["searched_matmuls"] > 0 and stats["reparameterized_pairs"] > 0


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_on_mask_rcnn_swin_t_w8a8_close_w4a4_further(name):
    """The same on the real Mask R-CNN Swin-T (random weights) at 256 x 160 (minutes per method on a CPU)."""
    from ptqbench.methods import Bits
    from ptqbench.models.detectors import detector_entry, load_config, set_test_cfg

    cfg = load_config(detector_entry("mask_rcnn_swin_t"))
    set_test_cfg(cfg, 0.0, 20)
    bench = _real_bench(cfg)
    _, _, d8 = bench.quantize(name, METHODS[name], Bits(8, 8))
    _, _, d4 = bench.quantize(name, METHODS[name], Bits(4, 4))
    _check_close(name, d8, d4, min_w8a8_db=10.0)


_REAL: dict[str, Bench] = {}


def _real_bench(cfg: Any) -> Bench:
    if "swin_t" not in _REAL:
        _REAL["swin_t"] = Bench(cfg, (256, 160))
    return _REAL["swin_t"]


def test_detection_calibrates_on_train2017_and_evaluates_on_val2017():
    """The task's calibration images are train2017 images and its evaluation images val2017 ones
    (disjoint), and calibrating on the evaluation split is refused before any work."""
    import json

    from ptqbench.config import job_settings
    from ptqbench.errors import ConfigError
    from ptqbench.tasks.base import BuiltModel
    from ptqbench.tasks.detection import Detection
    from ptqbench.validate import validate_config

    root = _coco_tiny()
    cfg = compose_config("task=detection", "model=mask_rcnn_swin_t", "method=minmax", f"data.coco_root={root}",
                         "model.pretrained=false", "calib.size=3", "data.eval_limit=4", "data.scale=[128,96]",
                         "data.workers=0")
    settings = job_settings(cfg)
    task = Detection()
    data = task.open_data(settings, None)
    assert (data.calib_folder, data.val_folder) == ("train2017", "val2017")
    model = BuiltModel(torch.nn.Identity(), torch.device("cpu"), "", {}, context=_tiny_cfg())
    calib = task.calibration_data(settings, data, model, None)
    evald = task.evaluation_data(settings, data, model, Path("/tmp"))
    ids = {split: {im["id"] for im in json.loads((root / "annotations" / f"instances_{split}.json").read_text())["images"]}
           for split in ("train2017", "val2017")}
    assert calib.split == "train2017" and len(calib.ids) == 3 and set(calib.ids) <= ids["train2017"]
    assert len(evald.ids) == 4 and {int(i) for i in evald.ids} <= ids["val2017"]
    assert not set(calib.ids) & {int(i) for i in evald.ids}
    assert all(s.img_path.startswith(str(root / "train2017")) for s in calib.inputs["data_samples"])
    assert evald.fields["split"] == "val2017"
    with pytest.raises(ConfigError, match="calib.split"):
        validate_config(compose_config("task=detection", "model=mask_rcnn_swin_t", "method=minmax",
                                       f"data.coco_root={root}", "model.pretrained=false", "calib.split=val"))
