"""Small builders shared by the tests."""

from __future__ import annotations

from resnest_pl.models import ResNeSt, create_model

TINY = dict(width_multiplier=0.25, stem_width=8, min_attn_channels=8)


def tiny_model(name: str = "resnest14d", num_classes: int = 10, **overrides: object) -> ResNeSt:
    """A ResNeSt-14 at a quarter width for CPU tests (same code paths as the real ones)."""
    return create_model(name, num_classes=num_classes, **{**TINY, **overrides})
