"""Model families: the registry, a toy family end to end, and any timm ViT built from arch + tag."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.methods import Bits, build_method
from ptqbench.models import create_model, make_quantizable, model_entry
from ptqbench.models.families import FAMILIES, BaseFamily, family_of, register_family
from ptqbench.models.structure import BLOCK, HEAD, ReparamPair, Unit
from ptqbench.models.units import model_units
from ptqbench.quant import quant_disabled, roles
from ptqbench.quant.modules import QuantLinear


class ToyNet(nn.Module):
    """A LayerNorm -> Linear -> ReLU block and a head: the smallest network a family can describe."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(self.norm(x))))


class ToyFamily(BaseFamily):
    name = "toy"
    description = "tests' ToyNet"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, ToyNet)

    def linear_roles(self, model: nn.Module) -> dict[str, str]:
        return {"fc": roles.POST_LN, "head": roles.HEAD_IN}

    def reparam_pairs(self, model: nn.Module) -> list[ReparamPair]:
        return [ReparamPair("norm", model.norm, model.fc)] if isinstance(model.fc, QuantLinear) else []

    def units(self, model: nn.Module) -> list[Unit]:
        block = nn.Sequential(model.norm, model.fc, nn.ReLU())
        return [Unit("block", block, block, BLOCK), Unit("head", model.head, model.head, HEAD)]


@pytest.fixture
def toy_family():
    family = register_family(ToyFamily())
    yield family
    del FAMILIES[family.name]


def test_a_registered_toy_family_is_found_and_patched(toy_family):
    torch.manual_seed(0)
    model = ToyNet().eval()
    assert family_of(model) is toy_family
    x = torch.randn(4, 8)
    with torch.no_grad():
        fp = model(x)
    method = build_method({"name": "minmax"}, Bits(8, 8))
    qm = make_quantizable(model, method.plan())
    assert qm.family == "toy" and qm.fp_targets is None
    assert isinstance(qm.model.fc, QuantLinear) and isinstance(qm.model.head, QuantLinear)
    assert qm.linear_roles == {"fc": roles.POST_LN, "head": roles.HEAD_IN}
    assert qm.model.fc.input_quantizer.role == roles.POST_LN and qm.model.head.input_quantizer.role == roles.HEAD_IN
    assert [p.name for p in qm.reparam_pairs] == ["norm"] and qm.reparam_pairs[0].linear is qm.model.fc
    assert [u.name for u in qm.units] == ["block", "head"] and qm.units[1].module is qm.model.head  # the patched head
    method.quantize(qm, x)
    with torch.no_grad():
        y = x
        for unit in qm.units:  # the units reproduce the patched model's forward
            y = unit.forward(y)
        assert torch.equal(y, qm.model(x))
        with quant_disabled(qm.model):
            assert torch.allclose(qm.model(x), fp, atol=1e-6)
        assert 0 < (qm.model(x) - fp).abs().max() < 0.1  # W8A8 is active and close


def test_toy_family_refuses_the_fully_quantized_mode(toy_family):
    plan = build_method({"name": "minmax"}, Bits(8, 8), {"full": True, "bits": 8}).plan()
    with pytest.raises(ConfigError, match=r"family toy cannot quantize .*quant.full=false"):
        make_quantizable(ToyNet(), plan)


def test_unknown_model_names_the_registered_families():
    with pytest.raises(ConfigError, match=r"no model family knows ToyNet; registered families: timm_vit.*timm_swin.*mmdet_swin"):
        family_of(ToyNet())
    with pytest.raises(ConfigError, match="gives no units"):
        model_units(nn.Sequential())


def test_registering_twice_or_an_incomplete_family_is_refused(toy_family):
    with pytest.raises(ValueError, match="already registered"):
        register_family(ToyFamily())

    class NoName(BaseFamily):
        def matches(self, model: nn.Module) -> bool:
            return False

    with pytest.raises(ValueError, match="has no name"):
        register_family(NoName())


def test_sequential_family_gives_one_unit_per_child():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    qm = make_quantizable(model, build_method({"name": "minmax"}, Bits(8, 8)).plan())
    assert qm.family == "sequential" and [u.name for u in qm.units] == ["0", "1", "2"]
    assert qm.units[0].module is qm.model[0] and isinstance(qm.model[0], QuantLinear)


def test_vit_tiny_from_arch_and_tag_runs_through_make_quantizable():
    """model.arch/model.tag reach any timm ViT: the record names the built architecture and family."""
    entry = model_entry("deit_tiny", "vit_tiny_patch16_224", "augreg_in21k_ft_in1k")
    _, info = create_model(entry, pretrained=False)
    assert info["arch"] == "vit_tiny_patch16_224" and info["family"] == "timm_vit"
    assert info["timm_name"] == "vit_tiny_patch16_224.augreg_in21k_ft_in1k" and info["source"] == "random_init"
    torch.manual_seed(0)
    model = timm.create_model(entry.timm_name, pretrained=False, img_size=32).eval()  # a tiny input
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp = model(x)
    method = build_method({"name": "minmax"}, Bits(8, 8))
    qm = make_quantizable(model, method.plan())
    assert qm.family == "timm_vit" and len(qm.units) == 2 + len(model.blocks)
    assert sum(isinstance(m, QuantLinear) for m in qm.model.modules()) == 4 * len(model.blocks) + 1
    method.quantize(qm, x)
    with torch.no_grad():
        y = qm.model(x)
    assert y.shape == fp.shape and torch.nn.functional.cosine_similarity(y.flatten(), fp.flatten(), dim=0) > 0.9


def test_arch_outside_the_families_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="not a timm architecture"):
        model_entry("deit_tiny", "vit_nonexistent_patch16", "x")
    with pytest.raises(ConfigError, match="pretrained tag goes in model.tag"):
        model_entry("deit_tiny", "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "x")
    with pytest.raises(ConfigError, match=r"model.arch=resnet18: no model family knows ResNet"):
        model_entry("deit_tiny", "resnet18", "a1_in1k")
