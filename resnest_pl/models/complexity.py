"""Parameter and MAC counts, computed live with ``torch.utils.flop_counter``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int, in_chans: int = 3, batch_size: int = 1) -> int:
    """Multiply-accumulates of one eval-mode forward pass (FLOPs as torch counts them, halved).

    The input lives on the model's device: build the model under ``torch.device("meta")``
    to count even ResNeSt-269 at 416 px without computing anything.
    """
    device = next(model.parameters()).device
    x = torch.empty(batch_size, in_chans, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
