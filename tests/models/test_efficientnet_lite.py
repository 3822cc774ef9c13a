"""The EfficientNet-Lite definition: structure, TF "SAME" padding, shapes, validation."""

import math

import pytest
import torch
from torch import nn

from quantpilot.models.efficientnet_lite import (
    LITE0_STAGES,
    EfficientNetLite,
    MBConvBlock,
    StageSpec,
    efficientnet_lite0,
)


def _tf_same_padding(size, kernel_size, stride):
    """TensorFlow's SAME rule, written independently: (before, after) for one spatial axis."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def _effective_padding(pad_module, conv):
    if isinstance(pad_module, nn.ZeroPad2d):
        assert conv.padding == (0, 0)
        left, right, top, bottom = pad_module.padding
        assert (left, right) == (top, bottom)
        return left, right
    return conv.padding[0], conv.padding[0]


def test_every_convolution_pads_like_tensorflow_same_at_224():
    model = efficientnet_lite0()
    size = 224
    assert _effective_padding(model._stem_pad, model._conv_stem) == _tf_same_padding(size, 3, 2)
    size //= 2
    for block in model._blocks:
        conv = block._depthwise_conv
        assert _effective_padding(block._pad, conv) == _tf_same_padding(size, conv.kernel_size[0], conv.stride[0])
        size //= conv.stride[0]
    assert size == 7


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7], ids=["k1", "k3", "k5", "k7"])
def test_stride_2_block_pads_like_tensorflow_same(kernel_size):
    block = MBConvBlock(4, 8, kernel_size=kernel_size, stride=2, expand_ratio=1)
    assert _effective_padding(block._pad, block._depthwise_conv) == _tf_same_padding(16, kernel_size, 2)
    assert block(torch.zeros(1, 4, 16, 16)).shape == (1, 8, 8, 8)


def test_lite0_has_no_squeeze_excitation_and_only_relu6():
    model = efficientnet_lite0()
    kinds = {type(m) for m in model.modules()}
    assert kinds == {
        EfficientNetLite, MBConvBlock, nn.ModuleList, nn.Conv2d, nn.BatchNorm2d, nn.ReLU6,
        nn.ZeroPad2d, nn.Identity, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Linear,
    }  # fmt: skip
    assert len(model._blocks) == sum(s.repeats for s in LITE0_STAGES) == 16
    assert sum(b.has_skip for b in model._blocks) == 9


def test_fixed_stem_and_head_widths():
    model = efficientnet_lite0(num_classes=10)
    assert model._conv_stem.out_channels == 32 and model._conv_head.out_channels == 1280
    assert model._fc.out_features == 10


@pytest.mark.parametrize("size", [224, 96, 33], ids=["224", "96", "odd-33"])
def test_any_input_size_gives_logits(size):
    with torch.no_grad():
        assert efficientnet_lite0().eval()(torch.randn(1, 3, size, size)).shape == (1, 1000)


def test_skip_connection_adds_the_input():
    block = MBConvBlock(4, 4, kernel_size=3, stride=1, expand_ratio=2).eval()
    nn.init.zeros_(block._bn2.weight)  # the residual branch now outputs exactly zero
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kernel_size": 4}, "odd"),
        ({"stride": 3}, "stride"),
        ({"repeats": 0}, "repeats"),
        ({"expand_ratio": 0}, "expand_ratio"),
    ],
    ids=["even-kernel", "stride-3", "no-repeats", "zero-expansion"],
)
def test_stage_spec_rejects_bad_values(kwargs, match):
    base = {"kernel_size": 3, "stride": 1, "expand_ratio": 6, "out_channels": 8, "repeats": 1}
    with pytest.raises(ValueError, match=match):
        StageSpec(**{**base, **kwargs})


def test_no_stages_is_rejected():
    with pytest.raises(ValueError, match="at least one"):
        EfficientNetLite(stages=())
