"""The weight EMA as a callback: Lightning's ``EMAWeightAveraging`` with the fused average; ``model.ema_decay``
makes :class:`~resnest_pl.training.module.ResNeStClassifier` attach it."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging

from ..training.ema import FusedEMAModel


class FusedEMAWeightAveraging(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` with :class:`FusedEMAModel` as the average, updated every
    ``every_n_steps`` optimizer steps (the first, then every n-th) with ``decay ** every_n_steps``, which keeps the
    average's time constant in steps. Validation and the final weights use the average, as in Lightning's."""

    def __init__(self, decay: float, every_n_steps: int = 1) -> None:
        super().__init__(decay=decay, update_every_n_steps=every_n_steps)
        self.decay = decay**every_n_steps

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before the strategy moves the module, Lightning reports the device it will move it to as its ``device``:
        # the average is built there, as Lightning's own ``WeightAveraging.setup`` does.
        if stage == "fit":
            self._average_model = FusedEMAModel(pl_module, self.decay, device=self._device or pl_module.device)
