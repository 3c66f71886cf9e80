"""How a model is evaluated: its variant's published evaluation, moved with the training crop.

One rule for the CLI and for data modules built in Python: unless ``eval_crop_size`` is set, evaluation keeps the
variant's published ratio of eval to train crop (1 for ResNeSt-50, 256/224, 320/256, 416/320 for -101, -200, -269)
at the data's training crop, with the published crop_pct rule and interpolation at that size
(:meth:`resnest_pl.models.Variant.eval_settings`). The ImageNet recipes, trained at their published crops, so
evaluate exactly as published; a folder of 32-pixel images trained with ``crop_size: 32`` is evaluated near 32 px.
"""

from __future__ import annotations

import logging
from typing import Any

from jsonargparse import Namespace

from .models import get_variant

log = logging.getLogger(__name__)

EVAL_KEYS = ("eval_crop_size", "crop_pct", "interpolation")
# An explicit eval crop further than this factor from the training crop is most likely a mistake.
FAR_FACTOR = 2.0


def published_eval_settings(model_name: str, crop_size: int) -> dict[str, Any]:
    """``eval_crop_size``, ``crop_pct`` and ``interpolation`` of ``model_name`` trained at ``crop_size``."""
    eval_crop, crop_pct, interpolation = get_variant(model_name).eval_settings(crop_size)
    return {"eval_crop_size": eval_crop, "crop_pct": crop_pct, "interpolation": interpolation}


def resolve_eval_settings(model_name: str, crop_size: int, requested: dict[str, Any]) -> dict[str, Any]:
    """The settings in ``requested`` (keys of ``EVAL_KEYS``) with those left at None filled by
    :func:`published_eval_settings`."""
    published = published_eval_settings(model_name, crop_size)
    return {key: published[key] if requested.get(key) is None else requested[key] for key in EVAL_KEYS}


def warn_if_far(crop_size: int, eval_crop_size: int) -> None:
    """One warning line when an explicit ``eval_crop_size`` is more than 2x or less than 1/2x the training crop."""
    if not crop_size / FAR_FACTOR <= eval_crop_size <= crop_size * FAR_FACTOR:
        log.warning(
            "warning: data.eval_crop_size %d is far from the training crop %d (more than 2x or less than 1/2x); "
            "evaluation at another scale than training usually loses accuracy; leave eval_crop_size unset to "
            "evaluate at the model's published ratio to the training crop",
            eval_crop_size,
            crop_size,
        )


def fill_published_eval_settings(config: Namespace) -> None:
    """Set the data module's ``eval_crop_size``, ``crop_pct`` and ``interpolation`` left at None by
    :func:`resolve_eval_settings` for the config's model and the data's ``crop_size``, so that the saved
    ``config.yaml`` holds them.

    Values set in a config file or on the command line are kept, and data modules without these arguments
    (digits, CIFAR) are left alone. ``config`` is the parsed config of one subcommand, changed in place.
    """
    init_args = config.data.get("init_args") if isinstance(config.data, Namespace) else None
    if init_args is None or "crop_pct" not in init_args:
        return
    requested = {key: init_args.get(key) for key in EVAL_KEYS}
    for key, value in resolve_eval_settings(config.model.model_name, init_args.crop_size, requested).items():
        init_args[key] = value
