"""Named variants as data, ``create_model`` and ``list_models``."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Literal

from .config import ResNeStConfig
from .resnest import ResNeSt
from .weights import (
    IncompatibleCheckpointError,
    classifier_change,
    exported_config,
    extract_state_dict,
    load_line,
    load_state_dict_checked,
    read_checkpoint,
)

OFFICIAL_URL = "https://github.com/zhanghang1989/ResNeSt/releases/download/weights_step1/{file}"
TIMM_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-resnest/{file}"

Interpolation = Literal["bilinear", "bicubic"]


def official_crop_pct(eval_crop: int) -> float:
    """The share of the image's short side the official evaluation keeps: ``crop / (crop + 32)``.

    The published top-1 of the official weights was measured by the ResNeSt repository's
    ``scripts/torch/verify.py`` (class ``ECenterCrop``): the centre square of that share of the short side,
    resized bicubic to ``crop``. 224 -> 0.875, 256 -> 0.889, 320 -> 0.909, 416 -> 0.929.
    """
    return eval_crop / (eval_crop + 32)


@dataclass(frozen=True)
class Variant:
    """A published architecture: its configuration, crops, evaluation settings and official weights.

    ``eval_crop``, ``crop_pct`` and ``interpolation`` are how the published top-1 was measured (timm's names):
    the shorter side resized to ``eval_crop / crop_pct`` with that interpolation, then the centre
    ``eval_crop`` square. ``fixed_crop_pct``: ``crop_pct`` is kept at any crop (timm's rule); otherwise it is
    ``crop / (crop + 32)`` of whatever crop is evaluated (the official rule). Sources per variant are in
    docs/recipe.md.
    """

    name: str
    arch: dict = field(default_factory=dict)
    train_crop: int = 224
    eval_crop: int = 224
    crop_pct: float = official_crop_pct(224)
    interpolation: Interpolation = "bicubic"
    fixed_crop_pct: bool = False
    weights_url: str | None = None
    aliases: tuple[str, ...] = ()

    def eval_settings(self, train_crop: int) -> tuple[int, float, Interpolation]:
        """``(eval crop, crop_pct, interpolation)`` for a model trained at ``train_crop``: the published ratio of
        eval to train crop (1, 256/224, 320/256, 416/320) applied to ``train_crop``, with the published crop_pct
        rule and interpolation at that size. At the published train crop these are the published settings."""
        eval_crop = round(train_crop * self.eval_crop / self.train_crop)
        crop_pct = self.crop_pct if self.fixed_crop_pct else official_crop_pct(eval_crop)
        return eval_crop, crop_pct, self.interpolation

    @property
    def config(self) -> ResNeStConfig:
        return ResNeStConfig(**self.arch)


def _fast(setting: str, radix: int, cardinality: int, width: int, sha: str, alias: str | None = None) -> Variant:
    name = f"resnest50_fast_{setting}"
    return Variant(
        name,
        dict(radix=radix, cardinality=cardinality, bottleneck_width=width, avd_first=True),
        weights_url=OFFICIAL_URL.format(file=f"{name}-{sha}.pth"),
        aliases=(alias,) if alias else (),
    )


# Evaluation: the official weights (ResNeSt-50/101/200/269 and the fast family) as scripts/torch/verify.py of
# the official repository measured them, crop / (crop + 32) of the short side, bicubic. resnest14d and
# resnest26d are Gluon weights converted by timm; their published top-1 is timm's evaluation, made with
# timm's pretrained configs for them: 224 px, crop_pct 0.875, bilinear.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant(
            "resnest14d",
            interpolation="bilinear",
            fixed_crop_pct=True,
            arch=dict(layers=(1, 1, 1, 1)),
            weights_url=TIMM_URL.format(file="gluon_resnest14-9c8fe254.pth"),
        ),
        Variant(
            "resnest26d",
            interpolation="bilinear",
            fixed_crop_pct=True,
            arch=dict(layers=(2, 2, 2, 2)),
            weights_url=TIMM_URL.format(file="gluon_resnest26-50eb607c.pth"),
        ),
        Variant(
            "resnest50",
            dict(layers=(3, 4, 6, 3)),
            weights_url=OFFICIAL_URL.format(file="resnest50-528c19ca.pth"),
            aliases=("resnest50d",),
        ),
        Variant(
            "resnest101",
            dict(layers=(3, 4, 23, 3), stem_width=64),
            eval_crop=256,
            crop_pct=official_crop_pct(256),
            weights_url=OFFICIAL_URL.format(file="resnest101-22405ba7.pth"),
            aliases=("resnest101e",),
        ),
        Variant(
            "resnest200",
            dict(layers=(3, 24, 36, 3), stem_width=64),
            train_crop=256,
            eval_crop=320,
            crop_pct=official_crop_pct(320),
            weights_url=OFFICIAL_URL.format(file="resnest200-75117900.pth"),
            aliases=("resnest200e",),
        ),
        Variant(
            "resnest269",
            dict(layers=(3, 30, 48, 8), stem_width=64),
            train_crop=320,
            eval_crop=416,
            crop_pct=official_crop_pct(416),
            weights_url=OFFICIAL_URL.format(file="resnest269-0cc87c48.pth"),
            aliases=("resnest269e",),
        ),
        _fast("1s1x64d", 1, 1, 64, "d8fbf808"),
        _fast("2s1x64d", 2, 1, 64, "44938639"),
        _fast("4s1x64d", 4, 1, 64, "f74f3fc3"),
        _fast("1s2x40d", 1, 2, 40, "32830b84"),
        _fast("2s2x40d", 2, 2, 40, "9d126481"),
        _fast("4s2x40d", 4, 2, 40, "41d14ed0", alias="resnest50d_4s2x40d"),
        _fast("1s4x24d", 1, 4, 24, "d4a4f76f", alias="resnest50d_1s4x24d"),
    ]
}
ALIASES: dict[str, str] = {alias: v.name for v in VARIANTS.values() for alias in v.aliases}


def list_models(include_aliases: bool = False) -> list[str]:
    """Names accepted by :func:`create_model`, in the paper's order."""
    names = list(VARIANTS)
    return names + sorted(ALIASES) if include_aliases else names


def get_variant(name: str) -> Variant:
    """The variant called ``name`` (or one of its timm aliases)."""
    canonical = ALIASES.get(name, name)
    if canonical not in VARIANTS:
        known = list_models(include_aliases=True)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    return VARIANTS[canonical]


def create_model(
    name: str,
    num_classes: int = 1000,
    pretrained: bool | str | PathLike = False,
    **overrides: object,
) -> ResNeSt:
    """Build a named variant, optionally with weights.

    Args:
        name: a name from :func:`list_models` or a timm alias (``resnest50d``, ``resnest101e``, ...).
        num_classes: classifier outputs; pretrained weights for another class count keep their
            trunk and get a freshly initialised classifier.
        pretrained: ``True`` for the official weights (downloaded once into the torch.hub cache and
            checked against their sha256 prefix), or a local file / URL of a state dict or checkpoint, a
            ``.safetensors`` file, or a folder written by ``python -m resnest_pl.export`` (whose
            ``config.json`` must name the same architecture). The model's ``loaded_from`` then says, in one line,
            the file, the run it came from and what was replaced.
        **overrides: any :class:`ResNeStConfig` field, e.g. ``radix=4``, ``output_stride=8``.
    """
    variant = get_variant(name)
    cfg = variant.config.replace(**overrides)
    model = ResNeSt(cfg, num_classes=num_classes)
    if pretrained:
        source = variant.weights_url if pretrained is True else pretrained
        if source is None:
            raise ValueError(f"no official weights are published for {name!r}; pass a file or URL instead")
        checkpoint = read_checkpoint(source)
        theirs = trained_architecture(source, checkpoint)
        if theirs is not None and not same_architecture(*theirs, name, overrides):
            raise IncompatibleCheckpointError(
                f"{source} holds {describe_model(*theirs)} weights but the model is {describe_model(name, overrides)}; "
                "create the model with the checkpoint's settings (model_name and model_overrides), or pass weights "
                "of this architecture"
            )
        state = extract_state_dict(checkpoint)
        replaced = classifier_change(state, model)
        load_state_dict_checked(model, state)
        model.loaded_from = load_line(source, checkpoint, replaced)
    return model


def trained_architecture(source: str | PathLike, checkpoint: Mapping[str, object]) -> tuple[str, dict] | None:
    """``(model name, overrides)`` that ``checkpoint`` says it was trained as: an export's ``config.json``, or
    a training checkpoint's hyper-parameters; ``None`` when it does not say (a bare state dict)."""
    described = exported_config(source) or checkpoint.get("hyper_parameters")
    if not isinstance(described, Mapping) or not isinstance(described.get("model_name"), str):
        return None
    return described["model_name"], dict(described.get("model_overrides") or {})


# Options that change what a network computes but none of its tensors' names or shapes.
WEIGHT_NEUTRAL_OPTIONS = (
    "dropblock_prob",
    "drop_path_rate",
    "final_drop",
    "zero_gamma",
    "output_stride",
    "conv_impl",
)


def same_architecture(
    name: str, overrides: Mapping[str, object], other_name: str, other_overrides: Mapping[str, object]
) -> bool:
    """Whether two (variant, overrides) pairs have the same weights layout. Aliases are resolved, and
    regularisation, dilation and convolution-form options (``WEIGHT_NEUTRAL_OPTIONS``) are ignored, so a
    checkpoint trained with DropBlock loads into the same variant without it."""
    try:
        configs = [get_variant(n).config.replace(**o) for n, o in ((name, overrides), (other_name, other_overrides))]
    except ValueError:
        return False
    neutral = {option: getattr(ResNeStConfig(), option) for option in WEIGHT_NEUTRAL_OPTIONS}
    first, second = (dataclasses.replace(c, **neutral) for c in configs)
    return first == second


def describe_model(name: str, overrides: Mapping[str, object] | None = None) -> str:
    """``resnest14d {width_multiplier: 0.25, stem_width: 8}``: a variant and its overrides, for messages."""
    if not overrides:
        return name
    return f"{name} {{{', '.join(f'{k}: {v}' for k, v in overrides.items())}}}"
