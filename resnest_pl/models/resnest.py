"""The ResNeSt network: ResNet-D trunk (deep stem, avg-down, avd) with split-attention bottlenecks.

Module and parameter names follow the reference ``resnest`` package and timm, so
their checkpoints load with ``strict=True`` and give the same outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from .config import EXPANSION, ResNeStConfig
from .splat import SplitAttentionConv2d, make_dropblock

DROPBLOCK_SIZE = 3


@dataclass(frozen=True)
class FeatureInfo:
    """One stage output usable by a dense-prediction head."""

    name: str  # "C2" .. "C5"
    module: str  # "layer1" .. "layer4"
    channels: int
    stride: int


class Bottleneck(nn.Module):
    """ResNeSt bottleneck: 1x1 reduce, split-attention 3x3, 1x1 expand, residual add.

    ``drop_path`` is the stochastic-depth rate: in training, the residual branch of each sample is dropped with
    that probability (and scaled by ``1 / (1 - drop_path)`` otherwise) before the addition; the shortcut never is.
    """

    expansion = EXPANSION

    def __init__(
        self,
        cfg: ResNeStConfig,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        is_first: bool = False,
        dropblock_prob: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = cfg.group_width(planes)
        self.radix = cfg.radix
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.drop1 = make_dropblock(dropblock_prob, DROPBLOCK_SIZE)
        self.act1 = nn.ReLU(inplace=True)

        use_avd = cfg.avd and (stride > 1 or is_first)
        avd_pool = nn.AvgPool2d(3, stride, padding=1) if use_avd else nn.Identity()
        self.avd_first = avd_pool if cfg.avd_first else nn.Identity()
        self.avd_last = nn.Identity() if cfg.avd_first else avd_pool
        conv_stride = 1 if use_avd else stride

        if cfg.radix >= 1:
            self.conv2: nn.Module = SplitAttentionConv2d(
                width,
                width,
                kernel_size=3,
                stride=conv_stride,
                padding=dilation,
                dilation=dilation,
                cardinality=cfg.cardinality,
                radix=cfg.radix,
                reduction=cfg.reduction,
                min_attn_channels=cfg.min_attn_channels,
                dropblock_prob=dropblock_prob,
                dropblock_size=DROPBLOCK_SIZE,
                conv_impl=cfg.conv_impl,
            )
            self.bn2: nn.Module = nn.Identity()
            self.drop2: nn.Module = nn.Identity()
            self.act2: nn.Module = nn.Identity()
        else:
            self.conv2 = nn.Conv2d(
                width,
                width,
                3,
                stride=conv_stride,
                padding=dilation,
                dilation=dilation,
                groups=cfg.cardinality,
                bias=False,
            )
            self.bn2 = nn.BatchNorm2d(width)
            self.drop2 = make_dropblock(dropblock_prob, DROPBLOCK_SIZE)
            self.act2 = nn.ReLU(inplace=True)

        self.conv3 = nn.Conv2d(width, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.drop3 = make_dropblock(dropblock_prob, DROPBLOCK_SIZE)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample if downsample is not None else nn.Identity()
        # No parameters or buffers: the state dict stays the reference's.
        self.drop_path = StochasticDepth(drop_path, mode="row") if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        out = self.act1(self.drop1(self.bn1(self.conv1(x))))
        out = self.avd_first(out)
        out = self.act2(self.drop2(self.bn2(self.conv2(out))))
        out = self.avd_last(out)
        out = self.drop_path(self.drop3(self.bn3(self.conv3(out))))
        out += shortcut  # in place: saves one block-sized buffer per block
        return self.act3(out)


def _stem(cfg: ResNeStConfig) -> tuple[nn.Module, int]:
    """The input stem and its output channels (before ``bn1``)."""
    first_stride = 1 if cfg.small_input else 2
    if not cfg.deep_stem:
        if cfg.small_input:
            return nn.Conv2d(cfg.in_chans, 64, 3, stride=1, padding=1, bias=False), 64
        return nn.Conv2d(cfg.in_chans, 64, 7, stride=2, padding=3, bias=False), 64
    w = cfg.stem_width
    stem = nn.Sequential(
        nn.Conv2d(cfg.in_chans, w, 3, stride=first_stride, padding=1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(inplace=True),
        nn.Conv2d(w, w, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(inplace=True),
        nn.Conv2d(w, w * 2, 3, stride=1, padding=1, bias=False),
    )
    return stem, w * 2


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Stochastic-depth rate of each of ``blocks`` blocks, network-wide: ``rate * i / (blocks - 1)`` for block ``i``
    (0-based), from 0 at the first block to ``rate`` at the last: timm's ``resnet.py`` rule (``drop_path_rate``)."""
    return [rate * i / max(1, blocks - 1) for i in range(blocks)]


def _stage_geometry(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of layer1..layer4 for the requested output stride."""
    if output_stride == 32:
        return [(1, 1), (2, 1), (2, 1), (2, 1)]
    if output_stride == 16:
        return [(1, 1), (2, 1), (2, 1), (1, 2)]
    return [(1, 1), (2, 1), (1, 2), (1, 4)]


class ResNeSt(nn.Module):
    """ResNeSt classifier; also a feature backbone through :meth:`forward_stages`.

    Args:
        cfg: the architecture (see :class:`ResNeStConfig`).
        num_classes: classifier outputs; 0 leaves an identity head (pooled features).
    """

    def __init__(self, cfg: ResNeStConfig | None = None, num_classes: int = 1000) -> None:
        super().__init__()
        cfg = cfg or ResNeStConfig()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no classifier); got {num_classes}")
        self.cfg = cfg
        self.conv1, inplanes = _stem(cfg)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if cfg.small_input else nn.MaxPool2d(3, stride=2, padding=1)

        stride_so_far = 1 if cfg.small_input else 4
        feature_info = []
        rates = drop_path_rates(cfg.drop_path_rate, sum(cfg.layers))
        for index, (planes, blocks, (stride, dilation)) in enumerate(
            zip(cfg.stage_planes, cfg.layers, _stage_geometry(cfg.output_stride), strict=True), start=1
        ):
            dropblock = cfg.dropblock_prob if index >= 3 else 0.0
            stage_rates, rates = rates[:blocks], rates[blocks:]
            stage = self._make_stage(cfg, inplanes, planes, blocks, stride, dilation, index > 1, dropblock, stage_rates)
            self.add_module(f"layer{index}", stage)
            inplanes = planes * EXPANSION
            stride_so_far *= stride
            feature_info.append(FeatureInfo(f"C{index + 1}", f"layer{index}", inplanes, stride_so_far))

        self.feature_info = feature_info
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.final_drop) if cfg.final_drop > 0 else nn.Identity()
        self.num_features = inplanes
        self.fc: nn.Module = nn.Linear(inplanes, num_classes) if num_classes else nn.Identity()
        self.num_classes = num_classes
        self.loaded_from: str | None = None  # set by create_model when it loads weights: a line for the log
        self._init_weights()

    @staticmethod
    def _make_stage(
        cfg: ResNeStConfig,
        inplanes: int,
        planes: int,
        blocks: int,
        stride: int,
        dilation: int,
        is_first: bool,
        dropblock_prob: float,
        drop_path: list[float],
    ) -> nn.Sequential:
        outplanes = planes * EXPANSION
        downsample = None
        if stride != 1 or inplanes != outplanes:
            layers: list[nn.Module] = []
            if cfg.avg_down:
                pool = stride if dilation == 1 else 1
                # A 1x1 average is the identity; nn.Identity keeps the key indices (downsample.1/.2) unchanged.
                avg: nn.Module = nn.AvgPool2d(pool, stride=pool, ceil_mode=True, count_include_pad=False)
                layers.append(avg if pool > 1 else nn.Identity())
                layers.append(nn.Conv2d(inplanes, outplanes, 1, stride=1, bias=False))
            else:
                layers.append(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False))
            layers.append(nn.BatchNorm2d(outplanes))
            downsample = nn.Sequential(*layers)
        # As in the reference: the first block of a dilated stage uses half its dilation.
        first_dilation = 1 if dilation <= 2 else dilation // 2
        stage = [
            Bottleneck(
                cfg, inplanes, planes, stride, first_dilation, downsample, is_first, dropblock_prob, drop_path[0]
            )
        ]
        stage += [
            Bottleneck(cfg, outplanes, planes, 1, dilation, dropblock_prob=dropblock_prob, drop_path=drop_path[i])
            for i in range(1, blocks)
        ]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.zero_gamma:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (0 removes it)."""
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.num_classes = num_classes

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    @torch.jit.export
    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage outputs ``C2``..``C5`` (see ``feature_info`` for channels and strides)."""
        x = self.forward_stem(x)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {"C2": c2, "C3": c3, "C4": c4, "C5": c5}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (C5)."""
        x = self.forward_stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.global_pool(features), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
