import pytest
import timm
import torch

from ptqbench.errors import WeightsError
from ptqbench.models import create_model, model_entry


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    other = timm.create_model("vit_small_patch16_224", pretrained=False)
    path = tmp_path / "vit_small.pth"
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(WeightsError, match=r"does not match model deit_tiny_patch16_224.*shape mismatches"):
        create_model(model_entry("deit_tiny"), checkpoint=str(path))


def test_partial_checkpoint_is_refused(tmp_path):
    sd = timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict()
    sd.pop("head.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"missing keys: head.weight.*unexpected keys: extra.weight"):
        create_model(model_entry("deit_tiny"), checkpoint=str(path))


def test_explicit_checkpoint_loads_exactly(tmp_path):
    torch.manual_seed(1)
    src = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "ok.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    model, info = create_model(model_entry("deit_tiny"), checkpoint=str(path))
    assert info["source"] == "checkpoint"
    assert torch.equal(model.state_dict()["head.weight"], src.state_dict()["head.weight"])


def test_no_weights_anywhere_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("PTQBENCH_DATA", str(tmp_path / "nodata"))
    monkeypatch.delenv("PTQBENCH_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match=r"no weights for deit_tiny_patch16_224.fb_in1k.*nodata/weights.*model.checkpoint"):
        create_model(model_entry("deit_tiny"), weights_dir=str(tmp_path / "mine"), allow_download=False)


def test_local_weights_folder_is_searched(shared_data):
    model, info = create_model(model_entry("deit_tiny"), allow_download=False)
    assert info["source"] == "local" and info["path"].endswith("deit_tiny_patch16_224.safetensors")
    assert sum(p.numel() for p in model.parameters()) == 5_717_416


def test_unknown_model_lists_choices():
    from ptqbench.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown model 'vit_huge'.*deit_tiny"):
        model_entry("vit_huge")
