"""A model as a sequence of units (embedding, blocks, head), so calibration data can be streamed
through it one unit at a time.

Block-wise methods (ERQ, GPTQ, block reconstruction) need each block's input for the whole
calibration set. Running the units in order reproduces `model(x)` exactly; a method keeps only the
current unit's input and output in memory instead of every layer's activations. The units come
from the model's family (ptqbench.models.families); a patched model carries them as
`QuantizedModel.units`.
"""

from __future__ import annotations

from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.models.families import family_of
from ptqbench.models.structure import Unit


def model_units(model: nn.Module) -> list[Unit]:
    """The units of `model`, in forward order; a ConfigError when its family has none."""
    family = family_of(model)
    units = family.units(model)
    if not units:
        raise ConfigError(f"block-wise methods cannot split {type(model).__name__} into blocks: model family "
                          f"{family.name} ({family.description}) gives no units")
    return units
