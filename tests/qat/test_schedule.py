"""The QAT schedule: the adaptation rules, each override, the learning-rate curve, and build()."""

import math

import pytest
import torch

from quantpilot.qat import Schedule, adapt_schedule

ORIGINAL = Schedule(epochs=100, lr=0.1, batch_size=256, warmup_epochs=5)


def test_rules_of_thumb_from_the_issue():
    assert adapt_schedule(ORIGINAL) == Schedule(
        epochs=10, lr=0.001, batch_size=128, warmup_epochs=1, final_lr_ratio=0.01, optimizer="sgd", momentum=0.9
    )


def test_adaptation_returns_a_new_schedule_and_keeps_the_original():
    adapted = adapt_schedule(ORIGINAL)
    assert adapted is not ORIGINAL and ORIGINAL.epochs == 100 and ORIGINAL.lr == 0.1


@pytest.mark.parametrize(
    ("override", "field", "expected"),
    [
        ({"epoch_fraction": 0.2}, "epochs", 20),
        ({"lr_fraction": 0.1}, "lr", 0.1 * 0.1),
        ({"batch_fraction": 1.0}, "batch_size", 256),
        ({"warmup_fraction": 1.0}, "warmup_epochs", 5),
        ({"final_lr_ratio": 0.0}, "final_lr_ratio", 0.0),
        ({"optimizer": "adamw"}, "optimizer", "adamw"),
        ({"optimizer": None}, "optimizer", "sgd"),
        ({"momentum": 0.5}, "momentum", 0.5),
    ],
    ids=["epochs", "lr", "batch", "warmup", "final-lr", "optimizer", "keep-optimizer", "momentum"],
)
def test_every_rule_is_overridable(override, field, expected):
    assert getattr(adapt_schedule(ORIGINAL, **override), field) == pytest.approx(expected)


def test_short_schedules_keep_at_least_one_epoch_and_a_partial_warmup():
    tiny = adapt_schedule(Schedule(epochs=3, lr=0.1, batch_size=1))
    assert tiny.epochs == 1 and tiny.batch_size == 1 and tiny.warmup_epochs == 0.5
    # The digits CNN's schedule: 30 epochs -> 3, with a one-epoch warm-up.
    digits = adapt_schedule(Schedule(epochs=30, lr=0.05, batch_size=64, warmup_epochs=2))
    assert (digits.epochs, digits.batch_size, digits.warmup_epochs) == (3, 32, 1)
    assert digits.lr == pytest.approx(5e-4)


def test_lr_curve_warms_up_linearly_then_follows_a_cosine_to_the_final_ratio():
    s = Schedule(epochs=10, lr=1.0, batch_size=8, warmup_epochs=2, final_lr_ratio=0.01)
    per_epoch = 5
    factors = [s.lr_factor(i, per_epoch) for i in range(10 * per_epoch)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    decay = factors[10:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    # The cosine runs over the 40 decay steps and reaches the final ratio as training ends.
    assert decay[0] == pytest.approx(1.0) and decay[-1] > 0.01
    assert s.lr_factor(50, per_epoch) == pytest.approx(0.01)
    assert s.lr_factor(10 + 20, per_epoch) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s.lr_factor(10 + 13, per_epoch) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 13 / 40)))


def test_build_gives_sgd_with_momentum_and_a_scheduler_that_follows_the_curve():
    s = adapt_schedule(ORIGINAL)
    param = torch.nn.Parameter(torch.zeros(3))
    opt, sched = s.build([param], steps_per_epoch=4)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    seen = []
    for _ in range(s.epochs * 4):
        seen.append(opt.param_groups[0]["lr"])
        param.sum().backward()
        opt.step()
        sched.step()
    assert seen == pytest.approx([s.lr * s.lr_factor(i, 4) for i in range(s.epochs * 4)])
    assert 0 < seen[-1] < 0.05 * s.lr


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)],
    ids=["adam", "adamw", "rmsprop"],
)
def test_other_optimizers_can_be_chosen(name, cls):
    opt, _ = Schedule(epochs=1, lr=0.01, batch_size=2, optimizer=name).build([torch.nn.Parameter(torch.ones(1))])
    assert type(opt) is cls


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 0},
        {"epochs": 2.5},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"batch_size": 0},
        {"warmup_epochs": 11},
        {"final_lr_ratio": 1.5},
        {"optimizer": "lion"},
        {"momentum": 1.0},
    ],
    ids=["epochs", "epochs-float", "lr-zero", "lr-nan", "batch", "warmup", "final-lr", "optimizer", "momentum"],
)
def test_bad_schedules_are_rejected(kwargs):
    with pytest.raises(ValueError):
        Schedule(**{"epochs": 10, "lr": 0.1, "batch_size": 8, **kwargs})


def test_bad_adaptation_arguments_are_rejected():
    with pytest.raises(TypeError, match="Schedule"):
        adapt_schedule({"epochs": 10})
    with pytest.raises(ValueError, match="epoch_fraction"):
        adapt_schedule(ORIGINAL, epoch_fraction=0)
    with pytest.raises(ValueError, match="no parameters"):
        ORIGINAL.build([])
