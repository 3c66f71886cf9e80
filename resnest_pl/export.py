"""``python -m resnest_pl.export CKPT --out DIR``: a training checkpoint as weights anyone can load.

The folder holds ``model.safetensors`` (or ``model.pth``: a plain state dict for
``torch.load(weights_only=True)``; or ``model.onnx``) with the backbone's own keys, which load with ``strict=True``
into our ``create_model``, timm's matching model and the reference ``resnest`` package's; ``config.json`` (model,
classes, evaluation preprocessing, and timm's own keys, so that ``timm.create_model("local-dir:DIR",
pretrained=True)`` opens the folder); and ``README.md``, a model card (data, recipe, metrics, how to load,
citation). ``create_model(..., pretrained=DIR)`` reads the folder back.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from .errors import user_errors
from .model_card import model_card
from .models import (
    IncompatibleCheckpointError,
    create_model,
    describe_model,
    read_checkpoint,
    same_architecture,
)
from .models.eval_config import resolve_eval_config
from .models.twins import reference_name, timm_name
from .models.weights import EXPORT_CONFIG, RUN_RECORD_KEY, extract_state_dict, has_ema, state_mismatch
from .onnx_export import OPSET, check_onnx_available, write_onnx
from .provenance import data_differences

log = logging.getLogger(__name__)

FORMATS = {"safetensors": "model.safetensors", "pth": "model.pth", "onnx": "model.onnx"}
# timm's pretrained_cfg keys that say where the trunk starts and the classifier is (its resnest entries').
TIMM_LAYERS = {"first_conv": "conv1.0", "classifier": "fc"}


def load_training_checkpoint(path: str | PathLike) -> dict[str, Any]:
    """A checkpoint written by a ``ResNeStClassifier`` run (its hyper-parameters name the model)."""
    checkpoint = dict(read_checkpoint(path))
    if "model_name" not in (checkpoint.get("hyper_parameters") or {}):
        raise IncompatibleCheckpointError(
            f"{path} is not a checkpoint of a resnest_pl run (its hyper_parameters name no model); pass a "
            "checkpoint from <run>/checkpoints/"
        )
    return checkpoint


def select_weights(checkpoint: Mapping[str, Any], weights: str | None, path: str | PathLike) -> dict[str, torch.Tensor]:
    """The backbone's tensors (plain keys): the EMA (``"ema"``), the live weights (``"live"``), or the EMA when
    the run kept one (``None``)."""
    if weights not in (None, "ema", "live"):
        raise ValueError(f"weights must be 'ema' or 'live', got {weights!r}")
    if weights == "ema" and not has_ema(checkpoint):
        raise ValueError(f"{path} holds no EMA weights (the run had no model.ema_decay); use --weights live")
    state = checkpoint["current_model_state"] if weights == "live" and has_ema(checkpoint) else checkpoint["state_dict"]
    return extract_state_dict({"state_dict": state})


def average_states(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The mean of floating-point tensors (computed in float64, stored in their dtype); integer buffers such
    as BatchNorm's ``num_batches_tracked`` are taken from the last state."""
    last = states[-1]
    for state, name in zip(states[:-1], names[:-1], strict=True):
        problems = state_mismatch(last, state)
        if problems:
            raise IncompatibleCheckpointError(f"{name} has other weights than {names[-1]}: {problems}")
    averaged = {}
    for key, tensor in last.items():
        if tensor.is_floating_point():
            mean = torch.stack([state[key].double() for state in states]).mean(dim=0)
            averaged[key] = mean.to(tensor.dtype)
        else:
            averaged[key] = tensor.clone()
    return averaged


def eval_settings(checkpoint: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Evaluation preprocessing: the data module's settings recorded in the checkpoint when present (its
    ``datamodule_hyper_parameters``, then the attributes ``ResNeStClassifier`` records), else the variant's."""
    data = {
        **(checkpoint.get("datamodule_hyper_parameters") or {}),
        **(checkpoint.get(RUN_RECORD_KEY) or {}).get("data", {}),
    }
    # A setting left at None means "the model's published one at the training crop", as in the data modules.
    recorded = {
        "eval_crop_size": data.get("eval_crop_size") or data.get("eval_crop"),
        "crop_pct": data.get("crop_pct"),
        "interpolation": data.get("interpolation"),
    }
    evaluation = resolve_eval_config(name, data.get("crop_size"), **recorded)
    return {
        "mean": list(data.get("mean") or evaluation["mean"]),
        "std": list(data.get("std") or evaluation["std"]),
        "eval_crop": int(evaluation["eval_crop_size"]),
        "crop_pct": float(evaluation["crop_pct"]),
        "interpolation": str(evaluation["interpolation"]),
    }


def build_config(checkpoint: Mapping[str, Any], weights: str, sources: Sequence[str], fmt: str) -> dict[str, Any]:
    """The contents of ``config.json``."""
    hparams = checkpoint["hyper_parameters"]
    name, overrides = hparams["model_name"], dict(hparams.get("model_overrides") or {})
    record = checkpoint.get(RUN_RECORD_KEY) or {}
    evaluation = eval_settings(checkpoint, name)
    twin = timm_name(name, overrides)
    num_classes = int(hparams["num_classes"])
    config = {
        "model_name": name,
        "model_overrides": overrides,
        "num_classes": num_classes,
        "class_names": record.get("class_names"),
        **evaluation,
        "timm_name": twin,
        "reference_name": reference_name(name, overrides),
        "weights": weights,
        "sources": list(sources),
        "file": FORMATS[fmt],
        "provenance": record.get("provenance"),  # the code, software, machine and data of the run
        # timm's keys (``timm.create_model("local-dir:<folder>", pretrained=True)``, ``hf-hub:`` once pushed).
        "architecture": twin,
        "label_names": record.get("class_names"),
        "pretrained_cfg": {
            "input_size": [3, evaluation["eval_crop"], evaluation["eval_crop"]],
            "crop_pct": evaluation["crop_pct"],
            "interpolation": evaluation["interpolation"],
            "mean": evaluation["mean"],
            "std": evaluation["std"],
            "num_classes": num_classes,
            **TIMM_LAYERS,
        },
    }
    if twin is None:
        config["timm_note"] = f"timm has no model of these settings ({describe_model(name, overrides)})"
    if fmt == "onnx":
        config["onnx"] = {"opset": OPSET, "inputs": "images (batch, 3, H, W)", "outputs": "logits (batch, classes)"}
    return config


def _architecture(checkpoint: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    hparams = checkpoint["hyper_parameters"]
    return hparams["model_name"], dict(hparams.get("model_overrides") or {})


def _data_record(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return ((checkpoint.get(RUN_RECORD_KEY) or {}).get("provenance") or {}).get("data")


def warn_on_other_data(main: Mapping[str, Any], other: Mapping[str, Any], source: str | PathLike) -> None:
    """One warning line when a checkpoint to average was trained on other data than the main one (their
    provenance's data fingerprints differ): an average across data sets is seldom meant."""
    differences = data_differences(_data_record(other), _data_record(main))
    if differences:
        log.warning(
            "warning: %s was trained on other data than the checkpoint it is averaged with (differing: %s); "
            "average checkpoints of one run",
            source,
            ", ".join(differences),
        )


def export(
    checkpoint: str | PathLike,
    out: str | PathLike,
    weights: str | None = None,
    average: Sequence[str | PathLike] = (),
    fmt: str = "safetensors",
) -> Path:
    """Write ``checkpoint``'s weights (``weights``: ``"ema"``, ``"live"``, or the EMA when there is one),
    averaged with those of ``average`` if given, as ``out/model.safetensors`` (``fmt="pth"``: ``model.pth``)
    with ``config.json`` and a ``README.md`` model card. Returns the weights file."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        check_onnx_available()
    main = load_training_checkpoint(checkpoint)
    chosen = weights or ("ema" if has_ema(main) else "live")
    sources = [*map(str, average), str(checkpoint)]
    states = []
    for source in sources[:-1]:
        other = load_training_checkpoint(source)
        theirs = _architecture(other)
        if not same_architecture(*theirs, *_architecture(main)):
            raise IncompatibleCheckpointError(
                f"{source} is {describe_model(*theirs)} but {checkpoint} is {describe_model(*_architecture(main))}; "
                "average checkpoints of one run"
            )
        warn_on_other_data(main, other, source)
        states.append(select_weights(other, weights, source))
    states.append(select_weights(main, weights, checkpoint))
    state = average_states(states, sources) if len(states) > 1 else states[0]
    config = build_config(main, chosen, sources, fmt)
    model = create_model(config["model_name"], num_classes=config["num_classes"], **config["model_overrides"])
    model.load_state_dict(state, strict=True)  # the export must load as it is, nothing left over or missing
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FORMATS[fmt]
    state = {k: v.contiguous() for k, v in state.items()}
    if fmt == "onnx":
        config["onnx"]["max_abs_diff"] = write_onnx(model, path, config["eval_crop"])
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path, metadata={"format": "pt"})
    else:
        torch.save(state, path)
    (folder / EXPORT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(main, config))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command line; a bad input ends as :mod:`resnest_pl.errors` says (one ``error:`` line, exit status 2)."""
    parser = argparse.ArgumentParser(prog="python -m resnest_pl.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint of a resnest_pl run (e.g. runs/x/checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="folder to write model.safetensors, config.json, README.md")
    parser.add_argument(
        "--weights", choices=("ema", "live"), default=None, help="EMA or live weights (default: the EMA if kept)"
    )
    parser.add_argument(
        "--average",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="more checkpoints of the same run to average with CHECKPOINT (integer buffers come from CHECKPOINT)",
    )
    parser.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default="safetensors",
        dest="fmt",
        help="safetensors (default); pth: a plain state dict for torch.load(weights_only=True); onnx: model.onnx "
        f"(opset {OPSET}, dynamic batch), checked against PyTorch in onnxruntime",
    )
    args = parser.parse_args(argv)
    with user_errors(ValueError, OSError):
        path = export(args.checkpoint, args.out, args.weights, args.average, args.fmt)
    print(f"wrote {path}, {path.parent / EXPORT_CONFIG} and {path.parent / 'README.md'}")
    if args.fmt == "onnx":
        onnx = json.loads((path.parent / EXPORT_CONFIG).read_text())["onnx"]
        print(f"onnxruntime parity: max |ONNX - PyTorch| = {onnx['max_abs_diff']:.3g} (opset {onnx['opset']})")


if __name__ == "__main__":
    main()
