"""The same architecture in timm and in the reference ``resnest`` package: their names and constructor arguments,
so that exported weights say where else they load with ``strict=True``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import ResNeStConfig
from .registry import get_variant, same_architecture

# Our names whose timm model has the same name; the other variants' timm names are their registry aliases.
TIMM_SAME_NAME = ("resnest14d", "resnest26d")


def timm_name(name: str, overrides: Mapping[str, Any]) -> str | None:
    """timm's model of the same architecture, or ``None`` when the overrides make one timm does not name."""
    variant = get_variant(name)
    if not same_architecture(variant.name, overrides, variant.name, {}):
        return None
    if variant.name in TIMM_SAME_NAME:
        return variant.name
    return next((alias for alias in variant.aliases if alias.startswith("resnest")), None)


def reference_name(name: str, overrides: Mapping[str, Any]) -> str | None:
    """The reference package's constructor (``resnest.torch.<name>``) of this architecture, if it has one."""
    variant = get_variant(name)
    if variant.name in TIMM_SAME_NAME or not same_architecture(variant.name, overrides, variant.name, {}):
        return None
    return variant.name


def reference_kwargs(cfg: ResNeStConfig) -> dict[str, Any] | None:
    """Arguments of the reference package's ``resnest.torch.resnet.ResNet(Bottleneck, ...)`` that build the
    same weights layout, or ``None`` when it cannot (width multiplier, small-input stem, other attention
    width, radix 0, other input channels)."""
    reference_fixed = dict(width_multiplier=1.0, small_input=False, reduction=4, min_attn_channels=32, in_chans=3)
    if any(getattr(cfg, k) != v for k, v in reference_fixed.items()) or cfg.radix < 1:
        return None
    return dict(
        layers=list(cfg.layers),
        radix=cfg.radix,
        groups=cfg.cardinality,
        bottleneck_width=cfg.bottleneck_width,
        deep_stem=cfg.deep_stem,
        stem_width=cfg.stem_width,
        avg_down=cfg.avg_down,
        avd=cfg.avd,
        avd_first=cfg.avd_first,
    )
