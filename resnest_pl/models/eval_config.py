"""A model's published evaluation, for any training crop: the one source that the data modules, the CLI, the
export and notebooks read (timm's ``resolve_data_config`` answers the same question for timm models).

Unless ``eval_crop_size`` is set, evaluation keeps the variant's published ratio of eval to train crop (1 for
ResNeSt-50; 256/224, 320/256, 416/320 for -101, -200, -269) at the given training crop, with the published crop_pct
rule and interpolation at that size (:meth:`resnest_pl.models.Variant.eval_settings`). The ImageNet recipes, trained
at their published crops, so evaluate exactly as published; a folder of 32-pixel images trained at ``crop_size=32``
is evaluated near 32 px.
"""

from __future__ import annotations

from typing import Any

from .registry import get_variant

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_KEYS = ("eval_crop_size", "crop_pct", "interpolation")


def published_eval_settings(model_name: str, crop_size: int) -> dict[str, Any]:
    """``eval_crop_size``, ``crop_pct`` and ``interpolation`` of ``model_name`` trained at ``crop_size``."""
    eval_crop, crop_pct, interpolation = get_variant(model_name).eval_settings(crop_size)
    return {"eval_crop_size": eval_crop, "crop_pct": crop_pct, "interpolation": interpolation}


def resolve_eval_settings(model_name: str, crop_size: int, requested: dict[str, Any]) -> dict[str, Any]:
    """The settings in ``requested`` (keys of ``EVAL_KEYS``) with those left at None filled by
    :func:`published_eval_settings`."""
    published = published_eval_settings(model_name, crop_size)
    return {key: published[key] if requested.get(key) is None else requested[key] for key in EVAL_KEYS}


def resolve_eval_config(model_name: str, crop_size: int | None = None, **requested: Any) -> dict[str, Any]:
    """The evaluation preprocessing of ``model_name`` trained at ``crop_size`` (default: its published training
    crop): ``eval_crop_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std`` and timm's ``input_size``.

    Settings given in ``requested`` (``eval_crop_size=...``, ``crop_pct=...``, ``interpolation=...``) are kept,
    as the data modules keep those set explicitly::

        >>> resolve_eval_config("resnest101")["eval_crop_size"]
        256
        >>> resolve_eval_config("resnest14d", crop_size=32)["eval_crop_size"]
        32
    """
    unknown = set(requested) - set(EVAL_KEYS)
    if unknown:
        raise TypeError(f"unknown evaluation settings {sorted(unknown)}; choose from {list(EVAL_KEYS)}")
    train_crop = get_variant(model_name).train_crop if crop_size is None else crop_size
    settings = resolve_eval_settings(model_name, train_crop, requested)
    crop = settings["eval_crop_size"]
    return {**settings, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, crop, crop)}
