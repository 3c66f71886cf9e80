"""Fine-tuning: layer-wise learning-rate decay and a backbone frozen for the first epochs.

Both act on a :class:`~resnest_pl.models.ResNeSt`'s top-level children: the classifier ``fc`` (the head), the
stages ``layer4`` ... ``layer1`` and the stem (everything else: ``conv1``, ``bn1``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

HEAD = "fc"
# Depth of each top-level child from the head down; children not named here are the stem.
STAGE_DEPTH = {HEAD: 0, "layer4": 1, "layer3": 2, "layer2": 3, "layer1": 4}
STEM_DEPTH = 5
STAGE_NAMES = ("head", "layer4", "layer3", "layer2", "layer1", "stem")  # by depth
# The key of each optimizer group's learning-rate multiplier (timm's name for it).
LR_SCALE = "lr_scale"


def check_finetune_options(layer_decay: float | None, freeze_backbone_epochs: int) -> None:
    """Refuse values that cannot work (raised from the module's ``__init__``: the CLI shows one line)."""
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(
            f"layer_decay must lie in (0, 1], e.g. 0.7 (each stage below the head learns 0.7x slower), or be null "
            f"to disable; got {layer_decay}"
        )
    if freeze_backbone_epochs < 0:
        raise ValueError(
            f"freeze_backbone_epochs must be >= 0 (0: train everything from the start); got {freeze_backbone_epochs}"
        )


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


class FreezeBackbone(Callback):
    """Train only the classifier for the first ``epochs`` epochs, then everything.

    Not Lightning's ``BackboneFinetuning``: that one leaves the frozen parameters out of the optimizer and adds
    them as one new parameter group at the unfreeze epoch. Our ``LambdaLR`` schedule holds one base rate per group
    from its creation, so it never schedules a group added later (it keeps whatever rate it was given), the
    layer-wise decay groups collapse into that single group, and resuming needs the callback to rebuild the
    groups before the optimizer state loads. Here every parameter is in the optimizer from the start; freezing
    only sets ``requires_grad=False``: no gradient is computed, and SGD and AdamW skip parameters whose gradient
    is None, so frozen weights neither move nor decay, nor gather momentum.

    The frozen backbone's BatchNorm layers are in eval mode: they normalise with their running statistics, which
    stay the pretrained ones, so the head learns on exactly the features it is evaluated on, as in timm's and
    torchvision's linear-probe recipes. (Lightning's ``freeze`` instead turns off ``track_running_stats``: training
    batches are then normalised by their own statistics, evaluation by the unchanged running ones.) Dropout and
    DropBlock keep their training behaviour.

    The state follows the epoch alone (frozen while ``current_epoch < epochs``), set at every training epoch's
    start (a resumed epoch's too), so a run resumed from a checkpoint is frozen or not as the uninterrupted run
    was. At the end of fit everything is trainable again. Under DDP the frozen parameters get no gradient, so the
    strategy must look for unused parameters (``ddp_find_unused_parameters_true``); :meth:`setup` refuses otherwise.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    @staticmethod
    def backbone(pl_module: pl.LightningModule) -> list[nn.Module]:
        return [child for name, child in pl_module.model.named_children() if name != HEAD]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        finds_unused = isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs.get("find_unused_parameters")
        if stage == "fit" and isinstance(strategy, DDPStrategy) and not finds_unused:
            raise ValueError(
                "freeze_backbone_epochs under DDP leaves the backbone without gradients, which DDP must be told "
                "about; set trainer.strategy=ddp_find_unused_parameters_true (or freeze_backbone_epochs=0)"
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.set_frozen(pl_module, trainer.current_epoch < self.epochs)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.set_frozen(pl_module, False)

    def set_frozen(self, pl_module: pl.LightningModule, frozen: bool) -> None:
        for module in self.backbone(pl_module):
            module.requires_grad_(not frozen)
            for layer in module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.train(not frozen and pl_module.training)
