"""Model families: one file each, registered on import (tried in this order by `family_of`)."""

from ptqbench.models.families.base import FAMILIES, BaseFamily, ModelFamily, QuantBuilder, family_of, register_family
from ptqbench.models.families import timm_vit, timm_swin, mmdet_swin, sequential  # noqa: F401  (registers them)

__all__ = ["FAMILIES", "BaseFamily", "ModelFamily", "QuantBuilder", "family_of", "register_family"]
