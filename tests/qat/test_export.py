"""After QAT (learned ranges), freeze -> QDQ ONNX export -> ONNX Runtime computes what PyTorch does."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import quantpilot as qp
from quantpilot.export import export_onnx

ort = pytest.importorskip("onnxruntime")


def test_qat_model_exports_and_runs_on_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x, labels = torch.randn(64, 1, 6, 6), torch.randint(0, 5, (64,))
    qmodel = qp.quantize(model, "int8-static")
    with qp.calibrate(qmodel):
        qmodel(x)
    qat = qp.qat.prepare(qmodel, learn_ranges=True)
    result = qp.qat.finetune(
        qat,
        list(zip(x.split(16), labels.split(16), strict=True)),
        F.cross_entropy,
        qp.qat.Schedule(epochs=2, lr=0.01, batch_size=16),
        progress=False,
    )
    assert len(result.train_losses) == 2
    learned = qat[3].input_quantizer.scale.detach().clone()
    qp.freeze(qat.eval())
    assert torch.equal(qat[3].input_quantizer.scale, learned)
    path = export_onnx(qat, (x[:2],), tmp_path / "qat.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = qat(x).numpy()
    # ORT may run the QDQ graph with integer kernels: allow a few steps of the output's rounding.
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
