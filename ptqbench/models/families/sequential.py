"""A plain `nn.Sequential` of layers: each child is one unit, every Linear/Conv2d input is other_in.
The smallest family there is (layer-level tests, toy pipelines)."""

from __future__ import annotations

from torch import nn

from ptqbench.models.families.base import BaseFamily, register_family
from ptqbench.models.structure import Unit


class Sequential(BaseFamily):
    name = "sequential"
    description = "a plain torch nn.Sequential of layers"

    def matches(self, model: nn.Module) -> bool:
        return type(model) is nn.Sequential

    def units(self, model: nn.Module) -> list[Unit]:
        return [Unit(name, child, child) for name, child in model.named_children()]


register_family(Sequential())
