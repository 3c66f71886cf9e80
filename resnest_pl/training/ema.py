"""A fused exponential moving average of a model's weights."""

from __future__ import annotations

import itertools
from typing import Any

import torch
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
