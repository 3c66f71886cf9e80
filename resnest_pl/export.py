"""``python -m resnest_pl.export CKPT --out DIR``: a training checkpoint as weights anyone can load.

The folder holds ``model.safetensors`` (or ``model.pth``: a plain state dict for
``torch.load(weights_only=True)``) with the backbone's own keys, which load with ``strict=True`` into our
``create_model``, timm's matching model and the reference ``resnest`` package's; ``config.json`` (model,
classes, evaluation preprocessing); and ``README.md``, a model card (data, recipe, metrics, how to load,
citation). ``create_model(..., pretrained=DIR)`` reads the folder back.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .models import (
    IncompatibleCheckpointError,
    ResNeStConfig,
    create_model,
    describe_model,
    get_variant,
    read_checkpoint,
    same_architecture,
)
from .models.weights import EXPORT_CONFIG, extract_state_dict, state_mismatch
from .module import RUN_KEY

WEIGHT_LABELS = {"ema": "EMA", "live": "live"}
FORMATS = {"safetensors": "model.safetensors", "pth": "model.pth"}
# Our names whose timm model has the same name; the other variants' timm names are their registry aliases.
TIMM_SAME_NAME = ("resnest14d", "resnest26d")
CITATION = """@article{zhang2020resnest,
  title={ResNeSt: Split-Attention Networks},
  author={Zhang, Hang and Wu, Chongruo and Zhang, Zhongyue and Zhu, Yi and Lin, Haibin and Zhang, Zhi and
          Sun, Yue and He, Tong and Mueller, Jonas and Manmatha, R. and Li, Mu and Smola, Alexander},
  journal={arXiv preprint arXiv:2004.08955},
  year={2020}
}"""


def load_training_checkpoint(path: str | PathLike) -> dict[str, Any]:
    """A checkpoint written by a ``ResNeStClassifier`` run (its hyper-parameters name the model)."""
    checkpoint = dict(read_checkpoint(path))
    if "model_name" not in (checkpoint.get("hyper_parameters") or {}):
        raise IncompatibleCheckpointError(
            f"{path} is not a checkpoint of a resnest_pl run (its hyper_parameters name no model); pass a "
            "checkpoint from <run>/checkpoints/"
        )
    return checkpoint


def has_ema(checkpoint: Mapping[str, Any]) -> bool:
    """Whether the run kept an EMA: Lightning's ``EMAWeightAveraging`` saves the averaged weights as
    ``state_dict`` and moves the live ones to ``current_model_state``."""
    return "current_model_state" in checkpoint


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


def timm_name(name: str, overrides: Mapping[str, Any]) -> str | None:
    """timm's model of the same architecture, or ``None`` when the overrides make one timm does not name."""
    variant = get_variant(name)
    if not same_architecture(variant.name, overrides, variant.name, {}):
        return None
    if variant.name in TIMM_SAME_NAME:
        return variant.name
    return next((alias for alias in variant.aliases if alias.startswith("resnest")), None)


def reference_name(name: str, overrides: Mapping[str, Any]) -> str | None:
    """The reference package's constructor (``resnest.torch.<name>``) of this architecture, if it has one."""
    variant = get_variant(name)
    if variant.name in TIMM_SAME_NAME or not same_architecture(variant.name, overrides, variant.name, {}):
        return None
    return variant.name


def reference_kwargs(cfg: ResNeStConfig) -> dict[str, Any] | None:
    """Arguments of the reference package's ``resnest.torch.resnet.ResNet(Bottleneck, ...)`` that build the
    same weights layout, or ``None`` when it cannot (width multiplier, small-input stem, other attention
    width, radix 0, other input channels)."""
    reference_fixed = dict(width_multiplier=1.0, small_input=False, reduction=4, min_attn_channels=32, in_chans=3)
    if any(getattr(cfg, k) != v for k, v in reference_fixed.items()) or cfg.radix < 1:
        return None
    return dict(
        layers=list(cfg.layers),
        radix=cfg.radix,
        groups=cfg.cardinality,
        bottleneck_width=cfg.bottleneck_width,
        deep_stem=cfg.deep_stem,
        stem_width=cfg.stem_width,
        avg_down=cfg.avg_down,
        avd=cfg.avd,
        avd_first=cfg.avd_first,
    )


def eval_settings(checkpoint: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Evaluation preprocessing: the data module's settings recorded in the checkpoint when present (its
    ``datamodule_hyper_parameters``, then the attributes ``ResNeStClassifier`` records), else the variant's."""
    variant = get_variant(name)
    data = {**(checkpoint.get("datamodule_hyper_parameters") or {}), **(checkpoint.get(RUN_KEY) or {}).get("data", {})}
    # A data module argument left at None means "the model's published setting" (resnest_pl.eval_settings).
    crop_pct = data.get("crop_pct")
    return {
        "mean": list(data.get("mean") or IMAGENET_MEAN),
        "std": list(data.get("std") or IMAGENET_STD),
        "eval_crop": int(data.get("eval_crop_size") or data.get("eval_crop") or variant.eval_crop),
        "crop_pct": float(variant.crop_pct if crop_pct is None else crop_pct),
        "interpolation": str(data.get("interpolation") or variant.interpolation),
    }


def best_and_monitor(checkpoint: Mapping[str, Any]) -> tuple[str | None, float | None, str | None]:
    """``(monitor, best score, best path)`` from the checkpoint's ``ModelCheckpoint`` state."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("monitor"):
            score = state.get("best_model_score")
            value = float(score) if score is not None else None
            return state["monitor"], value, state.get("best_model_path") or None
    return None, None, None


def build_config(checkpoint: Mapping[str, Any], weights: str, sources: Sequence[str], fmt: str) -> dict[str, Any]:
    """The contents of ``config.json``."""
    hparams = checkpoint["hyper_parameters"]
    name, overrides = hparams["model_name"], dict(hparams.get("model_overrides") or {})
    record = checkpoint.get(RUN_KEY) or {}
    return {
        "model_name": name,
        "model_overrides": overrides,
        "num_classes": int(hparams["num_classes"]),
        "class_names": record.get("class_names"),
        **eval_settings(checkpoint, name),
        "timm_name": timm_name(name, overrides),
        "reference_name": reference_name(name, overrides),
        "weights": weights,
        "sources": list(sources),
        "file": FORMATS[fmt],
    }


def _known(value: Any) -> str:
    return "(not recorded)" if value is None else str(value)


def _recipe_lines(checkpoint: Mapping[str, Any]) -> list[str]:
    hparams = checkpoint["hyper_parameters"]
    record = checkpoint.get(RUN_KEY) or {}
    trainer = record.get("trainer") or {}
    optimizer = hparams.get("optimizer") or {}
    init_args = optimizer.get("init_args", {}) if isinstance(optimizer, Mapping) else {}
    lr = init_args.get("lr", "(class default)")
    scaled = " per 256 images, scaled linearly by the global batch" if hparams.get("scale_lr") else ""
    mixing = [f"{k} {hparams[k]}" for k in ("mixup_alpha", "cutmix_alpha") if hparams.get(k)]
    ema = f"decay {hparams['ema_decay']}" if hparams.get("ema_decay") else "off"
    return [
        f"- optimizer: `{optimizer.get('class_path', optimizer) if isinstance(optimizer, Mapping) else optimizer}`"
        f" {json.dumps(init_args)}",
        f"- learning rate: {lr}{scaled}; {hparams.get('warmup_epochs')} warm-up epochs, cosine to "
        f"{hparams.get('min_lr')}",
        f"- epochs: {_known(trainer.get('max_epochs'))} planned (max_steps {_known(trainer.get('max_steps'))}); "
        f"saved at epoch {checkpoint.get('epoch')}, step {checkpoint.get('global_step')}",
        f"- global batch: {_known(trainer.get('global_batch'))} ({_known(trainer.get('world_size'))} process(es), "
        f"precision {_known(trainer.get('precision'))})",
        f"- label smoothing: {hparams.get('label_smoothing')}",
        f"- mixup / cutmix: {', '.join(mixing) or 'off'}",
        f"- EMA: {ema}",
    ]


def _metric_caveats(checkpoint: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """What the metrics above do not measure: the exported weights when they are not the validated ones."""
    caveats = []
    if config["weights"] == "live" and has_ema(checkpoint):
        caveats.append(
            "- these scores are the EMA weights' (validation uses them); the exported live weights were not validated"
        )
    if len(config["sources"]) > 1:
        caveats.append(
            f"- these scores are `{config['sources'][-1]}`'s; the average of the checkpoints was not validated"
        )
    return caveats


def _snippet(imports: list[str], build: str, load: str) -> list[str]:
    """A fenced Python block that builds a model and loads the export into it."""
    return ["```python", *imports, "", "folder = 'path/to/this/folder'", build, f"model.load_state_dict({load})", "```"]


def model_card(checkpoint: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The ``README.md`` of an export."""
    record = checkpoint.get(RUN_KEY) or {}
    data = record.get("data") or {}
    name, overrides = config["model_name"], config["model_overrides"]
    cfg = get_variant(name).config.replace(**overrides)
    monitor, best, best_path = best_and_monitor(checkpoint)
    final = record.get("metrics") or {}
    file = config["file"]
    if file.endswith(".safetensors"):
        load_import, load = "from safetensors.torch import load_file", f"load_file(f'{{folder}}/{file}')"
    else:
        load_import, load = "import torch", f"torch.load(f'{{folder}}/{file}', weights_only=True)"
    args = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    ours_args = f"{name!r}, num_classes={config['num_classes']}, pretrained=folder" + (f", {args}" if args else "")
    names = config["class_names"]
    lines = [
        f"# {describe_model(name, overrides)}, {config['num_classes']} classes",
        "",
        'A ResNeSt (Zhang et al., "ResNeSt: Split-Attention Networks", arXiv:2004.08955) trained with '
        "resnest_pl, exported by `python -m resnest_pl.export` from "
        f"{', '.join(f'`{s}`' for s in config['sources'])} ({WEIGHT_LABELS[config['weights']]} weights"
        + (f", the average of {len(config['sources'])} checkpoints" if len(config["sources"]) > 1 else "")
        + ").",
        "",
        "## Data",
        "",
        f"- data module: `{data.get('class_path', 'unknown')}`, root: `{data.get('root', '(none)')}`",
        f"- {config['num_classes']} classes: " + (", ".join(names) if names else "(names not recorded)"),
        f"- evaluation: resize the short side to {config['eval_crop']} / {config['crop_pct']:.3f} "
        f"({config['interpolation']}), centre crop {config['eval_crop']}, normalise with mean "
        f"{config['mean']} and std {config['std']}",
        "",
        "## Recipe",
        "",
        *_recipe_lines(checkpoint),
        "",
        "## Metrics",
        "",
        f"- best: {monitor} = {best:.4f} ({best_path})" if best is not None else "- best: (no monitored checkpoint)",
        "- final (when the checkpoint was saved): "
        + (", ".join(f"{k} = {v:.4f}" for k, v in sorted(final.items())) or "(not recorded)"),
        *_metric_caveats(checkpoint, config),
        "",
        "## Loading",
        "",
        "```python",
        "from resnest_pl.models import create_model",
        "",
        "folder = 'path/to/this/folder'",
        f"model = create_model({ours_args})",
        "```",
    ]
    if config["timm_name"]:
        build = f"model = timm.create_model({config['timm_name']!r}, num_classes={config['num_classes']})"
        lines += ["", "timm:", "", *_snippet(["import timm", load_import], build, load)]
    kwargs = reference_kwargs(cfg)
    if kwargs is not None:
        if config["reference_name"]:
            imports = [f"from resnest.torch import {config['reference_name']}"]
            build = f"model = {config['reference_name']}(num_classes={config['num_classes']})"
        else:
            imports = ["from resnest.torch.resnet import Bottleneck, ResNet"]
            call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "layers")
            build = f"model = ResNet(Bottleneck, {kwargs['layers']}, {call}, num_classes={config['num_classes']})"
        lines += ["", "The reference package (`pip install resnest==0.0.5`):", ""]
        lines += _snippet([*imports, load_import], build, load)
    if not config["timm_name"] and kwargs is None:
        lines += ["", "timm and the reference package have no model of these settings; load it as above."]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _architecture(checkpoint: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    hparams = checkpoint["hyper_parameters"]
    return hparams["model_name"], dict(hparams.get("model_overrides") or {})


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
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path, metadata={"format": "pt"})
    else:
        torch.save(state, path)
    (folder / EXPORT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(main, config))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command line; a bad input ends with one ``error:`` line and exit status 2."""
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
        help="safetensors (default), or pth: a plain state dict for torch.load(weights_only=True)",
    )
    args = parser.parse_args(argv)
    try:
        path = export(args.checkpoint, args.out, args.weights, args.average, args.fmt)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print(f"wrote {path}, {path.parent / EXPORT_CONFIG} and {path.parent / 'README.md'}")


if __name__ == "__main__":
    main()
