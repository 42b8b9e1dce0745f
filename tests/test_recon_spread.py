"""docs/anchors/common/recon_spread.py: where it cuts a method's steps (calibrated once before the
cut, rerun per `method.recon_seed` after it). I&S-ViT seeds both of its stages, so its cut has to
come before stage one; APHQ-ViT's MLP stage stays before the cut."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ptqbench.methods.steps import Reconstruct, ReluMLPReconstruct, walk_steps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "anchors" / "common"))
from recon_spread import load_mlp_weights, split_steps  # noqa: E402
from tests.conftest import make_tiny_vit  # noqa: E402

JOB = ["bits=w4a4", "method.iters=10", "calib.size=4"]


def _seeds(steps: list) -> list[int]:
    return [s.cfg.seed for s in walk_steps(steps) if isinstance(s, Reconstruct)]


def test_ias_cut_comes_before_stage_one_and_reseeds_both_stages() -> None:
    before, after = split_steps(["method=ias", *JOB], "ias", 5)
    assert not _seeds(before)
    base = split_steps(["method=ias", *JOB], "ias", 0)[1]
    assert len(_seeds(after)) == 2 and [s - 5 for s in _seeds(after)] == _seeds(base)


@pytest.mark.parametrize("name", ["qdrop", "brecq", "fimaq", "aphq"])
def test_single_reconstruction_methods_rerun_only_their_reconstruction(name: str) -> None:
    before, after = split_steps([f"method={name}", *JOB], name, 3)
    assert len(after) == 1 and isinstance(after[0], Reconstruct) and after[0].cfg.seed == 3
    job_before = split_steps([f"method={name}", *JOB], name, None)[0]
    # APHQ-ViT's MLP stage is seeded by recon_seed too: the script runs the job's, once, before the cut
    assert (before == job_before) == (name != "aphq")
    assert any(isinstance(s, ReluMLPReconstruct) for s in walk_steps(job_before)) == (name == "aphq")
    if name == "aphq":  # the teacher is taken first, as the method's WithFPTeacher takes it (timm attention)
        from ptqbench.methods.steps import WithFPTeacher

        assert job_before[0] == ("teacher", WithFPTeacher((), timm_attention=True))


def test_a_method_without_reconstruction_is_refused() -> None:
    with pytest.raises(SystemExit, match="no Reconstruct step"):
        split_steps(["method=repq", "bits=w4a4"], "repq", None)


def test_mlp_weights_replace_fc1_fc2_only_and_refuse_other_differences(tmp_path: Path) -> None:
    """--mlp-weights copies every block's fc1/fc2 from the release's MLP stage, and refuses a state
    dict whose other weights are not the model's (another checkpoint, another model)."""
    model, released = make_tiny_vit(seed=0), make_tiny_vit(seed=0).state_dict()
    for name in released:
        if ".mlp.fc" in name:
            released[name] = released[name] + 1.0
    torch.save(released, tmp_path / "mlp.pth")
    assert load_mlp_weights(model, str(tmp_path / "mlp.pth")) == 8  # 2 blocks x fc1, fc2 x weight, bias
    assert all(torch.equal(v, released[k]) for k, v in model.state_dict().items())
    released["blocks.0.norm1.weight"] = released["blocks.0.norm1.weight"] * 2
    torch.save(released, tmp_path / "other.pth")
    with pytest.raises(SystemExit, match="outside the MLPs differ"):
        load_mlp_weights(make_tiny_vit(seed=0), str(tmp_path / "other.pth"))
