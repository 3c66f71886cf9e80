"""Every Lightning callback of the package, one concept per module, re-exported here.

Enable them from a LightningCLI config under ``trainer.callbacks``::

    trainer:
      callbacks:
        - class_path: resnest_pl.callbacks.DropBlockSchedule
        - class_path: resnest_pl.callbacks.ImageThroughputMonitor
          init_args: {window_size: 50}

The CLI adds ``LastCheckpoint``, ``PredictionCSVWriter`` and ``KeepHostMemory`` to every run (a config entry of the
same class replaces the default) and saves its config with ``LoggedConfigCallback``. The module attaches
``RecordProvenance``, and ``FreezeBackbone`` and ``FusedEMAWeightAveraging`` when ``model.freeze_backbone_epochs``
and ``model.ema_decay`` ask for them: they need no entry.

Optuna's pruning callback stays in :mod:`resnest_pl.tune.pruning` (``ReportToStudy``): it exists only inside a
tune trial, which adds it itself, and it imports optuna, which the rest of the package does not need.
"""

from .checkpointing import LastCheckpoint
from .dropblock import DropBlockSchedule
from .ema import FusedEMAWeightAveraging
from .freeze_backbone import FreezeBackbone
from .host_memory import KeepHostMemory
from .logged_config import LoggedConfigCallback
from .prediction import PredictionCSVWriter
from .provenance import RecordProvenance
from .throughput import ImageThroughputMonitor

__all__ = [
    "DropBlockSchedule",
    "FreezeBackbone",
    "FusedEMAWeightAveraging",
    "ImageThroughputMonitor",
    "KeepHostMemory",
    "LastCheckpoint",
    "LoggedConfigCallback",
    "PredictionCSVWriter",
    "RecordProvenance",
]
