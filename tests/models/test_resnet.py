import pytest
import torch

from quantpilot.models.resnet import BasicBlock, ResNet


def test_shapes_and_downsampling():
    net = ResNet(in_channels=3, num_classes=7, widths=(4, 8, 16), blocks_per_stage=1).eval()
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    # Stage 2 and 3 open with a strided block whose shortcut is a 1x1 Conv-BN projection.
    projections = [b for b in net.blocks if not isinstance(b.shortcut, torch.nn.Identity)]
    assert len(projections) == 2


def test_block_adds_the_shortcut():
    block = BasicBlock(4, 4).eval()
    torch.nn.init.zeros_(block.bn2.weight)  # the main branch now outputs bn2.bias = 0
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(block(x), torch.relu(x))


def test_traces_with_fx_and_shows_the_residual_add():
    graph = torch.fx.symbolic_trace(ResNet(widths=(4,), blocks_per_stage=1)).graph
    adds = [n for n in graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"widths": ()}, {"blocks_per_stage": 0}, {"in_channels": 1.5}, {"widths": (4, -1)}],
    ids=["no-widths", "zero-blocks", "float-channels", "negative-width"],
)
def test_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        ResNet(**kwargs)
