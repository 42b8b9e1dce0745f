"""docs/anchors/aphq/unit_spread.py: the ptqbench side can start from the release's calibration
checkpoint, so the same-random-numbers check reaches every unit without a second 40-minute grid
search. The loader must give back exactly the calibrated model the grid search made."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ptqbench.algorithms.grid_search import search_model
from ptqbench.methods import Bits, build_method
from ptqbench.methods.steps import Calibrate
from ptqbench.models import make_quantizable
from ptqbench.quant.calibration import quantizers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "anchors" / "aphq"))
from compare_calibration import quantizer_map  # noqa: E402
from unit_spread import EVAL, load_released_calibration, merged, unit_names  # noqa: E402
from tests.conftest import make_tiny_vit  # noqa: E402


def _aphq_model():
    method = build_method({"name": "aphq", "iters": 0, "search_images": None, "progress": False,
                           "grid_rounds": 1, "grid_candidates": 32}, Bits(4, 4))
    return method, make_quantizable(make_tiny_vit(seed=0), method.plan())


def _released_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The calibrated model as the release saves it: timm's weight names, and each quantizer's
    scale and zero point under the release's module names and shapes ((1,) per tensor,
    (1, C, 1) per channel, (1, H, 1, 1) per head)."""
    sd = {n: p.detach().clone() for n, p in model.named_parameters()}
    ours = quantizers(model)
    for r, o in quantizer_map(len(model.blocks)).items():
        q = ours[o]
        shape = (1,) if q.channel_axis is None else (1, -1, 1) if q.role == "weight" else (1, -1, 1, 1)
        sd[f"{r}.scale"] = q.scale.reshape(shape).clone()
        sd[f"{r}.zero_point"] = q.zero_point.reshape(shape).clone()
    return sd


def test_released_calibration_gives_back_the_searched_model(tmp_path: Path) -> None:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    method, searched = _aphq_model()
    Calibrate()(searched, x)
    c = method.config
    search_model(searched.model, searched.units, x, c.search_config(), searched.reparam_pairs, c.exact_padding)
    torch.save(_released_layout(searched.model), tmp_path / "calib.pth")

    _, loaded = _aphq_model()
    Calibrate()(loaded, x)  # min-max: per-channel post-LN ranges, other values than the search's
    assert load_released_calibration(loaded.model, str(tmp_path / "calib.pth")) == 3 + 2 * 12  # head and patch embedding, 12 per block
    for name, q in quantizers(searched.model).items():
        other = quantizers(loaded.model)[name]
        assert q.channel_axis == other.channel_axis, name
        assert torch.equal(q.scale, other.scale) and torch.equal(q.zero_point, other.zero_point), name
    with torch.no_grad():
        assert torch.equal(searched.model(x), loaded.model(x))


def test_unit_names_cover_deit_and_refuse_more() -> None:
    assert unit_names(3) == ["patch_embed", "blocks.0", "blocks.1"]
    assert unit_names(14)[-2:] == ["blocks.11", "head"]
    with pytest.raises(SystemExit, match="14 units"):
        unit_names(15)


def test_merged_joins_runs_of_one_side_and_refuses_a_seed_twice(tmp_path: Path) -> None:
    runs = {"a": {"0@1": {"head": 1.0}, EVAL: {"calibrated": {"top1": 2.0}}},
            "b": {"1": {"head": 2.0}, EVAL: {"calibrated": {"top1": 2.0}, "1": {"top1": 9.0}}}}
    for name, res in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
    both = merged(f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}")
    assert both == {"0@1": {"head": 1.0}, "1": {"head": 2.0}, EVAL: {"calibrated": {"top1": 2.0}, "1": {"top1": 9.0}}}
    with pytest.raises(SystemExit, match="already read"):
        merged(f"{tmp_path / 'a.json'},{tmp_path / 'a.json'}")
