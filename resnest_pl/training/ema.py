"""A fused exponential moving average of a model's weights."""

from __future__ import annotations

import itertools
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel


class FusedEMAModel(AveragedModel):
    """An exponential moving average of a model's parameters and buffers, updated without waiting for the device.

    ``AveragedModel`` with a per-tensor ``avg_fn`` launches a few kernels per tensor (about 480 tensors in a
    ResNeSt-50) and reads its update count on the host twice per update, which waits for the GPU. Here the floating
    tensors are updated by one ``torch._foreach_lerp_``, the count is mirrored on the host (read once, after creation
    or a state-dict load), and integer buffers (BatchNorm's ``num_batches_tracked``) are copied, not averaged.
    ``lerp`` computes ``ema + (1 - decay) * (model - ema)``, equal to ``decay * ema + (1 - decay) * model`` but for
    the last bit. The state dict is ``AveragedModel``'s, so checkpoints of either load into the other.
    The average lives on ``device`` (the model's when ``None``): ``_foreach_lerp_`` takes no tensors of two devices.
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | None = None) -> None:
        super().__init__(model, device=device, use_buffers=True)
        self.decay = decay
        self._updates: int | None = 0  # n_averaged, mirrored on the host

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._updates = None  # n_averaged changes: read it again at the next update
        return super().load_state_dict(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._updates is None:
            self._updates = int(self.n_averaged)
        averaged = [t.detach() for t in itertools.chain(self.module.parameters(), self.module.buffers())]
        current = [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]
        floats = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        others = [i for i, t in enumerate(averaged) if not t.is_floating_point()]
        if self._updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            weight = 1.0 - self.decay
            torch._foreach_lerp_([averaged[i] for i in floats], [current[i] for i in floats], weight)
            if others:
                torch._foreach_copy_([averaged[i] for i in others], [current[i] for i in others])
        self.n_averaged += 1
        self._updates += 1


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
