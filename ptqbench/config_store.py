"""Hydra's side of the config schemas (ptqbench.config): every schema dataclass is stored in the
ConfigStore as `_schema_<group>[_<kind>]`, a root-level config (so `--help` lists only the real
options) that each YAML option pulls in with `defaults: [/_schema_...@_here_, _self_]`. A method
without a YAML file, and `calib`/`quant`'s only option `default`, are stored as the group option
itself, so `method=NAME` works for every registered method. The paper-table experiments
(experiments/experiment/NAME.yaml) are stored as the `experiment` group, global package, so
`+experiment=NAME` works from any working directory and for every ptqbench Hydra app."""

from __future__ import annotations

from omegaconf import OmegaConf

from ptqbench.config import CONF_DIR, RUN_SCHEMAS, CalibConfig, JobSettings, RunConfig, defaults_of, job_settings

_registered = False


def schema_name(group: str, kind: str = "") -> str:
    """The ConfigStore name of a schema (what `defaults: [/<name>@_here_]` names)."""
    return f"_schema_{group}" + (f"_{kind}" if kind else "")


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent). Call before Hydra composes conf/:
    the entry points and tests/conftest.py do."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from ptqbench.paths import EXPERIMENT_CONFIGS

    from ptqbench.methods import METHODS, FullQuantConfig
    from ptqbench.report.spec import ReportSpec

    cs = ConfigStore.instance()
    cs.store(name=schema_name("run"), node=defaults_of(RunConfig))
    for group, kinds in RUN_SCHEMAS.items():
        for kind, cls in kinds.items():
            cs.store(name=schema_name(group, kind), node=defaults_of(cls))
    cs.store(name=schema_name("report"), node=defaults_of(ReportSpec))
    cs.store(name=schema_name("quant"), node=defaults_of(FullQuantConfig))
    for name, cls in METHODS.items():
        node = {"name": name, **defaults_of(cls.Config)}
        cs.store(name=schema_name("method", name), node=node)
        if not (CONF_DIR / "method" / f"{name}.yaml").exists():
            cs.store(group="method", name=name, node=node)
    for group, node in (("calib", defaults_of(CalibConfig)), ("quant", defaults_of(FullQuantConfig))):
        if not (CONF_DIR / group / "default.yaml").exists():
            cs.store(group=group, name="default", node=node)
    for path in sorted(EXPERIMENT_CONFIGS.glob("*.yaml")):
        cs.store(group="experiment", name=path.stem, node=OmegaConf.load(path), package="_global_")
    _registered = True


def composed_job_settings(overrides: list[str]) -> JobSettings:
    """The typed settings of the job `python -m ptqbench OVERRIDES` would run (composed from conf/
    without starting Hydra's app: for tools that run part of a job)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return job_settings(compose("config", overrides=overrides))
