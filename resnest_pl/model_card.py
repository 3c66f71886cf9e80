"""The ``README.md`` of an export: the model, its data, recipe and metrics, how to load it, and the citation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .models import ResNeStConfig, describe_model, get_variant
from .models.twins import reference_kwargs
from .models.weights import RUN_RECORD_KEY, has_ema

WEIGHT_LABELS = {"ema": "EMA", "live": "live"}
CITATION = """@article{zhang2020resnest,
  title={ResNeSt: Split-Attention Networks},
  author={Zhang, Hang and Wu, Chongruo and Zhang, Zhongyue and Zhu, Yi and Lin, Haibin and Zhang, Zhi and
          Sun, Yue and He, Tong and Mueller, Jonas and Manmatha, R. and Li, Mu and Smola, Alexander},
  journal={arXiv preprint arXiv:2004.08955},
  year={2020}
}"""


def best_and_monitor(checkpoint: Mapping[str, Any]) -> tuple[str | None, float | None, str | None]:
    """``(monitor, best score, best path)`` from the checkpoint's ``ModelCheckpoint`` state."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("monitor"):
            score = state.get("best_model_score")
            value = float(score) if score is not None else None
            return state["monitor"], value, state.get("best_model_path") or None
    return None, None, None


def _known(value: Any) -> str:
    return "(not recorded)" if value is None else str(value)


def _recipe_lines(checkpoint: Mapping[str, Any]) -> list[str]:
    hparams = checkpoint["hyper_parameters"]
    record = checkpoint.get(RUN_RECORD_KEY) or {}
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
    record = checkpoint.get(RUN_RECORD_KEY) or {}
    data = record.get("data") or {}
    name, overrides = config["model_name"], config["model_overrides"]
    cfg = get_variant(name).config.replace(**overrides)
    monitor, best, best_path = best_and_monitor(checkpoint)
    final = record.get("metrics") or {}
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
        "## Provenance",
        "",
        *_provenance_lines(config.get("provenance")),
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
        *_loading_lines(config, cfg),
    ]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _onnx_lines(config: Mapping[str, Any]) -> list[str]:
    size = config["eval_crop"]
    return [
        "```python",
        "import numpy as np",
        "import onnxruntime",
        "",
        "folder = 'path/to/this/folder'",
        f"session = onnxruntime.InferenceSession(f'{{folder}}/{config['file']}')",
        f"images = np.zeros((1, 3, {size}, {size}), dtype=np.float32)  # preprocessed as under Data",
        "(logits,) = session.run(None, {'images': images})",
        "```",
    ]


def _loading_lines(config: Mapping[str, Any], cfg: ResNeStConfig) -> list[str]:
    """How to load the export: with onnxruntime, or with our ``create_model``, timm and the reference package."""
    file = config["file"]
    if file.endswith(".onnx"):
        return _onnx_lines(config)
    name, overrides, classes = config["model_name"], config["model_overrides"], config["num_classes"]
    if file.endswith(".safetensors"):
        load_import, load = "from safetensors.torch import load_file", f"load_file(f'{{folder}}/{file}')"
    else:
        load_import, load = "import torch", f"torch.load(f'{{folder}}/{file}', weights_only=True)"
    args = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    ours_args = f"{name!r}, num_classes={classes}, pretrained=folder" + (f", {args}" if args else "")
    lines = [
        "```python",
        "from resnest_pl.models import create_model",
        "",
        "folder = 'path/to/this/folder'",
        f"model = create_model({ours_args})",
        "```",
    ]
    if config["timm_name"] and file.endswith(".safetensors"):  # timm's local-dir: reads config.json's timm keys
        timm_lines = ["```python", "import timm", "", "folder = 'path/to/this/folder'"]
        timm_lines += ["model = timm.create_model(f'local-dir:{folder}', pretrained=True)", "```"]
        lines += ["", "timm (its `local-dir:` reads `config.json`; `hf-hub:` once pushed):", "", *timm_lines]
    elif config["timm_name"]:
        build = f"model = timm.create_model({config['timm_name']!r}, num_classes={classes})"
        lines += ["", "timm:", "", *_snippet(["import timm", load_import], build, load)]
    kwargs = reference_kwargs(cfg)
    if kwargs is not None:
        if config["reference_name"]:
            imports = [f"from resnest.torch import {config['reference_name']}"]
            build = f"model = {config['reference_name']}(num_classes={classes})"
        else:
            imports = ["from resnest.torch.resnet import Bottleneck, ResNet"]
            call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "layers")
            build = f"model = ResNet(Bottleneck, {kwargs['layers']}, {call}, num_classes={classes})"
        lines += ["", "The reference package (`pip install resnest==0.0.5`):", ""]
        lines += _snippet([*imports, load_import], build, load)
    if not config["timm_name"] and kwargs is None:
        lines += ["", "timm and the reference package have no model of these settings; load it as above."]
    return lines


def _provenance_lines(provenance: Mapping[str, Any] | None) -> list[str]:
    """The run's code, software, devices and data fingerprint (``resnest_pl.provenance``)."""
    if not provenance:
        return ["- (not recorded: the checkpoint predates provenance records)"]
    code, env, data = provenance.get("code") or {}, provenance.get("environment") or {}, provenance.get("data") or {}
    dirty = {True: " with uncommitted changes (the run folder holds code.diff)", False: "", None: ""}[code.get("dirty")]
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    splits = ", ".join(
        f"{split}: {entry['samples']} samples, sha256 {entry['sha256'][:12]}"
        for split, entry in (data.get("splits") or {}).items()
    )
    return [
        f"- code: commit {_known(code.get('commit'))}{dirty}",
        f"- software: Python {_known(env.get('python'))}, {versions}; CUDA {_known(env.get('cuda'))}, "
        f"cuDNN {_known(env.get('cudnn'))}",
        f"- devices: {', '.join(map(str, env.get('devices') or [])) or '(not recorded)'}; world size "
        f"{_known(env.get('world_size'))}",
        f"- data fingerprint: {splits or '(not recorded)'}",
    ]
