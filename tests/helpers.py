"""Small builders shared by the tests."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from resnest_pl.models import ResNeSt, create_model

TINY = dict(width_multiplier=0.25, stem_width=8, min_attn_channels=8)
TINY_SMALL_INPUT = {**TINY, "small_input": True}


def tiny_model(name: str = "resnest14d", num_classes: int = 10, **overrides: object) -> ResNeSt:
    """A ResNeSt-14 at a quarter width for CPU tests (same code paths as the real ones)."""
    return create_model(name, num_classes=num_classes, **{**TINY, **overrides})


def make_trainer(**kwargs: Any) -> pl.Trainer:
    """A quiet one-CPU Trainer without logger or checkpoints; ``kwargs`` override."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(kwargs)
    return pl.Trainer(**options)
