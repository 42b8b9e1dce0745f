"""The method registry: every method carries what the report prints about it, builds and runs
from its name alone, and a method defined in a module of its own registers by being imported."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tests.conftest import make_tiny_vit

import ptqbench.methods
from ptqbench.methods import METHODS, Bits, Method, build_method, register_method
from ptqbench.models import make_quantizable
from ptqbench.quant.calibration import quant_disabled, quantizers
from ptqbench.report import names

BUILTIN = sorted(METHODS)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_method_carries_its_display_name_citation_and_paper(name):
    info = METHODS[name].info
    assert info.display.strip()
    assert isinstance(info.cite, str) and (info.paper is None or info.paper.strip())
    assert names.METHODS[name] == info.display
    assert names.CITATIONS.get(name, "") == info.cite
    assert names.OWN_PAPER.get(name) == info.paper


@pytest.mark.parametrize("name", BUILTIN)
def test_every_method_builds_at_w4a4(name):
    method = build_method({"name": name}, Bits(4, 4))
    assert dataclasses.is_dataclass(method.config) and method.name == name
    plan = method.plan()
    assert (plan is None) == (name == "fp")
    assert all(callable(step) for step in method.steps())


def _fast(name: str) -> dict:
    """Options that shorten a method's training loops on a tiny model, where it has them."""
    fields = {f.name for f in dataclasses.fields(METHODS[name].Config)}
    fast = {"iters": 2, "batch_size": 2, "progress": False, "search_candidates": 3, "refine_steps": 2,
            "weight_search": "minmax", "act_search": "minmax", "fisher_k": 2, "grid_candidates": 32, "grid_rounds": 1}
    return {"name": name, **{k: v for k, v in fast.items() if k in fields}}


@pytest.mark.slow  # 3-30 s a method on 2 busy cores; the default suite runs the toy method below
@pytest.mark.parametrize("name", BUILTIN)
def test_every_method_quantizes_a_tiny_vit(name):
    model = make_tiny_vit()
    torch.manual_seed(1)
    calib, x = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fp = model(x)
    method = build_method(_fast(name), Bits(8, 8))
    if method.plan() is None:
        assert method.quantize(None, calib) == {}
        return
    qm = make_quantizable(model, method.plan())
    stats = method.quantize(qm, calib)
    assert stats and all(isinstance(k, str) for k in stats)
    with torch.no_grad():
        out = qm.model(x)
        if name in CHANGES_THE_FP_MODEL:
            with quant_disabled(qm.model):
                fp = qm.model(x)
    assert torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(out.flatten(), fp.flatten(), dim=0) > 0.9


# Methods whose recipe replaces part of the FP model, checked against that model with its
# quantizers off: APHQ-ViT swaps GELU for ReLU in the MLPs and retrains them (relu_mlp); after 2
# iterations on the random tiny ViT the swapped model sits at cosine 0.91 to the GELU one, and
# the quantized model at 0.98 to the swapped one (0.89 to the GELU one).
CHANGES_THE_FP_MODEL = {"aphq"}


def test_the_package_imports_every_module_in_it():
    """Discovery: no list of modules to edit; every method class in the package is registered."""
    for mod in pkgutil.iter_modules(ptqbench.methods.__path__):
        module = sys.modules[f"ptqbench.methods.{mod.name}"]
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Method) and obj is not Method and obj.__module__ == module.__name__:
                assert METHODS.get(obj.name) is obj, f"{module.__name__}.{obj.__name__} is not registered"


TOY = '''
"""A toy method: min-max ranges, one calibration pass."""
from dataclasses import dataclass

from ptqbench.methods.base import Method, ProtocolConfig, register_method
from ptqbench.methods.steps import Calibrate


@dataclass(frozen=True)
class ToyConfig(ProtocolConfig):
    weight_search: str = "minmax"
    act_search: str = "minmax"


@register_method("toy_minmax", display="Toy", cite="doe2026toy", paper="Toy")
class Toy(Method):
    Config = ToyConfig

    def steps(self):
        return (Calibrate(),)
'''


@pytest.fixture
def toy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "ptqbench_toy_method.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("ptqbench_toy_method")
    finally:
        METHODS.pop("toy_minmax", None)
        sys.modules.pop("ptqbench_toy_method", None)


def test_a_method_in_its_own_module_registers_on_import_and_quantizes(toy_module):
    assert METHODS["toy_minmax"] is toy_module.Toy
    assert toy_module.Toy.info.display == "Toy" and toy_module.Toy.info.cite == "doe2026toy"
    model = make_tiny_vit()
    torch.manual_seed(1)
    calib, x = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 32, 32)
    method = build_method({"name": "toy_minmax"}, Bits(8, 8))
    qm = make_quantizable(model, method.plan())
    stats = method.quantize(qm, calib)
    assert stats == {"calibrated_quantizers": len(quantizers(qm.model))}
    with torch.no_grad():
        out = qm.model(x)
        with quant_disabled(qm.model):
            fp = qm.model(x)
    assert not torch.equal(out, fp)
    assert torch.nn.functional.cosine_similarity(out.flatten(), fp.flatten(), dim=0) > 0.99


def test_a_name_registered_twice_is_refused(toy_module):
    with pytest.raises(ValueError, match="registered twice"):
        register_method("toy_minmax", display="Again")(toy_module.Toy)


@pytest.mark.parametrize("info, match", [({"display": ""}, "display"),
                                          ({"display": "X", "cite": "Not A Key"}, "BibTeX"),
                                          ({"display": "X", "paper": " "}, "paper")])
def test_bad_report_info_is_refused_at_registration(info, match):
    with pytest.raises(ValueError, match=match):
        register_method("never_registered", **info)
    assert "never_registered" not in METHODS
