"""Recording the split attention of every block with forward hooks on its ``rsoftmax``.

For each image and channel, the attention is a distribution over the radix splits: the r-softmax's weights when
radix > 1. With radix 1 the block has a sigmoid gate ``g`` instead, read here as the two-way distribution
``(g, 1 - g)`` (keep or suppress the channel), so that the same statistics apply:

- ``attn_split<r>``: the mean weight of split ``r`` (radix 1: the mean gate);
- ``norm_entropy``: the entropy over the splits divided by ``log(radix)`` (radix 1: of ``(g, 1 - g)`` divided by
  ``log 2``): 1 for an even spread (radix 1: a gate at 0.5), 0 when one split takes all (radix 1: a gate shut
  or fully open);
- ``dominant_share``: the share of (image, channel) pairs whose largest split holds more than ``DOMINANT``
  (radix 1: ``g > 0.9`` or ``g < 0.1``).

All three are means over the images and the block's channels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch
from torch import nn

from resnest_pl.models.splat import SplitAttentionConv2d

DOMINANT = 0.9
_BLOCK = re.compile(r"layer(\d+)\.(\d+)")


@dataclass(frozen=True)
class Block:
    """One split-attention block: its name in the model (``layer2.1``), stage, index in the stage and shape."""

    name: str
    stage: int
    index: int
    radix: int
    cardinality: int
    channels: int


@dataclass
class AttentionStats:
    """What :func:`record_attention` found: one row per block, and per block and class when labels were given."""

    blocks: pd.DataFrame
    by_class: pd.DataFrame = field(default_factory=pd.DataFrame)

    def stage_entropy(self) -> pd.Series:
        """The mean ``norm_entropy`` of each stage's blocks."""
        return self.blocks.groupby("stage")["norm_entropy"].mean()


def split_attention_blocks(model: nn.Module) -> list[tuple[Block, SplitAttentionConv2d]]:
    """Every split-attention convolution of ``model`` with its block's description, in forward order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, SplitAttentionConv2d):
            block = name.rpartition(".")[0] or name
            match = _BLOCK.search(block)
            stage, index = (int(match.group(1)), int(match.group(2))) if match else (0, len(found))
            cardinality = module.rsoftmax.cardinality
            found.append((Block(block, stage, index, module.radix, cardinality, module.channels), module))
    return found


def split_distribution(weights: torch.Tensor, radix: int) -> torch.Tensor:
    """The ``rsoftmax`` output ``(N, R * C, 1, 1)`` as per-channel distributions ``(N, R, C)`` in float32; a radix-1
    sigmoid gate ``g`` as ``(N, 2, C)``: ``(g, 1 - g)``."""
    flat = weights.detach().flatten(1).float()
    if radix == 1:
        return torch.stack([flat, 1 - flat], dim=1)
    return flat.unflatten(1, (radix, -1))


def summarise(weights: torch.Tensor, radix: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: the mean weight of each split ``(N, radix)``, the mean normalised entropy ``(N,)`` and the share
    of channels with a dominant split ``(N,)`` (see the module's docstring)."""
    p = split_distribution(weights, radix)
    entropy = -torch.special.xlogy(p, p).sum(dim=1) / math.log(p.shape[1])
    dominant = (p.amax(dim=1) > DOMINANT).float()
    return p[:, :radix].mean(dim=2), entropy.mean(dim=1), dominant.mean(dim=1)


def record_attention(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    class_names: Sequence[str] | None = None,
) -> AttentionStats:
    """Run ``model`` in eval mode on ``batches`` of normalised images (with class indices, or None) and summarise
    the attention of every split-attention block; the model's mode is restored afterwards.

    Raises:
        ValueError: the model has no split-attention blocks (radix 0), or no images came.
    """
    blocks = split_attention_blocks(model)
    if not blocks:
        raise ValueError(
            "the model has no split-attention blocks (radix 0): nothing to inspect; pass a radix >= 1 model"
        )
    records: dict[str, list[tuple[torch.Tensor, ...]]] = {block.name: [] for block, _ in blocks}

    def hook_for(block: Block) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            records[block.name].append(summarise(output, block.radix))

        return hook

    handles = [conv.rsoftmax.register_forward_hook(hook_for(block)) for block, conv in blocks]
    labels: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, targets in batches:
                model(images)
                labels.append(torch.full((len(images),), -1) if targets is None else targets.cpu())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not labels:
        raise ValueError("no images to inspect; pass at least one image")
    return _tables(blocks, records, torch.cat(labels), class_names)


def _tables(
    blocks: list[tuple[Block, SplitAttentionConv2d]],
    records: dict[str, list[tuple[torch.Tensor, ...]]],
    labels: torch.Tensor,
    class_names: Sequence[str] | None,
) -> AttentionStats:
    rows, class_rows = [], []
    for block, _ in blocks:
        splits, entropy, dominant = (torch.cat(parts) for parts in zip(*records[block.name], strict=True))
        row: dict[str, object] = {**asdict(block), "block": block.name, "images": len(entropy)}
        row |= {f"attn_split{r}": float(v) for r, v in enumerate(splits.mean(dim=0))}
        row |= {"norm_entropy": float(entropy.mean()), "dominant_share": float(dominant.mean())}
        rows.append(row)
        for label in sorted(set(labels.tolist()) - {-1}):
            chosen = labels == label
            name = class_names[label] if class_names else str(label)
            class_rows.append(
                {
                    "block": block.name,
                    "stage": block.stage,
                    "class": name,
                    "images": int(chosen.sum()),
                    "norm_entropy": float(entropy[chosen].mean()),
                }
            )
    order = ["block", "stage", "index", "radix", "cardinality", "channels", "images"]
    table = pd.DataFrame(rows).drop(columns="name")
    table = table[order + [c for c in table.columns if c not in order]]
    return AttentionStats(table, pd.DataFrame(class_rows))
