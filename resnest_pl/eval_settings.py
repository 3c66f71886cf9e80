"""A model's published evaluation settings as the defaults of a data module's config."""

from __future__ import annotations

from jsonargparse import Namespace

from .models import get_variant


def fill_published_eval_settings(config: Namespace) -> None:
    """Set the data module's ``eval_crop_size``, ``crop_pct`` and ``interpolation`` left at None to those the
    model's published top-1 was measured with (``resnest_pl.models.Variant``).

    Values set in a config file or on the command line are kept, and data modules without these arguments
    (digits, CIFAR) are left alone. ``config`` is the parsed config of one subcommand, changed in place.
    """
    init_args = config.data.get("init_args") if isinstance(config.data, Namespace) else None
    if init_args is None or "crop_pct" not in init_args:
        return
    variant = get_variant(config.model.model_name)
    published = {
        "eval_crop_size": variant.eval_crop,
        "crop_pct": variant.crop_pct,
        "interpolation": variant.interpolation,
    }
    for key, value in published.items():
        if init_args.get(key) is None:
            init_args[key] = value
