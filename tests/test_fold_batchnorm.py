import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.transforms import fold_batchnorm
from quantpilot_testbed.resnet import ResNet


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained network has."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            if m.weight is not None:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def test_resnet_fold_is_exact_and_removes_every_bn():
    torch.manual_seed(0)
    net = _randomise_bn(ResNet(in_channels=3, widths=(4, 8), blocks_per_stage=1))
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 6  # the input model is untouched
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims", [1, 2, 3], ids=["conv1d", "conv2d", "conv3d"])
def test_fold_each_conv_rank_with_and_without_bias(dims):
    conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1]
    bn = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d][dims - 1]
    net = _randomise_bn(nn.Sequential(conv(3, 4, 3, bias=True), bn(4), nn.ReLU(), conv(4, 2, 1, bias=False), bn(2)))
    x = torch.randn(2, 3, *([6] * dims))
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(net)(x), net(x), rtol=1e-5, atol=1e-5)


def test_conv_output_read_twice_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use of y

    net = _randomise_bn(Branchy())
    folded = fold_batchnorm(net)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(folded(x), net(x))


def test_untraceable_model_falls_back_to_sequential_order():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # fx cannot trace a branch on data
                return self.body(x)
            return self.body(-x)

    net = _randomise_bn(DataDependent())
    folded = fold_batchnorm(net)
    assert isinstance(folded.body[1], nn.Identity)
    x = torch.randn(2, 1, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_inplace_changes_the_given_model():
    net = _randomise_bn(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)))
    assert fold_batchnorm(net, inplace=True) is net
    assert isinstance(net[1], nn.Identity)


def test_bn_without_running_stats_is_refused():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(net)


def test_rejects_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        fold_batchnorm("resnet")


def test_folded_model_quantizes_without_bn_between_conv_and_output():
    torch.manual_seed(0)
    net = _randomise_bn(ResNet(in_channels=1, widths=(4,), blocks_per_stage=1))
    qmodel = qp.quantize(fold_batchnorm(net), "int8-static")
    x = torch.randn(8, 1, 8, 8)
    with qp.calibrate(qmodel):
        qmodel(x)
    qp.freeze(qmodel)
    with torch.no_grad():
        assert qp.metrics.sqnr_db(net(x), qmodel(x)) > 25
