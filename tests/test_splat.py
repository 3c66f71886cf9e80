"""The split-attention convolution against the reference package, and its special cases."""

from __future__ import annotations

import pytest
import torch
from resnest.torch.splat import SplAtConv2d, rSoftMax
from torch import nn

from resnest_pl.models import RadixSoftmax, SplitAttentionConv2d


def _randomise_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize(("radix", "cardinality"), [(1, 1), (2, 1), (4, 1), (2, 2), (4, 2), (1, 4), (3, 2)])
def test_radix_softmax_matches_reference_layout(radix: int, cardinality: int) -> None:
    logits = torch.randn(3, radix * cardinality * 8, 1, 1, dtype=torch.float64)
    ours = RadixSoftmax(radix, cardinality)(logits).flatten(1)
    ref = rSoftMax(radix, cardinality)(logits).flatten(1)
    assert torch.equal(ours, ref)


def test_radix_softmax_sums_to_one_over_splits() -> None:
    radix, cardinality, channels = 4, 2, 16
    weights = RadixSoftmax(radix, cardinality)(torch.randn(5, radix * channels, 1, 1))
    per_split = weights.unflatten(1, (radix, channels))
    torch.testing.assert_close(per_split.sum(dim=1), torch.ones(5, channels, 1, 1))


def test_radix_one_is_sigmoid_gating() -> None:
    logits = torch.randn(2, 16, 1, 1)
    assert torch.equal(RadixSoftmax(1, 1)(logits), torch.sigmoid(logits))


@pytest.mark.parametrize(("radix", "cardinality", "stride"), [(1, 1, 1), (2, 1, 1), (2, 1, 2), (4, 2, 1), (2, 4, 2)])
def test_split_attention_equals_reference(radix: int, cardinality: int, stride: int) -> None:
    channels = 32 * cardinality
    ref = SplAtConv2d(
        channels,
        channels,
        3,
        stride=stride,
        padding=1,
        groups=cardinality,
        bias=False,
        radix=radix,
        norm_layer=nn.BatchNorm2d,
    ).double()
    ours = SplitAttentionConv2d(channels, channels, 3, stride=stride, padding=1, cardinality=cardinality, radix=radix)
    ours = ours.double()
    _randomise_bn(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, channels, 9, 9, dtype=torch.float64)

    ref.eval(), ours.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-12)

    ref.train(), ours.train()
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(x_ref).square().sum().backward()
    ours(x_ours).square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for (name, p_ours), p_ref in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_radix_one_output_is_gated_activation() -> None:
    block = SplitAttentionConv2d(16, 16, radix=1).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        u = torch.relu(block.bn0(block.conv(x)))
        gate = torch.sigmoid(block.fc2(torch.relu(block.bn1(block.fc1(u.mean((2, 3), keepdim=True))))))
        torch.testing.assert_close(block(x), u * gate)


def test_attention_width_follows_the_paper() -> None:
    assert SplitAttentionConv2d(64, 64, radix=2).fc1.out_channels == 32  # max(64*2//4, 32)
    assert SplitAttentionConv2d(256, 256, radix=2).fc1.out_channels == 128
    assert SplitAttentionConv2d(256, 256, radix=4, cardinality=2).fc1.groups == 2


def test_split_attention_rejects_indivisible_cardinality() -> None:
    with pytest.raises(ValueError, match="cardinality 3"):
        SplitAttentionConv2d(48, 48, radix=2, cardinality=3)


@pytest.mark.parametrize(("radix", "cardinality"), [(1, 1), (2, 1), (4, 2)])
def test_channels_last_input_gives_channels_last_output_and_the_same_values(radix: int, cardinality: int) -> None:
    """The block keeps an NHWC layout through (no conversion back to NCHW, which would cost every next conv
    a copy) and computes the same values, forward and backward."""
    block = SplitAttentionConv2d(32, 32, radix=radix, cardinality=cardinality).double()
    nhwc = SplitAttentionConv2d(32, 32, radix=radix, cardinality=cardinality).double()
    nhwc.load_state_dict(block.state_dict())
    nhwc.to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 7, 7, dtype=torch.float64, requires_grad=True)
    x_nhwc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out, out_nhwc = block(x), nhwc(x_nhwc)
    assert out_nhwc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_nhwc, out, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    out_nhwc.square().sum().backward()
    torch.testing.assert_close(x_nhwc.grad, x.grad, rtol=1e-10, atol=1e-12)
