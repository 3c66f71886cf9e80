"""Backbone API: names, knobs, bad settings, the variant table and feature outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from resnest import torch as reference
from resnest.torch import ablation as reference_ablation
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import DropBlock2d, FeaturePyramidNetwork

from resnest_pl.models import (
    Bottleneck,
    ResNeStConfig,
    SplitAttentionConv2d,
    create_model,
    get_variant,
    list_models,
    same_architecture,
)
from resnest_pl.models.__main__ import format_table, variant_rows
from resnest_pl.models.complexity import count_macs, count_params

from ..helpers import assert_same_gradients, assert_same_outputs, randomise_batchnorm, tiny_model

ROOT = Path(__file__).resolve().parents[2]
# Exact parameter counts (1000 classes), counted once from the reference implementations' constructors:
# resnest==0.0.5 (resnest.torch.resnest50/101/200/269, resnest.torch.ablation.resnest50_fast_*) and timm 1.0
# (resnest14d, resnest26d, resnest50d, resnest101e, resnest200e, resnest269e, resnest50d_4s2x40d,
# resnest50d_1s4x24d), as sum(p.numel() for p in model.parameters()); the two agree wherever both build one.
PARAMS = {
    "resnest14d": 10_611_688,
    "resnest26d": 17_069_448,
    "resnest50": 27_483_240,
    "resnest101": 48_275_016,
    "resnest200": 70_201_544,
    "resnest269": 110_929_480,
    "resnest50_fast_1s1x64d": 26_217_896,
    "resnest50_fast_2s1x64d": 27_483_240,
    "resnest50_fast_4s1x64d": 31_912_712,
    "resnest50_fast_1s2x40d": 25_946_680,
    "resnest50_fast_2s2x40d": 26_943_792,
    "resnest50_fast_4s2x40d": 30_417_592,
    "resnest50_fast_1s4x24d": 25_677_000,
}
TIMM_NAMES = {
    "resnest14d": "resnest14d",
    "resnest26d": "resnest26d",
    "resnest50": "resnest50d",
    "resnest101": "resnest101e",
    "resnest200": "resnest200e",
    "resnest269": "resnest269e",
    "resnest50_fast_4s2x40d": "resnest50d_4s2x40d",
    "resnest50_fast_1s4x24d": "resnest50d_1s4x24d",
}


def reference_constructor(name: str) -> Callable[[], nn.Module] | None:
    """The reference package's constructor of ``name``, if it has one (it lacks resnest14d and resnest26d)."""
    return getattr(reference, name, None) or getattr(reference_ablation, name, None)


def readme_variant_table() -> list[str]:
    """The lines of the variant table in docs/backbone.md."""
    text = (ROOT / "docs" / "backbone.md").read_text()
    section = text.split("## Variant table", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_every_paper_variant_is_listed() -> None:
    assert list_models() == list(PARAMS)
    assert {"resnest50d", "resnest101e", "resnest200e", "resnest269e"} <= set(list_models(include_aliases=True))


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_counts_are_exact_and_the_references(name: str) -> None:
    with torch.device("meta"):  # ResNeSt-269 in milliseconds: shapes only
        ours = count_params(create_model(name))
        references = [count_params(timm.create_model(TIMM_NAMES[name]))] if name in TIMM_NAMES else []
        if (constructor := reference_constructor(name)) is not None:
            references.append(count_params(constructor()))
    assert ours == PARAMS[name]
    assert references and all(count == ours for count in references)


def test_the_readme_variant_table_is_the_live_count() -> None:
    """Every params, GMACs, eval crop, crop_pct and interpolation figure the README prints."""
    assert readme_variant_table() == format_table(variant_rows(list_models())).splitlines()


@pytest.mark.parametrize("name", ["resnest50", "resnest269", "resnest50_fast_1s4x24d"])
def test_macs_are_counted_as_for_the_reference(name: str) -> None:
    constructor = reference_constructor(name)
    assert constructor is not None
    with torch.device("meta"):
        ours, theirs = create_model(name), constructor()
    assert count_macs(ours, 224) == count_macs(theirs, 224)


def test_published_eval_settings() -> None:
    """The official evaluation keeps crop / (crop + 32) of the shorter side, bicubic; timm's configs for the
    Gluon-converted resnest14d / 26d use 0.875, bilinear."""
    for name in list_models():
        variant = get_variant(name)
        assert variant.eval_crop == {"resnest101": 256, "resnest200": 320, "resnest269": 416}.get(name, 224)
        assert variant.crop_pct == pytest.approx(variant.eval_crop / (variant.eval_crop + 32), abs=1e-12)
        assert variant.interpolation == ("bilinear" if name in ("resnest14d", "resnest26d") else "bicubic")
    assert get_variant("resnest269e").crop_pct == pytest.approx(0.928, abs=1e-3)  # timm's 416 px config


def test_fast_variants_are_their_rskxwd_setting() -> None:
    cfg = get_variant("resnest50_fast_4s2x40d").config
    assert (cfg.radix, cfg.cardinality, cfg.bottleneck_width, cfg.avd_first) == (4, 2, 40, True)
    assert get_variant("resnest50").config.avd_first is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(radix=-1), "radix must be an integer >= 0"),
        (dict(cardinality=0), "cardinality must be an integer >= 1"),
        (dict(cardinality=3, bottleneck_width=8), "cardinality 3 does not divide"),
        (dict(bottleneck_width=0), "bottleneck_width must be >= 1"),
        (dict(bottleneck_width=1, width_multiplier=0.1), "no channels per group"),
        (dict(output_stride=4), r"output_stride must be one of \(8, 16, 32\)"),
        (dict(dropblock_prob=1.5), "dropblock_prob must lie in"),
        (dict(layers=(3, 4, 6)), "four positive block counts"),
        (dict(radiks=2), "unknown ResNeSt option 'radiks'. Did you mean radix"),
        (dict(conv_impl="dense"), "conv_impl must be one of grouped, split"),
    ],
)
def test_impossible_settings_are_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("resnest50", **overrides)


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model .resnet50.\. Did you mean resnest50"):
        create_model("resnet50")


def test_radix_zero_is_resnet_d_with_plain_grouped_conv() -> None:
    model = tiny_model(radix=0, cardinality=2)
    block = model.layer2[0]
    assert type(block.conv2) is nn.Conv2d and block.conv2.groups == 2
    assert isinstance(block.bn2, nn.BatchNorm2d)
    assert not any(isinstance(m, SplitAttentionConv2d) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("radix", [1, 2, 4])
def test_radix_sets_split_attention_groups(radix: int) -> None:
    conv = tiny_model(radix=radix, cardinality=2).layer1[0].conv2
    assert isinstance(conv, SplitAttentionConv2d)
    assert conv.conv.groups == 2 * radix and conv.conv.out_channels == radix * conv.channels


def test_stem_and_shortcut_knobs() -> None:
    deep = create_model("resnest14d")
    assert isinstance(deep.conv1, nn.Sequential) and deep.conv1[6].out_channels == 64
    plain = create_model("resnest14d", deep_stem=False)
    assert plain.conv1.kernel_size == (7, 7) and plain.bn1.num_features == 64
    avg = deep.layer2[0].downsample
    assert isinstance(avg[0], nn.AvgPool2d) and avg[1].stride == (1, 1)
    strided = create_model("resnest14d", avg_down=False).layer2[0].downsample
    assert strided[0].stride == (2, 2)


def test_avd_moves_the_downsampling_out_of_conv2() -> None:
    with_avd = create_model("resnest14d").layer2[0]
    assert isinstance(with_avd.avd_last, nn.AvgPool2d) and with_avd.conv2.conv.stride == (1, 1)
    first = create_model("resnest14d", avd_first=True).layer2[0]
    assert isinstance(first.avd_first, nn.AvgPool2d) and isinstance(first.avd_last, nn.Identity)
    without = create_model("resnest14d", avd=False).layer2[0]
    assert isinstance(without.avd_last, nn.Identity) and without.conv2.conv.stride == (2, 2)
    assert isinstance(create_model("resnest14d").layer1[0].avd_last, nn.Identity)  # layer1 never pools


def test_dropblock_only_in_layers_3_and_4_and_only_in_training() -> None:
    model = tiny_model(dropblock_prob=0.2)
    where = {name.split(".")[0] for name, m in model.named_modules() if isinstance(m, DropBlock2d)}
    assert where == {"layer3", "layer4"}
    block = model.layer3[0]
    assert all(isinstance(m, DropBlock2d) for m in (block.drop1, block.conv2.dropblock, block.drop3))
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        features = model.layer3[0].drop1
        features.train()
        dropped = features(torch.ones(4, 8, 16, 16))
    assert (dropped == 0).any() and dropped.max() > 1  # blocks zeroed, the rest rescaled


def test_final_dropout_and_zero_gamma() -> None:
    model = create_model("resnest14d", final_drop=0.2)
    assert isinstance(model.drop, nn.Dropout) and model.drop.p == 0.2
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    unzeroed = create_model("resnest14d", zero_gamma=False)
    assert all(torch.all(b.bn3.weight == 1) for b in unzeroed.modules() if isinstance(b, Bottleneck))


def test_zero_gamma_makes_each_block_start_as_its_shortcut() -> None:
    block = tiny_model().layer2[0].eval()
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.downsample(x)))


def test_init_follows_the_reference_scheme() -> None:
    model = create_model("resnest50", zero_gamma=False)
    conv = model.layer3[0].conv3
    std = (2.0 / (conv.out_channels)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(std, rel=0.05)
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)


def test_small_input_stem_keeps_cifar_resolution() -> None:
    model = tiny_model(small_input=True)
    stages = model.forward_stages(torch.randn(2, 3, 32, 32))
    assert [tuple(t.shape[-2:]) for t in stages.values()] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert [f.stride for f in model.feature_info] == [1, 2, 4, 8]
    plain = tiny_model(small_input=True, deep_stem=False)
    assert plain.conv1.kernel_size == (3, 3) and plain.conv1.stride == (1, 1)


def test_in_chans_and_width_multiplier() -> None:
    model = tiny_model(in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert model.num_features == 512 // 4 * 4
    assert ResNeStConfig(width_multiplier=0.5).stage_planes == (32, 64, 128, 256)


@pytest.mark.parametrize(
    ("output_stride", "sizes"),
    [(32, [16, 8, 4, 2]), (16, [16, 8, 4, 4]), (8, [16, 8, 8, 8])],
)
def test_features_for_dense_prediction(output_stride: int, sizes: list[int]) -> None:
    model = tiny_model(output_stride=output_stride).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages = model.forward_stages(x)
        assert list(stages) == ["C2", "C3", "C4", "C5"]
        for info, (name, tensor) in zip(model.feature_info, stages.items(), strict=True):
            assert info.name == name
            assert tensor.shape[1] == info.channels
            assert tensor.shape[-1] == 64 // info.stride
        assert [t.shape[-1] for t in stages.values()] == sizes
        torch.testing.assert_close(stages["C5"], model.forward_features(x))
        fpn = FeaturePyramidNetwork([f.channels for f in model.feature_info], 16)
        pyramid = fpn(stages)
        assert [p.shape[1] for p in pyramid.values()] == [16] * 4


def test_output_stride_dilates_like_the_reference() -> None:
    model = create_model("resnest50", output_stride=8)
    assert model.layer3[0].conv2.conv.dilation == (1, 1)
    assert model.layer3[1].conv2.conv.dilation == (2, 2)
    assert model.layer4[0].conv2.conv.dilation == (2, 2)
    assert model.layer4[1].conv2.conv.dilation == (4, 4)


def test_torchvision_feature_extraction_traces_the_backbone() -> None:
    model = tiny_model().eval()
    extractor = create_feature_extractor(model, {"layer2": "C3", "layer4": "C5"})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = extractor(x)
        torch.testing.assert_close(features["C5"], model.forward_features(x))


def test_headless_model_returns_pooled_features() -> None:
    model = tiny_model(num_classes=0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)
    model.reset_classifier(5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_dropblock_works_on_maps_smaller_than_its_block() -> None:
    model = tiny_model(dropblock_prob=0.3, small_input=False).train()  # stage 4 of a 32 px input is 1x1
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model(torch.randn(2, 3, 64, 64)).isfinite().all()  # 2x2 at stage 4: an even size, shrunk to 1


# ---- the radix convolution as one grouped convolution or as dense convolutions on weight slices ----------------


@pytest.mark.parametrize(
    "overrides",
    [
        dict(radix=2, cardinality=1),
        dict(radix=4, cardinality=2, avd_first=True),
        dict(radix=1, cardinality=2, avd=False),
        dict(radix=2, cardinality=2, avd=True, avd_first=False, output_stride=8),
    ],
    ids=["2s1x", "4s2x_avd_first", "1s2x_no_avd", "2s2x_dilated"],
)
def test_split_conv_model_equals_the_grouped_one_with_gradients(overrides: dict) -> None:
    grouped = randomise_batchnorm(tiny_model(**overrides).double()).train()
    split = tiny_model(conv_impl="split", **overrides).double().train()
    split.load_state_dict(grouped.state_dict(), strict=True)
    assert_same_gradients(split, grouped, size=32, targets=[1, 7], rtol=1e-9)
    assert_same_outputs(split, grouped, size=32)


@pytest.mark.parametrize("name", ["resnest50", "resnest50_fast_4s2x40d"])
def test_split_conv_resnest50_with_reference_weights_matches_the_reference(name: str) -> None:
    theirs = randomise_batchnorm(reference_constructor(name)(pretrained=False).double())
    ours = create_model(name, conv_impl="split").double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_outputs(ours, theirs)


def test_conv_impl_is_weight_neutral() -> None:
    """A checkpoint trained in one form loads into the other (and the recorded overrides do not block it)."""
    assert same_architecture("resnest50", {"conv_impl": "split"}, "resnest50d", {})
    assert not same_architecture("resnest50", {"conv_impl": "split", "radix": 4}, "resnest50", {})


def test_split_conv_model_scripts_and_traces() -> None:
    model = tiny_model(conv_impl="split", radix=4, cardinality=2).eval()
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(model)
    extractor = create_feature_extractor(model, {"layer4": "C5", "fc": "logits"})
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected)
        torch.testing.assert_close(scripted.forward_stages(x)["C5"], model.forward_features(x))
        torch.testing.assert_close(extractor(x)["logits"], expected)
