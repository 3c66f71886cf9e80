"""Inspecting a trained network's split attention: how the r-softmax (radix 1: the sigmoid gate) spreads its
weight over the radix splits, per stage, block and class. ``python -m resnest_pl.inspect`` is the command line;
:func:`attention_stats` the same in Python. Imports inside this package are absolute, so its name never stands for
the standard library's ``inspect``."""

from resnest_pl.inspect.loading import Trained, load_trained
from resnest_pl.inspect.record import AttentionStats, record_attention, split_attention_blocks, summarise
from resnest_pl.inspect.run import attention_stats, write_inspection

__all__ = [
    "AttentionStats",
    "Trained",
    "attention_stats",
    "load_trained",
    "record_attention",
    "split_attention_blocks",
    "summarise",
    "write_inspection",
]
