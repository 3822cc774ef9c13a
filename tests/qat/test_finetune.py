"""qat.finetune: it lowers the quantized loss, keeps the best epoch, and takes every input form."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import quantpilot as qp

W4A4 = qp.Recipe(
    weights=qp.QuantSpec("int4", symmetric=True, narrow_range=True, granularity=qp.PerChannel(0)),
    activations=qp.QuantSpec("int4", symmetric=False),
    activation_calibrator="minmax",
    name="w4a4",
)


def _teacher_task():
    # The float model is the teacher: its own outputs are the targets, so the float loss is zero
    # and every bit of the quantized model's loss is quantization error.
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(256, 8)
    with torch.no_grad():
        return teacher, (x, teacher(x))


def _frozen_loss(model, data):
    with torch.no_grad():
        return F.mse_loss(model.eval()(data[0]), data[1]).item()


def _normalised_mse(output, target):
    # 1 - R^2: a loss of order 1, so the learning rate needs no tuning to the targets' scale.
    return F.mse_loss(output, target) / target.var()


@pytest.mark.parametrize("learn_ranges", [False, True], ids=["fixed-ranges", "learned-ranges"])
def test_short_qat_run_lowers_the_quantized_loss(learn_ranges):
    teacher, train = _teacher_task()
    qmodel = qp.quantize(teacher, W4A4)
    with qp.calibrate(qmodel):
        qmodel(train[0])
    ptq_loss = _frozen_loss(qp.freeze(qp.qat.prepare(qmodel)), train)
    qat = qp.qat.prepare(qmodel, learn_ranges=learn_ranges)
    batches = list(zip(train[0].split(32), train[1].split(32), strict=True))
    # Adam for this toy regression: with STE noise at W4A4 it converges in a few epochs where SGD
    # needs a tuned rate. The rules-of-thumb schedule (SGD) is measured on the digits CNN in bench-qat.
    schedule = qp.qat.Schedule(epochs=6, lr=0.003, batch_size=32, optimizer="adam")
    result = qp.qat.finetune(qat, batches, _normalised_mse, schedule, progress=False)
    assert result.train_losses[-1] < result.train_losses[0]
    # Measured on the frozen (integer-weight) model, the one that is deployed.
    qat_loss = _frozen_loss(qp.freeze(qat), train)
    assert ptq_loss > 1e-3 and qat_loss < 0.85 * ptq_loss


def test_the_best_epoch_is_kept():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(32, 3)
    batches = [(x, x.sum(dim=1, keepdim=True))]
    snapshots, scores = [], iter([0.5, 0.9, 0.1])

    def eval_fn(m):
        assert not m.training
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    result = qp.qat.finetune(model, batches, F.mse_loss, qp.qat.Schedule(epochs=3, lr=0.05, batch_size=32), eval_fn)
    assert result.best_epoch == 1 and result.eval_scores == [0.5, 0.9, 0.1]
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())
    assert not torch.equal(snapshots[1]["weight"], snapshots[2]["weight"]) and model.training


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, a, b):
        return self.linear(a * b)


@pytest.mark.parametrize(
    "as_inputs",
    [lambda a, b: (a, b), lambda a, b: {"a": a, "b": b}],
    ids=["tuple-args", "dict-kwargs"],
)
def test_tuple_and_dict_inputs_are_unpacked(as_inputs):
    torch.manual_seed(0)
    a, b = torch.randn(16, 2), torch.randn(16, 2)
    model = _TwoInputs()
    batches = [(as_inputs(a, b), (a * b).sum(dim=1, keepdim=True))]
    result = qp.qat.finetune(model, batches, F.mse_loss, qp.qat.Schedule(epochs=5, lr=0.1, batch_size=16))
    assert result.train_losses[-1] < result.train_losses[0]


def test_a_users_own_loop_with_the_schedule():
    teacher, train = _teacher_task()
    qmodel = qp.quantize(teacher, W4A4)
    with qp.calibrate(qmodel):
        qmodel(train[0])
    qat = qp.qat.prepare(qmodel, learn_ranges=True)
    before = _frozen_loss(qp.freeze(qp.qat.prepare(qmodel)), train)
    schedule = qp.qat.Schedule(epochs=6, lr=0.003, batch_size=32, optimizer="adam")
    optimizer, scheduler = schedule.build(qat.parameters(), steps_per_epoch=8)
    for _ in range(schedule.epochs):
        for xb, yb in zip(train[0].split(32), train[1].split(32), strict=True):
            optimizer.zero_grad()
            _normalised_mse(qat(xb), yb).backward()
            optimizer.step()
            scheduler.step()
    assert _frozen_loss(qp.freeze(qat), train) < 0.85 * before


def test_bad_input_is_rejected():
    model, schedule = nn.Linear(2, 1), qp.qat.Schedule(epochs=1, lr=0.1, batch_size=1)
    pair = (torch.ones(2, 2), torch.ones(2, 1))
    with pytest.raises(ValueError, match="one-shot"):
        qp.qat.finetune(model, (p for p in [pair]), F.mse_loss, schedule)
    with pytest.raises(ValueError, match="no batch"):
        qp.qat.finetune(model, [], F.mse_loss, schedule)
    with pytest.raises(ValueError, match="pair"):
        qp.qat.finetune(model, [torch.ones(1, 2)], F.mse_loss, schedule)
    with pytest.raises(ValueError, match="scalar"):
        qp.qat.finetune(model, [pair], lambda out, t: out - t, schedule)
    with pytest.raises(ValueError, match="lr"):
        qp.qat.finetune(model, [pair], lambda out, t: (out - t).sum() * float("nan"), schedule)
    with pytest.raises(TypeError, match="Schedule"):
        qp.qat.finetune(model, [pair], F.mse_loss, {"epochs": 1})
