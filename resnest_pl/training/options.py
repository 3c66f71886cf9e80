"""The module's settings that cannot work, refused when it is built (the CLI shows the error in one line)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def check_options(hparams: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first of ``ResNeStClassifier``'s arguments (``hparams``) out of its range."""
    if hparams["num_classes"] < 2:
        raise ValueError(f"num_classes must be >= 2; got {hparams['num_classes']}")
    warmup_epochs, min_lr, mix_off_epochs = (hparams[k] for k in ("warmup_epochs", "min_lr", "mix_off_epochs"))
    if warmup_epochs < 0 or min_lr < 0 or mix_off_epochs < 0:
        raise ValueError(
            f"warmup_epochs, min_lr and mix_off_epochs must be >= 0; got {warmup_epochs}, {min_lr}, {mix_off_epochs}"
        )
    ema_decay = hparams["ema_decay"]
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in (0, 1), e.g. 0.9998, or be null to disable; got {ema_decay}")
    if hparams["ema_every_n_steps"] < 1:
        raise ValueError(f"ema_every_n_steps must be >= 1; got {hparams['ema_every_n_steps']}")
    layer_decay = hparams["layer_decay"]
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(
            f"layer_decay must lie in (0, 1], e.g. 0.7 (each stage below the head learns 0.7x slower), or be null "
            f"to disable; got {layer_decay}"
        )
    if hparams["freeze_backbone_epochs"] < 0:
        raise ValueError(
            "freeze_backbone_epochs must be >= 0 (0: train everything from the start); got "
            f"{hparams['freeze_backbone_epochs']}"
        )
