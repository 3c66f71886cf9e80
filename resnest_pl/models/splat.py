"""Split-attention convolution (Zhang et al. 2020, section 3.1).

One grouped convolution produces ``radix`` feature-map splits for each of
``cardinality`` cardinal groups; a shared global context decides, per channel,
how much each split contributes (r-softmax over the splits, or a sigmoid gate
when there is a single split).

The splits are handled as one extra tensor dimension rather than a Python loop
over radix, which keeps the module scriptable, FX-traceable, ONNX-exportable
and friendly to ``torch.compile`` and channels_last.

The radix convolution runs in one of two equivalent forms (``conv_impl``): one grouped
convolution with ``radix * cardinality`` groups, or as many dense convolutions, each on
its slice of the input channels with its slice of the same weight. Both read the same
parameter, so every checkpoint loads into either. Which is faster depends on the
device and memory layout: cuDNN's channels_last kernels for grouped convolutions with
few wide groups are slow, while dense convolutions gain from channels_last.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DropBlock2d, drop_block2d

ConvImpl = Literal["grouped", "split"]
CONV_IMPLS: tuple[str, ...] = ("grouped", "split")


def attention_channels(channels: int, radix: int, reduction: int = 4, min_channels: int = 32) -> int:
    """Width ``D`` of the attention bottleneck: ``max(C * R // reduction, min_channels)``."""
    return max(channels * radix // reduction, min_channels)


class RadixSoftmax(nn.Module):
    """The paper's r-softmax: softmax across the ``radix`` splits of each cardinal group.

    Input logits have ``R * C`` channels laid out as (cardinality, radix, C/K), the
    order produced by ``fc2``'s grouped convolution; the output lays them out as
    (radix, cardinality, C/K) so that split ``r`` owns channels ``r*C .. (r+1)*C``.
    With ``radix == 1`` the gate is a sigmoid, as in squeeze-and-excitation.
    """

    def __init__(self, radix: int, cardinality: int) -> None:
        super().__init__()
        self.radix = radix
        self.cardinality = cardinality

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.radix > 1:
            grouped = logits.unflatten(1, (self.cardinality, self.radix, -1))
            weights = grouped.softmax(dim=2).transpose(1, 2)
            return weights.flatten(1, 3)
        return torch.sigmoid(logits)


class SplitAttentionConv2d(nn.Module):
    """Grouped ``kxk`` convolution with split attention over ``radix`` splits.

    Submodule names (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``) match the reference
    ``resnest`` package and timm, so their state dicts load unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        cardinality: int = 1,
        radix: int = 2,
        reduction: int = 4,
        min_attn_channels: int = 32,
        dropblock_prob: float = 0.0,
        dropblock_size: int = 3,
        conv_impl: ConvImpl = "grouped",
    ) -> None:
        super().__init__()
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}; got {conv_impl!r}")
        if radix < 1:
            raise ValueError(f"SplitAttentionConv2d needs radix >= 1, got {radix}; radix 0 means a plain conv")
        attn = attention_channels(in_channels, radix, reduction, min_attn_channels)
        if attn % cardinality or channels % cardinality:
            raise ValueError(
                f"split attention with cardinality {cardinality} needs channels ({channels}) and attention "
                f"width ({attn}) divisible by it; choose a cardinality that divides both"
            )
        self.radix = radix
        self.channels = channels
        self.conv_impl = conv_impl
        self.groups = cardinality * radix
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.conv = nn.Conv2d(
            in_channels,
            channels * radix,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=cardinality * radix,
            bias=False,
        )
        self.bn0 = nn.BatchNorm2d(channels * radix)
        self.dropblock = make_dropblock(dropblock_prob, dropblock_size)
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, attn, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(attn)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(attn, channels * radix, 1, groups=cardinality)
        self.rsoftmax = RadixSoftmax(radix, cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.dropblock(self.bn0(self._radix_conv(x))))
        # The attention weights are cast to the activations' dtype: CUDA autocast runs the softmax in float32,
        # and a float32 weight would promote the product, and the block's output, to full-size float32 maps.
        if self.radix == 1:
            return x * self.rsoftmax(self._attention_logits(x)).to(x.dtype)
        splits = x.unflatten(1, (self.radix, -1))
        weights = self.rsoftmax(self._attention_logits(self._sum_splits(splits))).to(x.dtype)
        return self._sum_splits(splits * weights.unflatten(1, (self.radix, -1)))

    def _radix_conv(self, x: torch.Tensor) -> torch.Tensor:
        """``self.conv``, either as itself or as one dense convolution per group on that group's slices of the
        input channels and of the weight (a grouped convolution is exactly that), concatenated in group order."""
        if self.conv_impl == "grouped" or self.groups == 1:
            return self.conv(x)
        # Slices by index, not chunk(): FX cannot iterate over a traced chunk()'s result.
        inputs, outputs = self.conv.in_channels // self.groups, self.conv.out_channels // self.groups
        maps = [
            F.conv2d(
                x[:, g * inputs : (g + 1) * inputs],
                self.conv.weight[g * outputs : (g + 1) * outputs],
                None,
                self.stride,
                self.padding,
                self.dilation,
            )
            for g in range(self.groups)
        ]
        return torch.cat(maps, dim=1)

    def _attention_logits(self, summed: torch.Tensor) -> torch.Tensor:
        context = F.adaptive_avg_pool2d(summed, 1)
        return self.fc2(self.act1(self.bn1(self.fc1(context))))

    def _sum_splits(self, splits: torch.Tensor) -> torch.Tensor:
        """Sum over the radix axis of a (N, R, C, H, W) tensor as R - 1 whole-map adds (unrolled by
        TorchScript, FX, ONNX and compile). ``splits.sum(dim=1)`` is 3-10x slower on the CPU, forward and
        backward, most of all in channels_last, where the radix axis interleaves with the channels; the
        adds also keep the reference's order of operations, so results agree to the last bit."""
        total = splits[:, 0]
        for split in range(1, self.radix):
            total = total + splits[:, split]
        return total


class DropBlock(DropBlock2d):
    """torchvision's DropBlock2d that also works on maps smaller than its block.

    torchvision shrinks the block to the map's side and then rejects an even size, so a 2x2 map
    (stage 4 of a small input) fails; here the block shrinks to the largest odd size that fits.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return input
        return self._drop(input)

    @torch.jit.unused
    def _drop(self, input):  # unannotated: TorchScript cannot resolve postponed annotations on unused methods
        # drop_block2d cannot be scripted; eval-mode scripted models never reach it.
        block = min(self.block_size, input.shape[-2], input.shape[-1])
        block -= 1 - block % 2
        return drop_block2d(input, self.p, block, self.inplace, self.eps, self.training)


def make_dropblock(prob: float, block_size: int) -> nn.Module:
    """A DropBlock layer when enabled; an identity otherwise (keeps graphs lean)."""
    if prob < 0.0 or prob > 1.0:
        raise ValueError(f"dropblock_prob must lie in [0, 1], got {prob}")
    if prob == 0.0:
        return nn.Identity()
    return DropBlock(prob, block_size)
