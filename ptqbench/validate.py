"""Everything checked before a job does any work: one pass over the whole composed config, and
the results folder.

Keys: every config block's valid keys are the fields of its schema dataclass (ptqbench.config:
RunConfig at the top level, one schema per group option, the method's Config, FullQuantConfig,
ReportSpec), so `+calib.sizee=64`, `+model.chekpoint=/x`, `+method.foo=1` or `+foo=1` are refused
with the list of valid keys instead of silently creating a new run key.

Values: RULES gives the type and range of every run-level value; other keys must have the type of
their dataclass field, and method and quant options pass the dataclass's own checks. Cross-key
checks (task vs model vs data, calibration split, checkpoint path, CUDA for device=cuda) come
last. Every problem is reported in one ConfigError, each naming the key, the value and what is
valid, before a model, an image or a record is touched; a valid config gives its typed
`JobSettings`. (The results folder is checked by `ptqbench.preflight` before Hydra writes there,
and by `run_job`.)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf

from ptqbench.config import CONF_DIR, RUN_SCHEMAS, JobSettings, RunConfig, job_settings, schema_for
from ptqbench.config_store import register_configs
from ptqbench.errors import ConfigError
from ptqbench.methods.base import MAX_BITS, MIN_BITS

GROUPS = ("model", "method", "bits", "calib", "quant", "data", "task", "logger")
OPTIONAL_GROUPS = {"quant", "logger", "cache", "eval"}  # null is allowed: their defaults apply
FREE_FORM = {"data.splits"}  # mappings whose keys the user chooses
TOP_LEVEL_SKIP = {"hydra"}  # present when composed with return_hydra_config

Check = Callable[[Any], bool]


def resolve_device(name: str) -> torch.device:
    """The torch device `device=` names; a ConfigError when it is unknown or CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"device={name!r}; choose auto, cpu or cuda[:N]")
    return torch.device(name)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(lo: Optional[int] = None, hi: Optional[int] = None) -> Check:
    return lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)


def _number(lo: Optional[float] = None, hi: Optional[float] = None, positive: bool = False) -> Check:
    return lambda v: _is_number(v) and (lo is None or v >= lo) and (hi is None or v <= hi) and (not positive or v > 0)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _or_null(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _one_of(*choices: Any) -> Check:
    return lambda v: v in choices


_BITS = (_int(MIN_BITS, MAX_BITS), f"an integer in {MIN_BITS}..{MAX_BITS} (bits=w4a4, or bits.w=4 bits.a=4)")
# key -> (check, what is valid). Keys not listed get the type of their YAML default.
RULES: dict[str, tuple[Check, str]] = {
    "seed": (_int(0), "an integer >= 0"),
    "device": (lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
               "auto, cpu, cuda or cuda:N"),
    "threads": (_or_null(_int(1)), "null (the launcher decides) or an integer >= 1"),
    "results_dir": (_text, "a folder path"),
    "resume": (_bool, "true or false"),
    "heap_reuse_mib": (_int(1, 32), "an integer in 1..32 (MiB; glibc keeps no larger heap blocks)"),
    "recon_spill": (_bool, "true or false"),
    "cache.enabled": (_bool, "true or false"),
    "cache.dir": (_or_null(_text), "null (<results_dir>/cache) or a folder path"),
    "cache.max_gb": (_number(positive=True), "a number of GiB > 0 (or cache.enabled=false)"),
    "cache.fp_activations": (_bool, "true or false"),
    "eval.compile": (_bool, "true or false"),
    "bits.w": _BITS,
    "bits.a": _BITS,
    "calib.size": (_int(1), "an integer >= 1 (calibration images)"),
    "calib.seed": (_int(0), "an integer >= 0"),
    "calib.split": (_text, "the name of a training split, e.g. train"),
    "data.root": (_or_null(_text), "null ($PTQBENCH_DATA/imagenet-mini) or an ImageNet folder"),
    "data.coco_root": (_or_null(_text), "null ($PTQBENCH_DATA/coco-tiny) or a COCO folder"),
    "data.val_split": (_text, "the name of the evaluation split, e.g. val"),
    "data.eval_limit": (_or_null(_int(1)), "null (every image) or an integer >= 1"),
    "data.batch_size": (_int(1), "an integer >= 1"),
    "data.workers": (lambda v: v in (None, "auto") or _int(0)(v), "auto or an integer >= 0"),
    "data.scale": (lambda v: isinstance(v, list) and len(v) == 2 and all(_int(1)(x) for x in v),
                   "[long, short] side limits, two integers >= 1"),
    "model.checkpoint": (_or_null(_text), "null or the path of a weights file"),
    "model.weights_dir": (_or_null(_text), "null or a folder"),
    "model.arch": (_or_null(_text), "a timm architecture name"),
    "model.tag": (_or_null(_text), "a timm pretrained tag"),
    "task.score_thr": (_or_null(_number(0, 1)), "null or a number in [0, 1]"),
    "task.max_per_img": (_or_null(_int(1)), "null or an integer >= 1"),
    "logger.mode": (_one_of("offline", "online", "disabled"), "offline, online or disabled"),
}


# --- the schema -----------------------------------------------------------------------------


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files in conf/ and the schemas registered in
    Hydra's ConfigStore (a method without a YAML file)."""
    from hydra.core.config_store import ConfigStore

    register_configs()
    names = {f.stem for f in (CONF_DIR / group).glob("*.yaml")}
    stored = ConfigStore.instance().repo.get(group, {})
    names |= {k.removesuffix(".yaml") for k in stored if isinstance(k, str) and k.endswith(".yaml")}
    return sorted(names)


def _kinds(group: str) -> list[str]:
    if group == "method":
        from ptqbench.methods import METHODS

        return sorted(METHODS)
    return sorted(k for k in RUN_SCHEMAS.get(group, {}) if k)


# --- value checks -------------------------------------------------------------------------------


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return v if v and re.fullmatch(r"[\w./:~+-]+", v) else repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_show(x)}" for k, x in v.items()) + "}"
    return str(v)


def _annotation_rule(tp: Any) -> Optional[tuple[Check, str]]:
    """The rule of a dataclass field's type (bool, int, float, str, Optional[...], tuple[X, ...])."""
    if tp is bool:
        return _bool, "true or false"
    if tp is int:
        return _is_int, "an integer"
    if tp is float:
        return _is_number, "a number"
    if tp is str:
        return (lambda v: isinstance(v, str)), "a string"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType) and type(None) in args:  # Optional[X], X | None
        inner = [a for a in args if a is not type(None)]
        rule = _annotation_rule(inner[0]) if len(inner) == 1 else None
        if rule is not None:
            return _or_null(rule[0]), f"null or {rule[1]}"
        return None
    if origin is tuple and args:
        rule = _annotation_rule(args[0])
        if rule is not None:
            check = rule[0]
            return (lambda v: isinstance(v, (list, tuple)) and all(check(x) for x in v)), f"a list of {rule[1].removeprefix('a ').removeprefix('an ')}s"
    return None


def _field_rules(cls: type) -> dict[str, Optional[tuple[Check, str]]]:
    """Field -> the rule its type annotation implies (None: any value)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _annotation_rule(hints.get(f.name)) for f in dataclasses.fields(cls)}


def _check_mapping(value: Mapping[str, Any], fields: Mapping[str, Optional[tuple[Check, str]]], prefix: str,
                   where: str, problems: list[str]) -> None:
    """Unknown keys of `value` and the value of every known key (RULES first, then `fields`'s
    rule for it)."""
    for key, v in value.items():
        path = f"{prefix}{key}"
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            problems.append(f"{path}={_show(v)}: unknown key; {where} {', '.join(sorted(fields))}"
                            + (f" (did you mean {prefix}{hint[0]}?)" if hint else ""))
            continue
        if path in FREE_FORM:
            continue
        rule = RULES.get(path) or fields[key]
        if rule is not None and not rule[0](v):
            problems.append(f"{path}={_show(v)}: must be {rule[1]}")


def _check_dataclass_options(value: Mapping[str, Any], cls: type, prefix: str, where: str, problems: list[str],
                             named: bool = False) -> bool:
    """Unknown keys, missing required keys and field types of a config block whose schema is the
    dataclass `cls` (`named`: the block also carries a `name`, as a method's does); True when all
    are valid."""
    fields = _field_rules(cls)
    if named:
        fields["name"] = (_text, "a name")
    before = len(problems)
    _check_mapping(value, fields, prefix, where, problems)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in value:
            problems.append(f"{prefix}{f.name} is missing; {where} {', '.join(sorted(fields))}")
    return len(problems) == before


# --- the pass -----------------------------------------------------------------------------------


def config_problems(cfg: Union[DictConfig, Mapping[str, Any]], own: tuple[str, ...] = ()) -> list[str]:
    """Every problem of the composed config `cfg` (empty when it may run). `own`: top-level blocks
    the calling entry point checks itself (e.g. `analyze`). Touches no data, weights or results:
    the checkpoint path is only stat'ed, CUDA only queried."""
    skip = {*TOP_LEVEL_SKIP, *own}
    if isinstance(cfg, DictConfig) and any(k in cfg for k in skip):
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in skip])
    try:
        c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except Exception as e:  # an interpolation that does not resolve (${oc.env:...}, a missing key)
        return [f"the config does not resolve: {type(e).__name__}: {e}"]
    c = {k: v for k, v in c.items() if k not in skip}
    problems: list[str] = []

    # top level: RunConfig's keys and the blocks, checked one by one below
    blocks = (*GROUPS, "cache", "eval", "report")
    top = {**_field_rules(RunConfig), **{k: None for k in blocks}}
    _check_mapping({k: v for k, v in c.items() if k not in blocks}, top, "", "the top-level keys are", problems)

    for group in (*GROUPS, "cache", "eval"):
        value = c.get(group)
        if value is None:
            if group not in OPTIONAL_GROUPS:
                problems.append(f"{group} is missing: choose one with {group}=OPTION ({', '.join(group_options(group))})")
            continue
        if not isinstance(value, dict):
            problems.append(f"{group}={_show(value)}: must be a config group; choose one with {group}=OPTION "
                            f"({', '.join(group_options(group))})")
            continue
        if group in ("method", "quant"):
            continue  # they are also built, checked below
        cls = schema_for(group, value)
        if cls is None:
            problems.append(f"{group}.name={_show(value.get('name'))}: not one of {', '.join(_kinds(group))} ({group}=NAME)")
            continue
        _check_dataclass_options(value, cls, f"{group}.", f"{group} has the keys", problems)

    method = _check_methods(c, problems)
    _check_report(c, problems)
    if not problems:  # cross-key checks assume each value is well-formed
        _check_combination(c, method, problems)
    return problems


def _check_methods(c: Mapping[str, Any], problems: list[str]) -> Any:
    """Check the method's and quant's options; returns the method built from them (None when
    they are not valid)."""
    from ptqbench.methods import METHODS, Bits, FullQuantConfig, build_method

    quant = c.get("quant")
    quant_ok = quant is None or (isinstance(quant, dict)
                                 and _check_dataclass_options(quant, FullQuantConfig, "quant.", "quant has the options", problems))
    if quant_ok and isinstance(quant, dict):
        try:
            FullQuantConfig.from_mapping(quant)
        except ConfigError as e:
            problems.append(str(e))
            quant_ok = False
    method = c.get("method")
    if not isinstance(method, dict):
        return None
    name = method.get("name")
    if name not in METHODS:
        problems.append(f"method.name={_show(name)}: not a method; choose one of {', '.join(sorted(METHODS))} (method=NAME)")
        return None
    where = f"method {name!r} has the options"
    if not _check_dataclass_options(method, METHODS[name].Config, "method.", where, problems, named=True) or not quant_ok:
        return None
    bits = c.get("bits") or {}
    w, a = bits.get("w"), bits.get("a")
    valid_bits = _BITS[0]
    try:  # the dataclass's own range checks; placeholder bits when the bits are wrong (reported above)
        return build_method(method, Bits(w if valid_bits(w) else 8, a if valid_bits(a) else 8), quant)
    except ConfigError as e:
        problems.append(str(e))
        return None


def _check_report(c: Mapping[str, Any], problems: list[str]) -> None:
    report = c.get("report")
    if report is None:
        return
    if not isinstance(report, dict):
        problems.append(f"report={_show(report)}: must be a mapping (the `report:` block)")
        return
    from ptqbench.report.spec import ReportSpec

    try:
        ReportSpec.from_mapping(report)
    except ConfigError as e:
        problems.append(str(e))
    except (TypeError, ValueError) as e:
        problems.append(f"report: {e}")


def _check_combination(c: Mapping[str, Any], method: Any, problems: list[str]) -> None:
    from ptqbench.models.detectors import DETECTORS
    from ptqbench.models.zoo import MODELS

    model, data, task, calib = c["model"], c["data"], c["task"], c["calib"]
    name, task_name = model.get("name"), task.get("name")
    if name not in MODELS and name not in DETECTORS and not (model.get("arch") and model.get("tag")):
        problems.append(f"model.name={_show(name)}: unknown model; choose one of {', '.join(sorted([*MODELS, *DETECTORS]))} "
                        "(model=NAME), or give model.arch and model.tag for another timm ViT/DeiT/Swin")
    elif task_name == "classification" and name in DETECTORS:
        problems.append(f"model={name} is a detector: run it with task=detection")
    elif task_name == "detection" and name not in DETECTORS:
        problems.append(f"model={name} is not a detector; task=detection takes one of {', '.join(sorted(DETECTORS))}")
    expected_data = {"classification": "imagenet", "detection": "coco"}.get(task_name)
    if (c.get("eval") or {}).get("compile") and task_name != "classification":
        problems.append(f"eval.compile=true: only task=classification compiles its evaluation (task={task_name}); drop eval.compile")
    if expected_data and data.get("name") != expected_data:
        problems.append(f"data={data.get('name')}: task={task_name} evaluates on data={expected_data}; drop the data override")
    splits = data.get("splits")
    if isinstance(splits, dict):
        for key, val in (("calib.split", calib.get("split")), ("data.val_split", data.get("val_split"))):
            if val not in splits:
                problems.append(f"{key}={_show(val)}: not one of the data splits {', '.join(sorted(splits))} (data.splits)")
    if calib.get("split") == data.get("val_split"):
        problems.append(f"calib.split={_show(calib.get('split'))}: that is the evaluation split (data.val_split); "
                        "calibrate on training images (calib.split=train)")
    if not problems and method is not None:  # the task's checks assume the generic ones passed
        _check_task(c, method, problems)
    checkpoint = model.get("checkpoint")
    if checkpoint and model.get("pretrained", True):
        from ptqbench.models.weights import checkpoint_problem

        problem = checkpoint_problem(Path(checkpoint).expanduser())
        if problem:
            problems.append(f"model.checkpoint={_show(checkpoint)}: {problem}")

    try:
        resolve_device(str(c["device"]))
    except ConfigError as e:
        problems.append(str(e))


def _check_task(c: Mapping[str, Any], method: Any, problems: list[str]) -> None:
    """The task's own refusals (`Task.validate`: e.g. detection's task.quantize, quant.full and
    the block-by-block methods), written once in the task and run here, before any work."""
    from ptqbench.tasks.base import get_task  # not the package: its task modules import this module

    try:
        get_task(str(c["task"]["name"])).validate(job_settings(c), method)
    except ConfigError as e:
        problems.append(str(e))


def validate_config(cfg: Union[DictConfig, Mapping[str, Any]], own: tuple[str, ...] = ()) -> JobSettings:
    """The typed settings of `cfg`; one ConfigError listing every problem when it is not valid
    (`own`: see `config_problems`), before anything has been run or recorded."""
    problems = config_problems(cfg, own)
    if len(problems) == 1:
        raise ConfigError(f"{problems[0]}. Nothing was run or recorded.")
    if problems:
        raise ConfigError(f"{len(problems)} problems in the config; nothing was run or recorded:\n  "
                          + "\n  ".join(problems))
    skip = {*TOP_LEVEL_SKIP, *own}
    if isinstance(cfg, DictConfig):
        return job_settings(OmegaConf.masked_copy(cfg, [k for k in cfg if k not in skip]))
    return job_settings({k: v for k, v in cfg.items() if k not in skip})
