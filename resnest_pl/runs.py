"""A run's folder: the one key that names it, the guard against a fit overwriting another run's ``last.ckpt``,
and where a run's own ``config.yaml`` is."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from .models import describe_model, same_architecture
from .models.weights import RUN_RECORD_KEY

CONFIG_NAME = "config.yaml"  # what LightningCLI's SaveConfigCallback writes into the run's log folder


class RunFolderError(ValueError):
    """A fit would overwrite the checkpoints of another run."""


def plain(value: Any) -> Any:
    """``value`` with built-in types only (paths and other objects as strings), so that YAML files written from it
    (a logger's ``hparams.yaml``) load with ``yaml.safe_load``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def set_run_dir(config: Namespace, run_dir: str) -> None:
    """Root checkpoints (``trainer.default_root_dir``) and every logger's ``save_dir`` in ``run_dir``."""
    config.trainer.default_root_dir = run_dir
    loggers = config.trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        if init_args is not None and "save_dir" in init_args:
            init_args.save_dir = run_dir


def run_config_near(ckpt_path: str | os.PathLike) -> Path | None:
    """The ``config.yaml`` of the run that wrote ``ckpt_path`` (``<run>/checkpoints/x.ckpt``): the newest one in
    the run folder written before the checkpoint (later ones are of runs that only read it)."""
    path = Path(ckpt_path).resolve()
    saved = path.stat().st_mtime
    found = [config for config in path.parent.parent.rglob(CONFIG_NAME) if config.stat().st_mtime <= saved]
    return max(found, key=lambda config: config.stat().st_mtime) if found else None


def classes_mismatch(theirs: int, ours: int, stage: str | None, ckpt_path: str | None) -> str:
    """Why a checkpoint with ``theirs`` classes does not load into a model of ``ours``, and what to do: fine-tune
    it in a new run (fit), or evaluate it with its own run's config (validate, test, predict)."""
    problem = f"the checkpoint's classifier has {theirs} classes but this model has {ours}"
    stage = getattr(stage, "value", stage)  # Lightning's TrainerFn
    if stage == "fit" or ckpt_path is None:
        return (
            f"{problem}; to fine-tune on {ours} classes, start a new run with model.pretrained=<checkpoint> "
            "(keeps the trunk, new classifier) instead of resuming it with --ckpt_path"
        )
    config = run_config_near(ckpt_path)
    where = str(config) if config else f"<run folder>/**/{CONFIG_NAME}"
    return (
        f"{problem} (this config's data); to {stage} the checkpoint, pass the config of the run that wrote it, "
        f"which Lightning saved in its folder: --config {where} --ckpt_path {ckpt_path}"
    )


def _run_of(checkpoint: Mapping[str, Any]) -> tuple[str, dict, list | None, int | None, dict]:
    hparams = checkpoint.get("hyper_parameters") or {}
    record = checkpoint.get(RUN_RECORD_KEY) or {}
    weight = (checkpoint.get("state_dict") or {}).get("model.fc.weight")
    classes = hparams.get("num_classes") or (None if weight is None else int(weight.shape[0]))
    return (
        hparams.get("model_name", "?"),
        dict(hparams.get("model_overrides") or {}),
        record.get("class_names"),
        classes,
        record.get("data") or {},
    )


def _describe(name: str, overrides: dict, classes: int | None, data: Mapping[str, Any]) -> str:
    where = " ".join(str(data[key]).rpartition(".")[2] for key in ("class_path", "root") if data.get(key))
    return f"{describe_model(name, overrides)}, {classes} classes{', ' + where if where else ''}"


def _same_data(recorded: Mapping[str, Any], ours: Mapping[str, str]) -> bool:
    for key, value in ours.items():
        theirs = recorded.get(key)
        if theirs is None:
            continue
        if key == "root" and Path(str(theirs)).resolve() != Path(value).resolve():
            return False
        if key == "class_path" and str(theirs).rpartition(".")[2] != value.rpartition(".")[2]:
            return False  # by class name: a data module moved to another file is the same data module
    return True


def check_run_folder(last: Path, model_hparams: Mapping[str, Any], data: Any) -> None:
    """Refuse a new fit whose ``last.ckpt`` would replace that of another run: another architecture, other
    classes, or another data module or data folder. Raises :class:`RunFolderError` naming the keys to change."""
    if not last.is_file():
        return
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable last.ckpt is no run to protect
        return
    name, overrides, names, classes, recorded = _run_of(checkpoint)
    our_name, our_overrides = model_hparams["model_name"], model_hparams["model_overrides"] or {}
    our_classes, our_names = model_hparams["num_classes"], getattr(data, "class_names", None)
    ours = {"class_path": f"{type(data).__module__}.{type(data).__qualname__}"}
    if getattr(data, "root", None) is not None:
        ours["root"] = str(data.root)
    same = same_architecture(name, overrides, our_name, our_overrides) and classes == our_classes
    same = same and not (names and our_names and list(names) != list(our_names)) and _same_data(recorded, ours)
    if not same:
        theirs = _describe(name, overrides, classes, recorded)
        mine = _describe(our_name, our_overrides, our_classes, ours)
        raise RunFolderError(
            f"{last} belongs to another run ({theirs}) than this fit ({mine}); give this run its own folder with "
            "--run_dir runs/<name>, resume that run with --ckpt_path last, or replace it with --overwrite true"
        )
