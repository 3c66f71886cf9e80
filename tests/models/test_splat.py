"""The split-attention convolution against the reference package, and its special cases."""

from __future__ import annotations

import pytest
import torch
from resnest.torch.splat import SplAtConv2d, rSoftMax
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

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


@pytest.mark.parametrize("conv_impl", ["grouped", "split"])
@pytest.mark.parametrize(("radix", "cardinality"), [(1, 1), (2, 1), (4, 2)])
def test_channels_last_input_gives_channels_last_output_and_the_same_values(
    radix: int, cardinality: int, conv_impl: str
) -> None:
    """The block keeps an NHWC layout through (no conversion back to NCHW, which would cost every next conv
    a copy) and computes the same values, forward and backward."""
    block = SplitAttentionConv2d(32, 32, radix=radix, cardinality=cardinality).double()
    nhwc = SplitAttentionConv2d(32, 32, radix=radix, cardinality=cardinality, conv_impl=conv_impl).double()
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


def _grouped_and_split(**kwargs: object) -> tuple[SplitAttentionConv2d, SplitAttentionConv2d]:
    """The same float64 block in both convolution forms, with the same (randomised) weights."""
    grouped = SplitAttentionConv2d(conv_impl="grouped", **kwargs).double()
    _randomise_bn(grouped)
    split = SplitAttentionConv2d(conv_impl="split", **kwargs).double()
    split.load_state_dict(grouped.state_dict(), strict=True)
    return grouped, split


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cardinality", [1, 2])
@pytest.mark.parametrize("radix", [1, 2, 4])
def test_split_convolutions_equal_the_grouped_one(radix: int, cardinality: int, stride: int) -> None:
    channels = 16 * cardinality
    options = dict(stride=stride, cardinality=cardinality, radix=radix, min_attn_channels=8)
    grouped, split = _grouped_and_split(in_channels=channels, channels=channels, **options)
    assert [(k, v.shape) for k, v in split.state_dict().items()] == [
        (k, v.shape) for k, v in grouped.state_dict().items()
    ]
    assert [n for n, _ in split.named_parameters()] == [n for n, _ in grouped.named_parameters()]
    x = torch.randn(2, channels, 9, 9, dtype=torch.float64)

    grouped.eval(), split.eval()
    with torch.no_grad():
        torch.testing.assert_close(split(x), grouped(x), rtol=0, atol=1e-12)

    grouped.train(), split.train()
    x_grouped, x_split = x.clone().requires_grad_(), x.clone().requires_grad_()
    grouped(x_grouped).square().sum().backward()
    split(x_split).square().sum().backward()
    torch.testing.assert_close(x_split.grad, x_grouped.grad, rtol=1e-10, atol=1e-12)
    for (name, p_split), p_grouped in zip(split.named_parameters(), grouped.parameters(), strict=True):
        torch.testing.assert_close(p_split.grad, p_grouped.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_split_form_runs_one_dense_convolution_per_group() -> None:
    _, split = _grouped_and_split(in_channels=32, channels=32, cardinality=2, radix=2, min_attn_channels=8)
    calls: list[int] = []
    conv2d = torch.nn.functional.conv2d

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(int(args[6]) if len(args) > 6 else int(kwargs.get("groups", 1)))
        return conv2d(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "conv2d", counting)
        split._radix_conv(torch.randn(1, 32, 5, 5, dtype=torch.float64))
    assert calls == [1, 1, 1, 1]  # radix x cardinality convolutions, none of them grouped


def test_unknown_conv_impl_is_rejected() -> None:
    with pytest.raises(ValueError, match="conv_impl must be one of grouped, split"):
        SplitAttentionConv2d(32, 32, conv_impl="dense")  # type: ignore[arg-type]


class Float32Softmax(nn.Module):
    """The r-softmax as CUDA autocast runs it: in float32, whatever the input's dtype (CPU autocast keeps bf16)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.inner(logits.float())


@pytest.mark.parametrize("radix", [1, 2, 4])
def test_autocast_keeps_full_size_maps_in_bf16_when_the_softmax_runs_in_float32(radix: int) -> None:
    """A float32 attention weight must not promote the weighted splits or the block's output to float32."""
    block = SplitAttentionConv2d(32, 32, radix=radix, min_attn_channels=8)
    block.rsoftmax = Float32Softmax(block.rsoftmax)
    x = torch.randn(2, 32, 8, 8)
    activation = x.numel()
    float32_maps: list[str] = []

    class RecordFloat32Maps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.numel() >= activation:
                    float32_maps.append(str(func))
            return out

    with torch.autocast("cpu", dtype=torch.bfloat16), RecordFloat32Maps():
        out = block(x)
    assert out.dtype == torch.bfloat16
    assert float32_maps == []
