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


def test_text_file_as_checkpoint_says_what_it_is(tmp_path):
    """A Git LFS pointer saved as .pth said `KeyError: 101`."""
    path = tmp_path / "deit_tiny.pth"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 22884434\n")
    with pytest.raises(WeightsError, match=rf"{path} is a text file \(text starting 'version https://git-lfs.github.com/spec/v1'\), "
                                           r"not saved weights: a Git LFS pointer or a web page .*Fix: model.checkpoint=PATH"):
        create_model(model_entry("deit_tiny"), checkpoint=str(path))


def test_directory_or_empty_file_as_checkpoint(tmp_path):
    """A directory was reported as "does not exist"."""
    (tmp_path / "deit_tiny.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match=rf"{tmp_path} is a directory, not a weights file \(it holds deit_tiny.safetensors: "
                                           rf"give one of them, e.g. {tmp_path}/deit_tiny.safetensors\)"):
        create_model(model_entry("deit_tiny"), checkpoint=str(tmp_path))
    with pytest.raises(WeightsError, match=r"deit_tiny.safetensors is empty \(0 bytes; an interrupted download or copy\?\)"):
        create_model(model_entry("deit_tiny"), checkpoint=str(tmp_path / "deit_tiny.safetensors"))
    with pytest.raises(WeightsError, match=r"nope.pth does not exist"):
        create_model(model_entry("deit_tiny"), checkpoint=str(tmp_path / "nope.pth"))


def test_truncated_checkpoint_says_damaged(tmp_path):
    src = tmp_path / "full.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), src)
    path = tmp_path / "cut.pth"
    path.write_bytes(src.read_bytes()[:4096])
    with pytest.raises(WeightsError, match=rf"{path} looks like a torch zip file but does not load \(truncated or damaged\? replace it\)"):
        create_model(model_entry("deit_tiny"), checkpoint=str(path))
