"""docs/contributing.md is tested: each example marked `<!-- test: NAME -->` is written to the one
file the page says to add, imported under the package it belongs to (so it registers itself as it
would inside ptqbench), and then used the way the page says; every test removes what it registered."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from torch import nn

import ptqbench.config
import ptqbench.config_store as config_store
from ptqbench.config import RUN_SCHEMAS, defaults_of
from ptqbench.errors import ConfigError
from ptqbench.methods import METHODS, Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.models.families import FAMILIES, family_of
from ptqbench.pipeline import execute
from ptqbench.quant import kinds, quant_disabled, roles
from ptqbench.quant.calibration import calibrate, quantizers
from ptqbench.quant.modules import QuantLinear
from ptqbench.quant.spec import QuantizerSpec, QuantPlan
from ptqbench.tasks import TASKS, get_task
from ptqbench.validate import config_problems, validate_config
from tests.conftest import make_tiny_vit

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "contributing.md"
CONF = REPO / "conf"
# `<!-- test: NAME -->`, then the path the page says the block goes to is the `path`: line above it
_BLOCK = re.compile(r"`(?P<path>[\w/.]+\.(?:py|yaml))`[^\n]*:\n\n<!-- test: (?P<name>[\w-]+) -->\n```(?:python|yaml)\n"
                    r"(?P<code>.*?)```", re.S)


def doc_blocks() -> dict[str, tuple[str, str]]:
    """test name -> (the file the page says to add, its code)."""
    return {m["name"]: (m["path"], m["code"]) for m in _BLOCK.finditer(DOC.read_text())}


def load_block(name: str, module: str, tmp_path: Path) -> ModuleType:
    """Write block `name` to its file (under tmp_path) and import it as `module`."""
    rel, code = doc_blocks()[name]
    path = tmp_path / Path(rel).name
    path.write_text(code)
    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def unload() -> Iterator[list[str]]:
    """Module names to drop from sys.modules after the test."""
    names: list[str] = []
    yield names
    for n in names:
        sys.modules.pop(n, None)


def test_the_page_has_every_example_in_the_file_it_names_and_the_counts_agree():
    blocks = doc_blocks()
    assert {n: p for n, (p, _) in blocks.items()} == {
        "method": "ptqbench/methods/toy.py", "kind": "ptqbench/quant/pow2.py", "family-model": "my_models.py",
        "family": "ptqbench/models/families/my_mlp.py", "task": "ptqbench/tasks/toy_regression.py",
        "task-config": "ptqbench/config.py", "task-yaml": "conf/task/toy_regression.yaml"}
    text = DOC.read_text()
    table = dict(re.findall(r"^\| a (PTQ method|quantizer kind|model family|task) \| [^|]+ \| \*\*(\d)\*\*", text, re.M))
    sections = re.findall(r"^## \d\. A (PTQ method|quantizer kind|model family|task)\n.*?\*\*Files touched: (\d)\*\*",
                          text, re.M | re.S)
    assert table == dict(sections) == {"PTQ method": "1", "quantizer kind": "1", "model family": "1", "task": "3"}


@pytest.fixture
def toy_method(tmp_path, unload, monkeypatch):
    unload.append("ptqbench.methods.toy")
    mod = load_block("method", "ptqbench.methods.toy", tmp_path)
    monkeypatch.setattr(config_store, "_registered", False)
    config_store.register_configs()
    yield mod
    METHODS.pop("toy", None)
    repo = ConfigStore.instance().repo
    repo["method"].pop("toy.yaml", None)
    repo.pop("_schema_method_toy.yaml", None)


def test_toy_method_composes_with_hydra_and_quantizes_a_tiny_vit(toy_method):
    assert METHODS["toy"] is toy_method.Toy and METHODS["toy"].info.display == "Toy"
    assert not (CONF / "method" / "toy.yaml").exists()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["method=toy", "method.log_softmax=false", "logger=none"])
        typo = compose("config", overrides=["method=toy", "+method.log_softmx=1", "logger=none"])
    assert OmegaConf.to_container(cfg.method) == {"name": "toy", **defaults_of(toy_method.ToyConfig), "log_softmax": False}
    assert config_problems(cfg) == []
    assert any("method.log_softmx=1: unknown key" in p and "log_softmax" in p for p in config_problems(typo))

    for log_softmax in (False, True):
        model = make_tiny_vit()
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            fp = model(x)
        method = build_method({**OmegaConf.to_container(cfg.method), "log_softmax": log_softmax}, Bits(8, 8))
        qm = make_quantizable(model, method.plan())
        stats = method.quantize(qm, x)
        qs = quantizers(qm.model).values()
        assert stats["calibrated_quantizers"] == len(qs) > 0 and all(q.calibrated for q in qs)
        post_softmax = {q.kind for q in qs if q.role == roles.POST_SOFTMAX}
        assert post_softmax == ({"log_sqrt2"} if log_softmax else {"uniform"})
        with torch.no_grad():
            err = (qm.model(x) - fp).abs().max()
        assert 0 < err < 0.5 * fp.abs().max()  # W8A8 active, and close to FP


@pytest.fixture
def pow2_kind(tmp_path, unload):
    unload.append("ptqbench.quant.pow2")
    mod = load_block("kind", "ptqbench.quant.pow2", tmp_path)
    yield mod
    kinds._KINDS.pop("pow2", None)


def test_toy_kind_builds_through_a_spec_quantizes_and_trains(pow2_kind):
    assert "pow2" in kinds.quantizer_kinds()
    q = QuantizerSpec(4, kind="pow2", options={"headroom": 0}).build(roles.WEIGHT, 0)
    assert isinstance(q, pow2_kind.Pow2Quantizer)
    x = torch.randn(256, generator=torch.Generator().manual_seed(0)) * 3
    q.calibrate(x)
    step = 2.0 ** float(q.exponent)
    assert float(q.exponent).is_integer()
    assert x.abs().max() <= 7 * step < 2 * x.abs().max()  # the smallest power of two covering max |x|
    y = q(x)
    codes = y / step
    assert torch.equal(codes, codes.round()) and codes.min() >= -8 and codes.max() <= 7
    assert (y - x).abs().max() <= step / 2 + 1e-6
    assert q.describe()["step"] == step

    coarse = QuantizerSpec(4, kind="pow2", options={"headroom": 1}).build(roles.WEIGHT, 0)
    coarse.calibrate(x)
    assert float(coarse.exponent) == float(q.exponent) + 1
    with pytest.raises(ConfigError, match="quantizer kind 'pow2': pow2 headroom must be an integer >= 0"):
        QuantizerSpec(4, kind="pow2", options={"headroom": -1})
    with pytest.raises(ConfigError, match=r"has no option\(s\) \['head'\]; valid options: \['headroom'\]"):
        QuantizerSpec(4, kind="pow2", options={"head": 1})

    assert q.start_training("interval") == []
    params = q.start_training("scale")
    assert params == [q.exponent] and q.exponent.requires_grad
    (q(x) - x).pow(2).sum().backward()
    assert q.exponent.grad is not None and q.exponent.grad != 0
    q.stop_training()
    assert not q.exponent.requires_grad

    # a plan that names the kind gets it on every weight
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    qm = make_quantizable(model, QuantPlan(QuantizerSpec(4, kind="pow2"), {}))
    calibrate(qm.model, torch.randn(4, 8))
    assert [type(q).__name__ for q in quantizers(qm.model).values()] == ["Pow2Quantizer"] * 2


@pytest.fixture
def my_mlp_family(tmp_path, unload, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    unload.extend(["my_models", "ptqbench.models.families.my_mlp"])
    models = load_block("family-model", "my_models", tmp_path)
    family = load_block("family", "ptqbench.models.families.my_mlp", tmp_path)
    yield models, family
    FAMILIES.pop("my_mlp", None)


@pytest.mark.parametrize("method_name", ["repq", "gptq"])  # reparameterization pairs; units
def test_toy_family_is_found_patched_and_quantized(my_mlp_family, method_name):
    models, family = my_mlp_family
    torch.manual_seed(0)
    model = models.TinyMLPNet().eval()
    assert family_of(model) is FAMILIES["my_mlp"] and isinstance(FAMILIES["my_mlp"], family.MyMLP)
    x = torch.randn(8, 5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp = model(x)
    method = build_method({"name": method_name}, Bits(8, 8))
    qm = make_quantizable(model, method.plan())
    assert qm.family == "my_mlp"
    linears = [n for n, m in qm.model.named_modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(qm.model.get_submodule(n), QuantLinear) for n in linears) and len(linears) == 5
    assert qm.linear_roles == {"blocks.0.fc1": roles.POST_LN, "blocks.0.fc2": roles.POST_GELU,
                               "blocks.1.fc1": roles.POST_LN, "blocks.1.fc2": roles.POST_GELU, "head": roles.HEAD_IN}
    assert [p.name for p in qm.reparam_pairs] == ["blocks.0.norm", "blocks.1.norm"]
    assert [u.name for u in qm.units] == ["blocks.0", "blocks.1", "head"]
    method.quantize(qm, x)
    with torch.no_grad():
        y = x
        for unit in qm.units:  # the units reproduce the patched model's forward
            y = unit.forward(y)
        out = qm.model(x)
        assert torch.equal(y, out)
        assert 0 < (out - fp).abs().max() < 0.1 * fp.abs().max()  # W8A8 is active and close
        if method_name == "repq":  # the LayerNorm fold keeps the FP function
            with quant_disabled(qm.model):
                assert torch.allclose(qm.model(x), fp, atol=1e-5)


@pytest.fixture
def toy_task(tmp_path, unload, monkeypatch):
    """The task module, its options schema added to ptqbench/config.py's RUN_SCHEMAS and its option
    file conf/task/toy_regression.yaml: what the page says the three files do."""
    unload.append("ptqbench.tasks.toy_regression")
    mod = load_block("task", "ptqbench.tasks.toy_regression", tmp_path)
    namespace = dict(vars(ptqbench.config))  # the snippet runs where the page puts it
    exec(doc_blocks()["task-config"][1], namespace)
    schema = namespace["ToyRegressionTaskConfig"]
    monkeypatch.setitem(RUN_SCHEMAS["task"], "toy_regression", schema)
    monkeypatch.setattr(config_store, "_registered", False)
    config_store.register_configs()
    cs = ConfigStore.instance()
    cs.store(group="task", name="toy_regression", node=OmegaConf.create(doc_blocks()["task-yaml"][1]))
    yield mod, schema
    TASKS.pop("toy_regression", None)
    cs.repo["task"].pop("toy_regression.yaml", None)
    cs.repo.pop("_schema_task_toy_regression.yaml", None)


def test_toy_task_composes_validates_and_runs_through_the_pipeline(toy_task, tmp_path):
    mod, schema = toy_task
    assert isinstance(get_task("toy_regression"), mod.ToyRegression)
    results = tmp_path / "results"

    def job(*overrides: str) -> dict:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=["task=toy_regression", "bits=w8a8", "logger=none", "calib.size=16",
                                               f"results_dir={results}", *overrides])
        settings = validate_config(cfg)
        assert isinstance(settings.task, schema)
        return execute(settings, results)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        typo = compose("config", overrides=["task=toy_regression", "+task.hiden=8", "logger=none"])
    assert any("task.hiden=8: unknown key" in p and "task.hidden" in p for p in config_problems(typo))

    q = job("method=minmax", "task.hidden=24")
    m = q["metrics"]
    assert m["fp_mse"] == q["fp"]["mse"] > 0 and not q["fp"]["cached"]
    assert m["mse"] != m["fp_mse"] and abs(m["mse_increase"]) < 0.1 * m["fp_mse"]
    assert q["quantized_modules"]["QuantLinear"] == 2 and q["calibration"]["size"] == 16
    assert q["model"] == {"name": "toy_mlp24"} and q["data"] == {"name": "toy_regression", "size": 64}
    assert get_task("toy_regression").summary_line(q) == f"MSE {m['mse']:.4f} (FP {m['fp_mse']:.4f})"

    fp = job("method=fp", "task.hidden=24")  # same weights and inputs: the FP baseline comes from the results cache
    assert fp["fp"]["cached"] and fp["metrics"] == {"mse": m["fp_mse"], "fp_mse": m["fp_mse"], "mse_increase": 0.0}


def test_each_example_is_one_file_dropped_into_a_copy_of_the_package(tmp_path):
    """The page's "one file" claims, literally: a copy of ptqbench with only the example files added
    registers all four (the registries' packages import every module in them)."""
    shutil.copytree(REPO / "ptqbench", tmp_path / "ptqbench")  # with __pycache__: same mtimes, so reused
    blocks = doc_blocks()
    for name in ("method", "kind", "family-model", "family", "task"):
        rel, code = blocks[name]
        (tmp_path / rel).write_text(code)
    probe = ("import ptqbench.methods, ptqbench.models.families, ptqbench.tasks\n"
             "from ptqbench.quant.kinds import quantizer_kinds\n"
             "assert ptqbench.__file__.startswith(%r), ptqbench.__file__\n"
             "print(sorted({'toy'} & set(ptqbench.methods.METHODS)), sorted({'pow2'} & set(quantizer_kinds())),\n"
             "      sorted({'my_mlp'} & set(ptqbench.models.families.FAMILIES)), sorted({'toy_regression'} & set(ptqbench.tasks.TASKS)))\n"
             % str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['toy']", "['pow2']", "['my_mlp']", "['toy_regression']"]
