"""The paper's DropBlock ramp: every ``DropBlock2d``'s drop probability raised linearly over training."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torchvision.ops import DropBlock2d

# Compiled versions of the network besides one per drop probability: the eval-mode graph, and up to two recompiles
# for a new batch size (a last partial training batch, a validation batch of another size).
OTHER_COMPILED_VERSIONS = 3


def max_compiled_increments() -> int:
    """Ramp increments a ``torch.compile``-d network takes without passing dynamo's recompile limit (8 in torch 2.14),
    after which it runs its forward in eager mode: the ramp's ``increments + 1`` drop probabilities (0 included) each
    compile the training graph anew, and ``OTHER_COMPILED_VERSIONS`` more versions may be needed."""
    import torch._dynamo

    return torch._dynamo.config.recompile_limit - 1 - OTHER_COMPILED_VERSIONS


class DropBlockSchedule(Callback):
    """Raise every ``DropBlock2d``'s drop probability linearly from 0 at the first optimizer step to its
    target at the last one (the paper ramps 0 -> 0.1 over training).

    The targets are the probabilities the layers were built with (``model_overrides.dropblock_prob``)
    unless ``target`` overrides them. The probability follows ``trainer.global_step``, so a resumed run
    continues the ramp where it stopped.

    Args:
        target: final probability of every DropBlock layer; ``None`` keeps each layer's own.
        increments: move the probability in this many equal increments instead of at every step. A
            ``torch.compile``-d backbone recompiles for every new probability and falls back to eager after
            dynamo's recompile limit, so with ``compile=True`` increments are clamped to
            :func:`max_compiled_increments` (4 with torch 2.14's limit of 8).
    """

    def __init__(self, target: float | None = None, increments: int | None = None) -> None:
        if target is not None and not 0.0 <= target <= 1.0:
            raise ValueError(f"target must lie in [0, 1]; got {target}")
        if increments is not None and increments < 1:
            raise ValueError(f"increments must be >= 1 (or None for every step); got {increments}")
        self.target = target
        self.increments = increments
        self._blocks: list[DropBlock2d] = []
        self._targets: list[float] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        blocks = [m for m in pl_module.modules() if isinstance(m, DropBlock2d)]
        if not blocks:
            raise ValueError(
                "DropBlockSchedule found no DropBlock layers in the model; build it with "
                "model_overrides: {dropblock_prob: 0.1} or remove the callback"
            )
        if len(self._targets) != len(blocks):
            self._targets = [m.p if self.target is None else self.target for m in blocks]
        self._blocks = blocks
        limit = max_compiled_increments()
        if pl_module.hparams.get("compile") and (self.increments is None or self.increments > limit):
            if limit < 1:
                rank_zero_warn(
                    "DropBlockSchedule changes the drop probability of a compiled model, which recompiles it for "
                    "each new value, and dynamo's recompile limit leaves no room for a ramp: raise "
                    "torch._dynamo.config.recompile_limit or the model runs in eager mode once it is passed"
                )
                return
            rank_zero_warn(
                "DropBlockSchedule changes the drop probability of a compiled model, which recompiles it for each "
                f"new value; the ramp takes {limit} increments instead of {self.increments or 'one per step'}, to "
                f"stay within dynamo's recompile limit ({limit} increments + 1 versions for the drop probabilities, "
                f"{OTHER_COMPILED_VERSIONS} for evaluation and new batch sizes)"
            )
            self.increments = limit

    def fraction(self, step: int, total_steps: int) -> float:
        """Share of the target reached at optimizer step ``step`` of ``total_steps``."""
        share = min(1.0, step / max(1, total_steps - 1))
        if self.increments:
            share = math.floor(share * self.increments) / self.increments
        return share

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        share = self.fraction(trainer.global_step, int(trainer.estimated_stepping_batches))
        for block, target in zip(self._blocks, self._targets, strict=True):
            block.p = target * share
