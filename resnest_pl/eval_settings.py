"""The CLI's and data modules' use of the published evaluation (:mod:`resnest_pl.models.eval_config`, its one
source): filling the parsed config so that ``config.yaml`` records the settings, and warning on an explicit eval
crop far from the training crop."""

from __future__ import annotations

import logging

from jsonargparse import Namespace

from .models.eval_config import EVAL_KEYS, resolve_eval_settings

log = logging.getLogger(__name__)

# An explicit eval crop further than this factor from the training crop is most likely a mistake.
FAR_FACTOR = 2.0


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
