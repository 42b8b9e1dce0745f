"""The `Task` protocol: what one kind of job (classification, detection) contributes to the one
pipeline (`ptqbench.pipeline.execute`), and the registry that finds it by `task.name`.

A task knows its data, its model builder, its evaluation and its metrics; the pipeline owns the
order (FP baseline cache -> plan -> patch -> quantize -> evaluate -> record fields), so a new task
is one module here that subclasses `Task` and calls `register_task`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from ptqbench.config import JobSettings
from ptqbench.errors import ConfigError


@dataclass
class BuiltModel:
    """A job's FP model, on its device."""

    module: nn.Module  # what the adapter patches and the method calibrates
    device: torch.device
    fingerprint: str  # of the FP weights: keys the FP baseline cache
    fields: dict[str, Any]  # the record's `model`
    context: Any = None  # the task's own build products (timm data config, mmdet config)


@dataclass
class EvalData:
    """The evaluation images of a job and how the FP baseline cache names them."""

    data: Any  # what the task's `evaluate` consumes (a loader, a dataset config)
    ids: list[str]
    signature: str  # identifies the images' content
    transform: str  # identifies their preprocessing
    device: torch.device
    fields: dict[str, Any]  # the record's `data`
    context: Any = None


@dataclass
class CalibData:
    """The calibration set of a job: what `method.quantize` receives, and where it came from."""

    inputs: Any  # on the model's device
    ids: list[Any]
    seed: int
    split: str
    cache_key: Optional[str] = None  # set when the batch is content-cached (FP targets are keyed by it)
    cached: Optional[bool] = None

    def fields(self) -> dict[str, Any]:
        """The record's `calibration`."""
        out: dict[str, Any] = {"size": len(self.ids), "seed": self.seed, "split": self.split, "ids": self.ids}
        if self.cache_key is not None:
            out.update(cache_key=self.cache_key, cached=self.cached)
        return out


class Task(ABC):
    """One kind of job. Subclasses set the class attributes and implement the abstract steps;
    the hooks with bodies are optional."""

    name: ClassVar[str]
    headline: ClassVar[str]  # the metric key `python -m ptqbench` returns for a job
    headline_label: ClassVar[str]  # how a log line names it
    fp_format: ClassVar[str] = "json"  # how the FP baseline is cached: "pt" keeps tensors
    fp_required: ClassVar[str]  # a cached FP baseline without this key is recomputed
    fp_fields: ClassVar[Optional[tuple[str, ...]]] = None  # FP keys the record keeps (None: all)

    def validate(self, settings: JobSettings, method: Any) -> None:
        """Refuse settings this task cannot run with `method` (ConfigError). Called by
        `ptqbench.validate.validate_config`, so a refusal comes before any I/O and is written once."""

    def scope(self, settings: JobSettings) -> Optional[str]:
        """The submodule the adapter patches (None: the whole model)."""
        return None

    @abstractmethod
    def device(self, settings: JobSettings) -> torch.device:
        """Where the model runs."""

    @abstractmethod
    def open_data(self, settings: JobSettings, method: Any) -> Any:
        """Locate the data (and anything else a job needs from disk) and fail on what is missing,
        before the model is built; the returned handle goes to `evaluation_data` and
        `calibration_data`."""

    @abstractmethod
    def build_model(self, settings: JobSettings, device: torch.device) -> BuiltModel:
        """The FP model, on `device`."""

    @abstractmethod
    def evaluation_data(self, settings: JobSettings, data: Any, model: BuiltModel, results_dir: Path) -> EvalData:
        """The evaluation images, preprocessed as `model` expects."""

    @abstractmethod
    def calibration_data(self, settings: JobSettings, data: Any, model: BuiltModel, cache: Any) -> CalibData:
        """The calibration set (`cache`: the results folder's content cache, which the task may use)."""

    @abstractmethod
    def evaluate(self, module: nn.Module, data: EvalData, desc: str) -> dict[str, Any]:
        """Metrics of `module` (FP or patched) on `data`, with `eval_seconds`."""

    @abstractmethod
    def metrics(self, q: Optional[dict[str, Any]], fp: dict[str, Any]) -> dict[str, Any]:
        """The record's `metrics` from the quantized evaluation `q` (None for method=fp: the FP
        evaluation is the result) and the FP baseline `fp`."""

    def warm_up(self, module: nn.Module, data: EvalData) -> None:
        """One small inference forward of `module`, run before each evaluation outside its reused
        heap (`ptqbench.pipeline.evaluated`): what a first forward allocates for good (a quantized
        layer's cached weights, library state) then sits low in glibc's heap instead of above the
        evaluation's activations, where it kept the heap from shrinking afterwards. No-op by default."""

    def check_quantized(self, qm: Any) -> None:
        """Refuse a quantized model that cannot be evaluated (before the evaluation starts)."""

    def timings(self, q: Optional[dict[str, Any]], fp: dict[str, Any]) -> dict[str, Any]:
        """Task-specific entries of the record's `timings`."""
        return {}

    def protocol(self, settings: JobSettings) -> dict[str, Any]:
        """Task-specific entries of the record's `protocol`."""
        return {}

    def diagnostics(self, settings: JobSettings, qm: Any, calib: CalibData, model: BuiltModel) -> dict[str, Any]:
        """Record fields measured on the quantized model after its evaluation."""
        return {}

    def extra_fields(self, q: Optional[dict[str, Any]], fp: dict[str, Any], data: EvalData) -> dict[str, Any]:
        """Other record fields made from the evaluations."""
        return {}

    @abstractmethod
    def summary_line(self, record: dict[str, Any]) -> str:
        """The results part of the log line of a finished job."""


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make `cls` the task of `task.name=<cls.name>`."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is registered twice ({TASKS[cls.name].__qualname__}, {cls.__qualname__})")
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    """A fresh instance of the task registered as `name` (importing this module imports
    `ptqbench.tasks`, which registers the built-in tasks)."""
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is unknown; registered tasks: {', '.join(sorted(TASKS))} (task=NAME)")
    return TASKS[name]()
