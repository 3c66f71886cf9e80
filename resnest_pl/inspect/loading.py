"""A trained network to inspect, with its evaluation preprocessing and class names: from a checkpoint of a
resnest_pl run, or from a folder written by ``python -m resnest_pl.export``."""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from resnest_pl.export import eval_settings, load_training_checkpoint, select_weights
from resnest_pl.models import ResNeSt, create_model
from resnest_pl.models.weights import EXPORT_WEIGHTS, exported_config, load_state_dict_checked
from resnest_pl.training.run_record import RUN_KEY

SETTINGS = ("mean", "std", "eval_crop", "crop_pct", "interpolation")


@dataclass
class Trained:
    """A network in eval mode, how its validation images were prepared (``SETTINGS``, as in an export's
    ``config.json``) and its class names when recorded."""

    model: ResNeSt
    settings: dict[str, Any]
    class_names: list[str] | None


def load_trained(source: str | PathLike) -> Trained:
    """Load a ``.ckpt`` of a resnest_pl run (its EMA weights when it kept them, which validation uses) or an
    export folder. Raises FileNotFoundError or ValueError with the fix in the message."""
    path = Path(source).expanduser()
    if path.is_dir() or path.name in EXPORT_WEIGHTS:
        return _from_export(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a .ckpt of a resnest_pl run (<run>/checkpoints/last.ckpt) "
            "or a folder written by python -m resnest_pl.export"
        )
    checkpoint = load_training_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    name, overrides = hparams["model_name"], dict(hparams.get("model_overrides") or {})
    model = create_model(name, num_classes=int(hparams["num_classes"]), **overrides)
    load_state_dict_checked(model, select_weights(checkpoint, None, path))
    names = (checkpoint.get(RUN_KEY) or {}).get("class_names")
    return Trained(model.eval(), eval_settings(checkpoint, name), names)


def _from_export(path: Path) -> Trained:
    config = exported_config(path)
    if config is None:
        raise FileNotFoundError(
            f"{path} holds no config.json, so it is no folder written by python -m resnest_pl.export; pass such a "
            "folder or a .ckpt of a resnest_pl run"
        )
    name = config["model_name"]
    model = create_model(
        name, num_classes=int(config["num_classes"]), pretrained=path, **(config.get("model_overrides") or {})
    )
    settings = {**eval_settings({}, name), **{k: config[k] for k in SETTINGS if config.get(k) is not None}}
    return Trained(model.eval(), settings, config.get("class_names"))
