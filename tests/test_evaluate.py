"""evaluate.compare: output error, metric, size and latency side by side."""

import math

import pytest
import torch
from torch import nn

import quantpilot as qp


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    qmodel = qp.quantize(model, "int8-static")
    with qp.calibrate(qmodel):
        for _ in range(4):
            qmodel(torch.randn(32, 256))
    return model, qp.freeze(qmodel)


def test_compare_reports_every_measure(pair):
    model, qmodel = pair
    batches = [torch.randn(16, 256) for _ in range(3)]
    result = qp.evaluate.compare(model, qmodel, batches, metric_fn=lambda m: 0.5, iters=3)
    assert 25 < result.sqnr_db < math.inf
    assert 0.99 < result.cosine <= 1.0
    assert result.max_abs_error > 0
    assert result.size_ratio > 3.5  # int8 weights + per-channel scales vs float32
    assert result.float_latency_s > 0 and result.quant_latency_s > 0
    assert result.float_metric == result.quant_metric == 0.5
    assert set(result.as_dict()) >= {"sqnr_db", "cosine", "size_ratio", "speedup"}
    assert "SQNR" in str(result)


def test_compare_leaves_training_mode(pair):
    model, qmodel = pair
    model.train()
    qp.evaluate.compare(model, qmodel, [torch.randn(4, 256)], iters=1)
    assert model.training
    model.eval()


def test_compare_needs_batches(pair):
    with pytest.raises(ValueError, match="at least one batch"):
        qp.evaluate.compare(*pair, [])
