"""One source of truth per config: the dataclasses define every option and default, the YAML files
in conf/ only override them, unknown keys are refused, and the run key hashes the effective config.
All in-process (Hydra's compose API); no model, no data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import ptqbench.config_store as config_store
from ptqbench.config import RUN_SCHEMAS, JobSettings, defaults_of, effective_config
from ptqbench.errors import ConfigError
from ptqbench.methods import METHODS
from ptqbench.records import run_key, semantic_config
from ptqbench.validate import config_problems, validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    config_store.register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _compose(*overrides: str):
    return compose("config", overrides=list(overrides))


def _overrides(path: Path) -> tuple[dict, dict[str, str]]:
    """A YAML option's keys (without its defaults list) and, per key, the comment on its line."""
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    comments = {}
    for line in path.read_text().splitlines():
        key, sep, rest = line.partition(":")
        if sep and not line.startswith((" ", "#")) and "#" in rest:
            comments[key.strip()] = rest.split("#", 1)[1].strip()
    return data, comments


def _schema_of(group: str, path: Path, data: dict) -> type:
    if group == "method":
        return METHODS[path.stem].Config
    from ptqbench.config import schema_for

    value = {**data, "name": data.get("name", path.stem)}
    return schema_for(group, value)


YAML_OPTIONS = [(g, p) for g in ("method", "model", "data", "task", "logger", "calib", "quant")
                for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,path", YAML_OPTIONS, ids=[f"{g}/{p.stem}" for g, p in YAML_OPTIONS])
def test_yaml_only_overrides_its_dataclass(group, path):
    """Every key of a YAML option is a field of its dataclass (or `name`), and every value differs
    from the dataclass default unless a comment on its line says why it is repeated."""
    data, comments = _overrides(path)
    if group == "task" and "task" in data:  # a `# @package _global_` option: its own block
        data = data["task"]
    if group == "method" and _is_global(path):  # its own block, plus the paper's calibration size
        assert set(data) <= {"method", "calib"} and set(data.get("calib", {})) <= {"size"}, f"{path}: {sorted(data)}"
        data = data.get("method", {})
    cls = _schema_of(group, path, data)
    assert cls is not None, f"{path}: no schema for it"
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(data) <= fields | {"name"}, f"{path}: {sorted(set(data) - fields - {'name'})} are not fields of {cls.__name__}"
    defaults = defaults_of(cls)
    repeated = [k for k, v in data.items() if k in defaults and v == defaults[k] and k not in comments]
    assert not repeated, f"{path}: {repeated} repeat {cls.__name__}'s defaults without a comment saying why"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_composed_method_is_its_dataclass_defaults_plus_the_yaml(name):
    path = CONF / "method" / f"{name}.yaml"
    overrides = _overrides(path)[0] if path.exists() else {}
    if path.exists() and _is_global(path):
        overrides = overrides.get("method", {})
    composed = OmegaConf.to_container(_compose(f"method={name}").method)
    assert composed == {"name": name, **defaults_of(METHODS[name].Config), **overrides}


def _is_global(path: Path) -> bool:
    return path.read_text().startswith("# @package _global_")


def test_a_method_file_sets_its_papers_calibration_size_and_the_command_line_wins():
    assert _compose("method=ias").calib.size == 1024  # I&S-ViT's protocol
    assert _compose("method=ias", "calib.size=32").calib.size == 32
    assert _compose("method=repq").calib.size == 32


def test_every_group_schema_has_a_default_option_that_composes():
    cfg = OmegaConf.to_container(_compose("logger=none"), resolve=True)
    for group, kinds in RUN_SCHEMAS.items():
        kind = kinds.get("") or kinds.get(cfg[group].get("name")) or kinds["timm"]
        assert set(cfg[group]) == {f.name for f in dataclasses.fields(kind)}, group


@dataclasses.dataclass(frozen=True)
class _ToyConfig(METHODS["minmax"].Config):
    toy_knob: int = 3


@pytest.fixture
def toy_method(monkeypatch):
    """A registered method with no YAML file (a subclass of minmax with one more option)."""
    toy = type("Toy", (METHODS["minmax"],), {"Config": _ToyConfig})
    monkeypatch.setitem(METHODS, "toy", toy)
    monkeypatch.setattr(config_store, "_registered", False)
    config_store.register_configs()
    yield "toy"
    repo = ConfigStore.instance().repo
    repo["method"].pop("toy.yaml", None)
    repo.pop("_schema_method_toy.yaml", None)


def test_a_method_without_yaml_composes_from_its_dataclass(toy_method):
    cfg = _compose(f"method={toy_method}", "method.toy_knob=5")
    assert OmegaConf.to_container(cfg.method) == {"name": "toy", **defaults_of(_ToyConfig), "toy_knob": 5}
    assert config_problems(_compose(f"method={toy_method}", "+method.toy_knb=1")) == [
        "method.toy_knb=1: unknown key; method 'toy' has the options act_percentiles, act_search, name, "
        "patch_input_bits, toy_knob, weight_percentiles, weight_search (did you mean method.toy_knob?)"]


UNKNOWN = [
    ("+typo=1", "typo=1: unknown key; the top-level keys are bits, cache, calib, data, device, eval, heap_reuse_mib, "
                "logger, method, model, quant, recon_spill, report, results_dir, resume, seed, task, threads"),
    ("+calib.sizee=64", "calib.sizee=64: unknown key; calib has the keys seed, size, split (did you mean calib.size?)"),
    ("+method.foo=1", "method.foo=1: unknown key; method 'repq' has the options act_percentiles, act_search, "
                      "attention_scale, exact_padding, log_sqrt2, name, patch_input_bits, reparam, reparam_arithmetic, "
                      "round_zero_point, weight_percentiles, weight_search"),
    ("+model.chekpoint=x", "model.chekpoint=x: unknown key; model has the keys allow_download, arch, checkpoint, name, "
                           "pretrained, tag, weights_dir (did you mean model.checkpoint?)"),
    ("+data.rot=x", "data.rot=x: unknown key; data has the keys batch_size, decoded_cache, eval_limit, name, root, val_split, "
                   "workers (did you mean data.root?)"),
    ("+cache.maxgb=1", "cache.maxgb=1: unknown key; cache has the keys dir, enabled, fp_activations, max_gb "
                      "(did you mean cache.max_gb?)"),
    ("+logger.projet=x", "logger.projet=x: unknown key; logger has the keys dir, entity, group, mode, name, project, "
                         "sqnr_images, tags (did you mean logger.project?)"),
]


@pytest.mark.parametrize("override,message", UNKNOWN, ids=[o for o, _ in UNKNOWN])
def test_unknown_key_is_refused_with_the_valid_keys(override, message):
    assert config_problems(_compose(override)) == [message]
    with pytest.raises(ConfigError, match="Nothing was run or recorded"):
        validate_config(_compose(override))


def test_unknown_key_without_plus_is_refused_by_hydra_before_any_work():
    with pytest.raises(ConfigCompositionException, match="chekpoint"):
        _compose("model.chekpoint=x")


def test_validation_gives_typed_settings():
    s = validate_config(_compose("method=dopq", "calib.size=4", "data.eval_limit=20", "logger=none", "threads=1"))
    assert isinstance(s, JobSettings)
    assert s.calib.size == 4 and s.data.eval_limit == 20 and s.run.threads == 1 and s.run.seed == 0
    assert s.method_name == "dopq" and isinstance(s.method, METHODS["dopq"].Config) and s.method.iters is None
    assert s.bits.w == 4 and s.quant.full is False and s.model.arch == "deit_tiny_patch16_224"
    from ptqbench.methods.ias import IAS_WEIGHT_PERCENTILES
    assert s.method.weight_percentiles == IAS_WEIGHT_PERCENTILES and isinstance(s.method.weight_percentiles, tuple)


def test_run_key_hashes_the_effective_config():
    """A config composed by Hydra and the same config with the method's defaults left out have one
    key: the key is of what runs, not of what was written."""
    cfg = OmegaConf.to_container(_compose("method=erq"), resolve=True)
    sparse = {**cfg, "method": {"name": "erq", "coe": cfg["method"]["coe"]}, "quant": None}
    assert run_key(sparse) == run_key(cfg)
    assert semantic_config(sparse)["method"] == {**defaults_of(METHODS["erq"].Config), "name": "erq"}
    assert effective_config(sparse)["quant"]["full"] is False


def _with_default(monkeypatch, name: str, **fields) -> None:
    """Method `name`'s Config with changed or new defaults, and the schemas registered again."""
    old = METHODS[name].Config
    new = dataclasses.make_dataclass(old.__name__, [(k, type(v), dataclasses.field(default=v)) for k, v in fields.items()],
                                     bases=(old,), frozen=True)
    monkeypatch.setattr(METHODS[name], "Config", new)
    monkeypatch.setattr(config_store, "_registered", False)
    config_store.register_configs()


@pytest.fixture
def reregister(monkeypatch):
    yield
    monkeypatch.undo()  # the real dataclasses first: this teardown runs before monkeypatch's own
    config_store._registered = False
    config_store.register_configs()


@pytest.mark.parametrize("change", [{"log_sqrt2": False}, {"new_knob": 7}], ids=["changed default", "new option"])
def test_run_key_changes_when_a_dataclass_default_changes(monkeypatch, reregister, change):
    before = run_key(_compose("method=repq"))
    _with_default(monkeypatch, "repq", **change)
    composed = _compose("method=repq")
    assert {k: composed.method[k] for k in change} == change  # Hydra composes the new default
    assert run_key(composed) != before


def test_report_and_cache_blocks_are_their_dataclasses_defaults():
    from ptqbench.config import CacheConfig
    from ptqbench.report.spec import ReportSpec

    cfg = _compose()
    assert ReportSpec.from_mapping(OmegaConf.to_container(cfg.report)) == ReportSpec()
    assert OmegaConf.to_container(cfg.cache) == defaults_of(CacheConfig)


def test_eval_compile_is_validated_and_in_the_run_key_only_when_true():
    from ptqbench.records import run_key

    assert config_problems(_compose("eval.compile=maybe")) == ["eval.compile=maybe: must be true or false"]
    assert run_key(_compose("eval.compile=false")) == run_key(_compose())
    assert run_key(_compose("eval.compile=true")) != run_key(_compose())
    problems = config_problems(_compose("eval.compile=true", "model=mask_rcnn_swin_t", "task=detection", "data=coco"))
    assert any("eval.compile=true: only task=classification" in p for p in problems)
