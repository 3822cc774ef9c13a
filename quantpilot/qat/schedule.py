"""Training schedules for QAT, and the rules that derive one from the original training schedule.

The rules (NVIDIA's "Integer Quantization for Deep Learning Inference" whitepaper, Wu et al. 2020,
and the QAT recipe modifications that computer-vision training libraries ship): start from the
calibrated post-training-quantized model and fine-tune for about 10 % of the original schedule,
with cosine annealing that starts at 1 % of the original learning rate after a short warm-up,
SGD with momentum rather than an adaptive optimizer (Adam's per-weight step sizes let weights
oscillate across rounding boundaries), and half the batch size. Each rule is a parameter of
`adapt_schedule`, so a user can keep any of them off.

Example:
    >>> adapt_schedule(Schedule(epochs=100, lr=0.1, batch_size=256, warmup_epochs=5))
    Schedule(epochs=10, lr=0.001, batch_size=128, warmup_epochs=1, final_lr_ratio=0.01, optimizer='sgd', momentum=0.9)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["Schedule", "adapt_schedule", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Schedule:
    """A training schedule: length, learning rate curve, batch size and optimizer.

    The learning rate rises linearly from ``lr / warmup_steps`` to ``lr`` over the warm-up, then
    follows a half cosine from ``lr`` down to ``lr * final_lr_ratio`` at the end of training.

    Args:
        epochs: passes over the training data.
        lr: peak learning rate.
        batch_size: the batch size the schedule was tuned for (`finetune` takes batches as given;
            build the loader with this size).
        warmup_epochs: length of the linear warm-up, in epochs (fractions allowed), at most `epochs`.
        final_lr_ratio: the learning rate at the end, as a fraction of `lr`, in [0, 1].
        optimizer: "sgd", "adam", "adamw" or "rmsprop".
        momentum: momentum of SGD / RMSProp, in [0, 1) (Adam uses its own betas).

    Example:
        >>> Schedule(epochs=3, lr=0.1, batch_size=32).warmup_epochs
        0
    """

    epochs: int
    lr: float
    batch_size: int
    warmup_epochs: float = 0
    final_lr_ratio: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _positive_int(self.epochs, "epochs")
        _positive_int(self.batch_size, "batch_size")
        if _number(self.lr, "lr") <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= _number(self.warmup_epochs, "warmup_epochs") <= self.epochs:
            raise ValueError(f"warmup_epochs must be between 0 and epochs={self.epochs}, got {self.warmup_epochs!r}")
        if not 0.0 <= _number(self.final_lr_ratio, "final_lr_ratio") <= 1.0:
            raise ValueError(f"final_lr_ratio must be in [0, 1], got {self.final_lr_ratio!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0.0 <= _number(self.momentum, "momentum") < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def lr_factor(self, step: int, steps_per_epoch: int = 1) -> float:
        """The learning rate at optimizer step `step` (0-based), as a fraction of `lr`.

        Args:
            step: how many optimizer steps were taken before this one.
            steps_per_epoch: batches per epoch (1 when the scheduler is stepped once per epoch).

        Example:
            >>> s = Schedule(epochs=4, lr=1.0, batch_size=8, warmup_epochs=1, final_lr_ratio=0.1)
            >>> [round(s.lr_factor(i), 3) for i in range(5)]
            [1.0, 1.0, 0.775, 0.325, 0.1]
        """
        _positive_int(steps_per_epoch, "steps_per_epoch")
        total = self.epochs * steps_per_epoch
        warmup = round(self.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return (step + 1) / warmup
        # The cosine reaches the final rate when training ends, after the last step (as
        # CosineAnnealingLR with T_max = the decay steps): that last step still moves the weights.
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_lr_ratio + (1.0 - self.final_lr_ratio) * cosine

    def build(
        self, parameters: Iterable[torch.nn.Parameter], steps_per_epoch: int = 1
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimizer and learning-rate scheduler for a user's own training loop.

        Call ``scheduler.step()`` after every ``optimizer.step()`` when `steps_per_epoch` is the
        number of batches per epoch, or once per epoch with the default of 1.

        Args:
            parameters: what to optimize, e.g. ``model.parameters()``.
            steps_per_epoch: how often the scheduler is stepped per epoch.

        Returns:
            ``(optimizer, scheduler)``.

        Example:
            >>> model = torch.nn.Linear(2, 2)
            >>> opt, sched = Schedule(epochs=2, lr=0.01, batch_size=4).build(model.parameters())
            >>> type(opt).__name__, opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]
            ('SGD', 0.01, 0.9)
        """
        params = list(parameters)
        if not params:
            raise ValueError("no parameters to optimize: pass model.parameters() of a model that has some")
        if self.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        elif self.optimizer == "rmsprop":
            optimizer = torch.optim.RMSprop(params, lr=self.lr, momentum=self.momentum)
        elif self.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=self.lr)
        else:
            optimizer = torch.optim.AdamW(params, lr=self.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step, steps_per_epoch))
        return optimizer, scheduler


def adapt_schedule(
    original: Schedule,
    *,
    epoch_fraction: float = 0.1,
    lr_fraction: float = 0.01,
    batch_fraction: float = 0.5,
    warmup_fraction: float = 0.1,
    final_lr_ratio: float = 0.01,
    optimizer: str | None = "sgd",
    momentum: float | None = 0.9,
) -> Schedule:
    """The QAT fine-tuning schedule derived from the schedule the float model was trained with.

    Args:
        original: the original training schedule.
        epoch_fraction: QAT epochs as a share of the original's (rounded, at least 1).
        lr_fraction: QAT peak learning rate as a share of the original's.
        batch_fraction: QAT batch size as a share of the original's (rounded down, at least 1).
        warmup_fraction: QAT warm-up as a share of the original warm-up, rounded up to whole
            epochs; at least one epoch and at most half the QAT epochs (so the cosine part exists).
        final_lr_ratio: where the cosine ends, as a share of the QAT peak learning rate.
        optimizer: the optimizer; None keeps the original's.
        momentum: its momentum; None keeps the original's.

    Returns:
        A new `Schedule`.

    Example:
        >>> adapt_schedule(Schedule(epochs=30, lr=0.05, batch_size=64, warmup_epochs=2)).epochs
        3
        >>> adapt_schedule(Schedule(epochs=30, lr=0.05, batch_size=64), batch_fraction=1.0).batch_size
        64
    """
    if not isinstance(original, Schedule):
        raise TypeError(f"original must be a quantpilot.qat.Schedule, got {type(original).__name__}")
    for name, value in (
        ("epoch_fraction", epoch_fraction),
        ("lr_fraction", lr_fraction),
        ("batch_fraction", batch_fraction),
        ("warmup_fraction", warmup_fraction),
    ):
        if _number(value, name) <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    epochs = max(1, round(original.epochs * epoch_fraction))
    warmup = max(1, math.ceil(original.warmup_epochs * warmup_fraction - 1e-9))
    # A one-epoch run keeps half an epoch of warm-up rather than warming up all the way.
    warmup = warmup if warmup <= epochs / 2 else epochs / 2
    return dataclasses.replace(
        original,
        epochs=epochs,
        lr=original.lr * lr_fraction,
        batch_size=max(1, int(original.batch_size * batch_fraction)),
        warmup_epochs=warmup,
        final_lr_ratio=final_lr_ratio,
        optimizer=original.optimizer if optimizer is None else optimizer,
        momentum=original.momentum if momentum is None else momentum,
    )
