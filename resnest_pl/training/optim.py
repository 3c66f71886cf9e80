"""The optimizer: the paper's Nesterov SGD, its parameter groups (no weight decay on normalisation and biases),
layer-wise learning-rate decay for fine-tuning, and the plain record of an optimizer that checkpoints keep.

Layer decay acts on a :class:`~resnest_pl.models.ResNeSt`'s top-level children: the classifier ``fc`` (the head),
the stages ``layer4`` ... ``layer1`` and the stem (everything else: ``conv1``, ``bn1``).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from pytorch_lightning.cli import OptimizerCallable

# Parameters of these layers are never weight-decayed (the paper decays conv and linear weights only).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)
HEAD = "fc"
# Depth of each top-level child from the head down; children not named here are the stem.
STAGE_DEPTH = {HEAD: 0, "layer4": 1, "layer3": 2, "layer2": 3, "layer1": 4}
STEM_DEPTH = 5
STAGE_NAMES = ("head", "layer4", "layer3", "layer2", "layer1", "stem")  # by depth
# The key of each optimizer group's learning-rate multiplier (timm's name for it).
LR_SCALE = "lr_scale"


class NesterovSGD(torch.optim.SGD):
    """SGD with the paper's settings as defaults: lr 0.1 per 256 images, Nesterov momentum 0.9, weight decay 1e-4."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = True,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def optimizer_spec(optimizer: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of an optimizer class or ``functools.partial`` of one (the form
    LightningCLI stores), so that checkpoints hold no pickled code and load with ``weights_only=True``;
    ``None`` for any other callable."""
    init_args: dict[str, Any] = {}
    if isinstance(optimizer, functools.partial) and not optimizer.args:
        optimizer, init_args = optimizer.func, dict(optimizer.keywords)
    if not isinstance(optimizer, type):
        return None
    return {"class_path": f"{optimizer.__module__}.{optimizer.__qualname__}", "init_args": init_args}


# Optimizers that moved, by the class path that checkpoints written before the move hold in their hyper-parameters.
MOVED_OPTIMIZERS = {"resnest_pl.module.NesterovSGD": "resnest_pl.training.optim.NesterovSGD"}


def optimizer_from_spec(spec: Mapping[str, Any]) -> OptimizerCallable:
    """The optimizer callable described by :func:`optimizer_spec`'s output (or by an older checkpoint's, whose
    class path may name the optimizer's former home: :data:`MOVED_OPTIMIZERS`)."""
    class_path = MOVED_OPTIMIZERS.get(spec["class_path"], spec["class_path"])
    module, _, name = class_path.rpartition(".")
    return functools.partial(getattr(importlib.import_module(module), name), **spec.get("init_args", {}))


def parameter_groups(model: nn.Module, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Two optimizer groups: weights to decay, and normalisation parameters, biases and any other
    1-d parameter with ``weight_decay=0``. Chosen by layer type and shape, not by name, so the stem's
    and the shortcuts' BatchNorms are found too. With ``layer_decay`` each is split further by depth, each part
    with ``lr_scale = layer_decay ** depth`` (:func:`split_by_depth`)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, NORM_LAYERS) or param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    return groups if layer_decay is None else split_by_depth(groups, model, layer_decay)


def layer_depth(name: str) -> int:
    """Depth of the parameter or module ``name`` (relative to the backbone, e.g. ``layer3.0.conv1.weight``):
    0 for the head, 1-4 for ``layer4`` to ``layer1``, 5 for the stem."""
    return STAGE_DEPTH.get(name.split(".", 1)[0], STEM_DEPTH)


def split_by_depth(groups: list[dict[str, Any]], model: nn.Module, decay: float) -> list[dict[str, Any]]:
    """Split each optimizer group by :func:`layer_depth`, keeping its other settings (e.g. ``weight_decay=0``), and
    give each part ``lr_scale = decay ** depth`` and a ``name`` (``layer3``, ``layer3/no_decay``, ...: the
    ``LearningRateMonitor``'s key). Ordered by depth, head first, so that the first group's learning rate is the
    head's (the optimizer's own)."""
    depth_of = {id(param): layer_depth(name) for name, param in model.named_parameters()}
    parts: list[tuple[int, int, dict[str, Any]]] = []
    for index, group in enumerate(groups):
        by_depth: dict[int, list[nn.Parameter]] = {}
        for param in group["params"]:
            by_depth.setdefault(depth_of[id(param)], []).append(param)
        for depth, params in by_depth.items():
            name = STAGE_NAMES[depth] + ("/no_decay" if group.get("weight_decay") == 0.0 else "")
            parts.append((depth, index, {**group, "params": params, LR_SCALE: decay**depth, "name": name}))
    return [group for _, _, group in sorted(parts, key=lambda part: part[:2])]


def apply_lr_scales(optimizer: Any) -> None:
    """Multiply each group's learning rate by its ``lr_scale`` (groups without one keep theirs). Before the
    scheduler is built: it takes these rates as the peaks that its schedule multiplies."""
    for group in optimizer.param_groups:
        group["lr"] *= group.get(LR_SCALE, 1.0)
