"""Fine-tuning: a backbone frozen for the first epochs (layer-wise learning-rate decay is in
:mod:`resnest_pl.training.optim`)."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

from ..training.optim import HEAD


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
