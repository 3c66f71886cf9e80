"""Every knob of a ResNeSt network, as one validated dataclass."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field

from .splat import CONV_IMPLS, ConvImpl, attention_channels

STAGE_PLANES = (64, 128, 256, 512)
EXPANSION = 4
OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class ResNeStConfig:
    """Architecture of a ResNeSt (or, with ``radix=0``, a ResNet-D / ResNeXt-D) network.

    Attributes:
        layers: blocks in each of the four stages.
        radix: splits per cardinal group ``R``; 0 disables split attention (plain
            grouped conv, the ResNet-D baseline), 1 is sigmoid gating, >= 2 r-softmax.
        cardinality: cardinal groups ``K``.
        bottleneck_width: width per cardinal group, for 64 planes (the ``d`` of ``RsKxWd``).
        width_multiplier: scales the stage planes 64/128/256/512 (tiny CPU variants).
        stem_width: width of the deep stem's first convolutions (it ends at twice that).
        deep_stem: three 3x3 convs instead of one 7x7 (ResNet-D).
        small_input: stride-1 stem and no max-pool, for 32x32 images such as CIFAR.
        avg_down: shortcut downsamples with an average pool before its 1x1 conv (ResNet-D).
        avd: downsample with a 3x3 average pool instead of a strided conv2.
        avd_first: place that pool before conv2 (the "fast" variants) instead of after.
        dropblock_prob: DropBlock probability in stages 3 and 4 (block size 3).
        final_drop: dropout before the classifier.
        drop_path_rate: stochastic depth (timm's ``drop_path_rate``): the residual branch of each block is dropped
            per sample in training, with a rate rising linearly from 0 at the first block to this at the last.
        zero_gamma: start each block's last BN weight at zero.
        output_stride: 32, or 16 / 8 with dilated stages for dense prediction.
        in_chans: input image channels.
        reduction: attention bottleneck reduction ``D = max(C*R // reduction, min_attn_channels)``.
        min_attn_channels: lower bound of the attention bottleneck width ``D``.
        conv_impl: how split-attention blocks run their radix convolution: ``"grouped"`` (one convolution with
            ``radix * cardinality`` groups) or ``"split"`` (one dense convolution per group on slices of the
            same weight). Same weights, same outputs; only the speed differs, by device and memory format.
    """

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    radix: int = 2
    cardinality: int = 1
    bottleneck_width: int = 64
    width_multiplier: float = 1.0
    stem_width: int = 32
    deep_stem: bool = True
    small_input: bool = False
    avg_down: bool = True
    avd: bool = True
    avd_first: bool = False
    dropblock_prob: float = 0.0
    final_drop: float = 0.0
    drop_path_rate: float = 0.0
    zero_gamma: bool = True
    output_stride: int = 32
    in_chans: int = 3
    reduction: int = 4
    min_attn_channels: int = 32
    conv_impl: ConvImpl = "grouped"
    stage_planes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        validate(self)
        planes = tuple(max(1, round(p * self.width_multiplier)) for p in STAGE_PLANES)
        object.__setattr__(self, "stage_planes", planes)
        for stage, p in enumerate(planes, start=1):
            width = self.group_width(p)
            if width < 1:
                raise ValueError(
                    f"bottleneck_width={self.bottleneck_width} with width_multiplier={self.width_multiplier} "
                    f"leaves stage {stage} ({p} planes) with no channels per group; raise bottleneck_width "
                    "or width_multiplier"
                )
            if self.radix >= 1:
                attn = attention_channels(width, self.radix, self.reduction, self.min_attn_channels)
                if attn % self.cardinality:
                    raise ValueError(
                        f"the attention width of stage {stage} is {attn} (max(C*R//{self.reduction}, "
                        f"{self.min_attn_channels})), which cardinality {self.cardinality} does not divide; "
                        "choose min_attn_channels or a cardinality so that it does"
                    )

    def group_width(self, planes: int) -> int:
        """Channels of a block's 3x3 convolution: ``int(planes * d / 64) * K``."""
        return int(planes * (self.bottleneck_width / 64.0)) * self.cardinality

    @property
    def num_features(self) -> int:
        """Channels entering the classifier (C5)."""
        return self.stage_planes[-1] * EXPANSION

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    def replace(self, **overrides: object) -> ResNeStConfig:
        """A copy with ``overrides`` applied; unknown keys raise a ValueError naming the close ones."""
        allowed = self.field_names()
        for key in overrides:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"unknown ResNeSt option {key!r}.{hint} Allowed options: {', '.join(allowed)}")
        return dataclasses.replace(self, **overrides)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def validate(cfg: ResNeStConfig) -> None:
    """Reject impossible settings with a message that says what is allowed."""
    _require(
        len(cfg.layers) == 4 and all(isinstance(n, int) and n >= 1 for n in cfg.layers),
        f"layers must be four positive block counts, e.g. (3, 4, 6, 3); got {cfg.layers}",
    )
    _require(
        isinstance(cfg.radix, int) and cfg.radix >= 0,
        f"radix must be an integer >= 0 (0 = no split attention, 1 = sigmoid gating, >= 2 = r-softmax); "
        f"got {cfg.radix}",
    )
    _require(
        isinstance(cfg.cardinality, int) and cfg.cardinality >= 1,
        f"cardinality must be an integer >= 1; got {cfg.cardinality}",
    )
    _require(cfg.bottleneck_width >= 1, f"bottleneck_width must be >= 1; got {cfg.bottleneck_width}")
    _require(cfg.width_multiplier > 0, f"width_multiplier must be > 0; got {cfg.width_multiplier}")
    _require(cfg.stem_width >= 1, f"stem_width must be >= 1; got {cfg.stem_width}")
    _require(cfg.in_chans >= 1, f"in_chans must be >= 1; got {cfg.in_chans}")
    _require(
        cfg.output_stride in OUTPUT_STRIDES,
        f"output_stride must be one of {OUTPUT_STRIDES} (8 and 16 dilate stages 3-4); got {cfg.output_stride}",
    )
    _require(0.0 <= cfg.dropblock_prob <= 1.0, f"dropblock_prob must lie in [0, 1]; got {cfg.dropblock_prob}")
    _require(0.0 <= cfg.final_drop < 1.0, f"final_drop must lie in [0, 1); got {cfg.final_drop}")
    _require(
        0.0 <= cfg.drop_path_rate <= 1.0,
        f"drop_path_rate must lie in [0, 1] (0.05-0.1 for a ResNet-50, timm's recipes); got {cfg.drop_path_rate}",
    )
    _require(cfg.reduction >= 1, f"reduction must be >= 1; got {cfg.reduction}")
    _require(cfg.min_attn_channels >= 1, f"min_attn_channels must be >= 1; got {cfg.min_attn_channels}")
    _require(
        cfg.conv_impl in CONV_IMPLS,
        f"conv_impl must be one of {', '.join(CONV_IMPLS)} (the radix convolution as one grouped convolution, or "
        f"as dense convolutions on slices of the same weight); got {cfg.conv_impl!r}",
    )
