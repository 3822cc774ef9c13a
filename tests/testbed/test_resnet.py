import pytest
import torch

import quantpilot as qp
from quantpilot_testbed.resnet import BasicBlock, ResNet


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


def _quantized_resnet_with_adds():
    torch.manual_seed(0)
    net = qp.fold_batchnorm(ResNet(in_channels=3, num_classes=5, widths=(8, 16), blocks_per_stage=1).eval())
    qmodel = qp.quantize(net, qp.Recipe(ops=("add",)))
    data = torch.randn(8, 3, 16, 16)
    with qp.calibrate(qmodel):
        qmodel(data)
    return net, qp.freeze(qmodel), data


def test_residual_add_quantization_exports_with_both_inputs_quantized(tmp_path):
    import onnx

    from quantpilot.export import export_onnx

    _, qmodel, data = _quantized_resnet_with_adds()
    path = export_onnx(qmodel, data[:1], tmp_path / "resnet.onnx")
    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    adds = [n for n in graph.node if n.op_type == "Add" and all(i in producers for i in n.input)]
    residual = [n for n in adds if all(producers[i].op_type == "DequantizeLinear" for i in n.input)]
    assert len(residual) == 2  # one per block, both inputs coming out of a Q/DQ pair


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"], ids=["onnxruntime", "openvino"])
def test_residual_add_quantization_runs_on_engines(engine):
    net, qmodel, data = _quantized_resnet_with_adds()
    runner = qp.engines.compile(qmodel, engine=engine, example_inputs=data[:1])
    with torch.no_grad():
        expected, reference = qmodel(data), net(data)
    got = runner(data)
    # The engine computes the same int8 graph (rounding may differ by a step here and there) ...
    assert qp.metrics.sqnr_db(expected, got) > 25
    # ... and stays close to the float network.
    assert qp.metrics.sqnr_db(reference, got) > 20
