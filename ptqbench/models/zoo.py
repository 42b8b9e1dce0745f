"""The models ptqbench benchmarks, pinned to the timm tags whose FP accuracy the papers report."""

from __future__ import annotations

from dataclasses import dataclass

from ptqbench.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    arch: str
    tag: str
    family: str  # "vit" (ViT/DeiT) or "swin"

    @property
    def timm_name(self) -> str:
        return f"{self.arch}.{self.tag}"


MODELS: dict[str, ModelEntry] = {
    "vit_small": ModelEntry("vit_small_patch16_224", "augreg_in21k_ft_in1k", "vit"),
    "vit_base": ModelEntry("vit_base_patch16_224", "augreg_in21k_ft_in1k", "vit"),
    "deit_tiny": ModelEntry("deit_tiny_patch16_224", "fb_in1k", "vit"),
    "deit_small": ModelEntry("deit_small_patch16_224", "fb_in1k", "vit"),
    "deit_base": ModelEntry("deit_base_patch16_224", "fb_in1k", "vit"),
    "swin_tiny": ModelEntry("swin_tiny_patch4_window7_224", "ms_in1k", "swin"),
    "swin_small": ModelEntry("swin_small_patch4_window7_224", "ms_in1k", "swin"),
    "swin_base": ModelEntry("swin_base_patch4_window7_224", "ms_in22k_ft_in1k", "swin"),
}


def model_entry(name: str, arch: str | None = None, tag: str | None = None) -> ModelEntry:
    """The zoo entry for `name`, with optional arch/tag overrides from the config."""
    if name not in MODELS and not (arch and tag):
        raise ConfigError(
            f"unknown model {name!r}; choose one of {sorted(MODELS)} (model=NAME), "
            "or give model.arch and model.tag for another timm ViT/DeiT/Swin"
        )
    base = MODELS.get(name)
    return ModelEntry(
        arch or base.arch,
        tag or base.tag,
        base.family if base else ("swin" if "swin" in (arch or "") else "vit"),
    )
