"""Model families: one file each. Importing this package imports every module in it, and each
family module registers itself (`register_family`), so adding a family is adding one file.

`family_of` tries families in registration order: the built-in ones first, in `_FIRST`'s order,
then any other module of the package in name order."""

import importlib
import pkgutil

from ptqbench.models.families.base import FAMILIES, BaseFamily, ModelFamily, QuantBuilder, family_of, register_family

_FIRST = ("timm_vit", "timm_swin", "mmdet_swin", "sequential")

for _name in (*_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _FIRST)):
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["FAMILIES", "BaseFamily", "ModelFamily", "QuantBuilder", "family_of", "register_family"]
