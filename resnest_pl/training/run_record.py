"""What a training checkpoint records beyond the weights, and the check that a checkpoint fits the model.

Loads without Lightning (the trainer is only read), so the exporter and other readers of checkpoints may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..models import IncompatibleCheckpointError, describe_model, same_architecture
from ..models.weights import RUN_RECORD_KEY, state_mismatch
from .optim import MOVED_OPTIMIZERS, optimizer_spec
from .schedule import global_batch_size

if TYPE_CHECKING:
    import pytorch_lightning as pl

RUN_KEY = RUN_RECORD_KEY  # the checkpoint key of what a run was trained on (``run_record``), read by the exporter
# Data module attributes recorded in checkpoints, when the data module has them.
DATA_FIELDS = (
    "root",
    "num_classes",
    "crop_size",
    "eval_crop_size",
    "crop_pct",
    "interpolation",
    "mean",
    "std",
    "batch_size",
)
# How to evaluate, chosen per run: left out of checkpoints, whose hyper-parameters LightningCLI applies over the
# command line's (`validate --ckpt_path X --model.tta_hflip true` would otherwise evaluate without the flip).
EVALUATION_SWITCHES = ("class_metrics", "tta_hflip")


def _plain(value: Any) -> Any:
    """``value`` as built-in types only, so that checkpoints load with ``weights_only=True``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def run_record(trainer: pl.Trainer, class_names: list[str] | None) -> dict[str, Any]:
    """What a checkpoint was trained on and how, beyond the module's hyper-parameters: the class names, the
    data module's class and settings (``DATA_FIELDS``), the schedule length and global batch, and the
    metrics at save time. Only built-in types."""
    data = trainer.datamodule
    record: dict[str, Any] = {"class_names": list(class_names) if class_names else None}
    if data is not None:
        record["data"] = {"class_path": f"{type(data).__module__}.{type(data).__qualname__}"}
        record["data"].update({k: _plain(getattr(data, k)) for k in DATA_FIELDS if hasattr(data, k)})
    try:
        batch: int | None = global_batch_size(trainer)
    except (ValueError, AttributeError, TypeError):
        batch = None
    record["trainer"] = {
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "global_batch": batch,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
    }
    record["metrics"] = {
        k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1
    }
    return record


def saved_hyperparameters(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The module's hyper-parameters as a checkpoint keeps them: without the evaluation switches, with
    ``pretrained`` off (the weights are in the checkpoint: loading it must not fetch the pretrained source again)
    and the optimizer as its plain :func:`~resnest_pl.training.optim.optimizer_spec`."""
    hparams = dict(hparams)
    for key in EVALUATION_SWITCHES:
        hparams.pop(key, None)
    if hparams.get("pretrained"):
        hparams["pretrained"] = False
    if callable(hparams.get("optimizer")):
        spec = optimizer_spec(hparams.pop("optimizer"))
        if spec is None:
            from pytorch_lightning.utilities.rank_zero import rank_zero_warn  # here: this module needs no Lightning

            rank_zero_warn(
                "the optimizer is neither a class nor a functools.partial of one, so the checkpoint cannot "
                "record it; pass optimizer=... again when loading it to train further"
            )
        else:
            hparams["optimizer"] = spec
    return hparams


def check_architecture(
    checkpoint: Mapping[str, Any],
    model_name: str,
    model_overrides: Mapping[str, Any] | None,
    state_dict: Callable[[], Mapping[str, torch.Tensor]],
) -> None:
    """Refuse a checkpoint of another architecture than ``model_name`` with ``model_overrides``, in one line
    rather than Lightning's strict load's hundreds of keys. Its hyper-parameters say which model it holds; a
    checkpoint without them is compared tensor by tensor (classifier aside) with the module's ``state_dict()``."""
    ours = describe_model(model_name, model_overrides)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "model_name" in hparams:
        theirs = (hparams["model_name"], hparams.get("model_overrides") or {})
        if not same_architecture(*theirs, model_name, model_overrides or {}):
            raise IncompatibleCheckpointError(
                f"the checkpoint is {describe_model(*theirs)} but the model is {ours}; use the checkpoint's "
                "model settings (model.model_name, model.model_overrides) to resume or evaluate it, or start "
                "a new run with model.pretrained=<checkpoint> to fine-tune its weights in the same architecture"
            )
        return
    own = {k: v for k, v in state_dict().items() if not k.startswith("model.fc.")}
    state = {k: v for k, v in checkpoint.get("state_dict", {}).items() if not k.startswith("model.fc.")}
    problems = state_mismatch(own, state)
    if problems:
        raise IncompatibleCheckpointError(
            f"the checkpoint's weights do not fit the model {ours}: {problems}; use the model settings it "
            "was trained with"
        )


def with_moved_class_paths(value: Any) -> Any:
    """``value`` (a checkpoint's hyper-parameters, say) with every ``class_path`` that names a class's former home
    (:data:`~resnest_pl.training.optim.MOVED_OPTIMIZERS`) naming its current one; LightningCLI parses a
    checkpoint's hyper-parameters for ``--ckpt_path``, and would fail on a path that no longer imports."""
    if isinstance(value, Mapping):
        return {
            key: MOVED_OPTIMIZERS.get(item, item)
            if key == "class_path" and isinstance(item, str)
            else with_moved_class_paths(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [with_moved_class_paths(item) for item in value]
    return value
