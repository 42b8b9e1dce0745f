"""The models ptqbench benchmarks, pinned to the timm tags whose FP accuracy the papers report."""

from __future__ import annotations

from dataclasses import dataclass

from ptqbench.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    arch: str
    tag: str

    @property
    def timm_name(self) -> str:
        return f"{self.arch}.{self.tag}"


MODELS: dict[str, ModelEntry] = {
    "vit_small": ModelEntry("vit_small_patch16_224", "augreg_in21k_ft_in1k"),
    "vit_base": ModelEntry("vit_base_patch16_224", "augreg_in21k_ft_in1k"),
    "deit_tiny": ModelEntry("deit_tiny_patch16_224", "fb_in1k"),
    "deit_small": ModelEntry("deit_small_patch16_224", "fb_in1k"),
    "deit_base": ModelEntry("deit_base_patch16_224", "fb_in1k"),
    "swin_tiny": ModelEntry("swin_tiny_patch4_window7_224", "ms_in1k"),
    "swin_small": ModelEntry("swin_small_patch4_window7_224", "ms_in1k"),
    "swin_base": ModelEntry("swin_base_patch4_window7_224", "ms_in22k_ft_in1k"),
}


def model_entry(name: str, arch: str | None = None, tag: str | None = None) -> ModelEntry:
    """The zoo entry for `name`, with optional arch/tag overrides from the config.

    An architecture outside the zoo is checked before any work starts: timm must know it, and a
    registered model family must know the network timm builds for it (built on the meta device:
    no memory, no weights)."""
    if name not in MODELS and not (arch and tag):
        raise ConfigError(
            f"unknown model {name!r}; choose one of {sorted(MODELS)} (model=NAME), "
            "or give model.arch and model.tag for another timm ViT/DeiT/Swin"
        )
    base = MODELS.get(name)
    entry = ModelEntry(arch or base.arch, tag or base.tag)
    if base is None or entry.arch != base.arch:
        check_architecture(entry.arch)
    return entry


def check_architecture(arch: str) -> str:
    """The model family of timm architecture `arch`; a ConfigError naming the fix otherwise.
    (Imports timm and torch here: the zoo's table is read by light modules such as the report.)"""
    import timm
    import torch

    from ptqbench.models.families import family_of

    if "." in arch:
        raise ConfigError(f"model.arch={arch!r}: give the architecture alone; its pretrained tag goes in model.tag")
    if not timm.is_model(arch):
        raise ConfigError(f"model.arch={arch!r} is not a timm architecture; "
                          "see timm.list_models('vit_*'), timm.list_models('deit_*'), timm.list_models('swin_*')")
    with torch.device("meta"):
        skeleton = timm.create_model(arch, pretrained=False)
    try:
        return family_of(skeleton).name
    except ConfigError as e:
        raise ConfigError(f"model.arch={arch}: {e}") from None
