"""A small CNN on scikit-learn's handwritten digits, trained in seconds on a CPU.

The digits set (1,797 grey 8x8 images, ten classes) ships inside scikit-learn, so nothing is
downloaded. It is the project's image-classification testbed for methods that need training
(quantization-aware training) or many evaluations (selective quantization): a model that takes
hours to train would make those tests benchmarks.

The network has the parts that matter for quantization: Conv2d + BatchNorm + ReLU, a residual
block (``x + f(x)``, whose add sums two differently scaled tensors) and a Linear head.

Example:
    >>> splits = digits_splits(seed=0)
    >>> splits.train_x.shape, splits.train_y.dtype
    (torch.Size([1347, 1, 8, 8]), torch.int64)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "DigitsSplits",
    "DigitsCNN",
    "digits_splits",
    "train_digits_cnn",
    "accuracy",
    "TRAINING_SCHEDULE",
]

# The schedule train_digits_cnn uses unless told otherwise: plain SGD with momentum, a linear
# warm-up, then cosine decay. Exposed so QAT can derive its own schedule from "the original".
TRAINING_SCHEDULE = {"epochs": 30, "lr": 0.05, "batch_size": 64, "warmup_epochs": 2, "momentum": 0.9}
_WEIGHT_DECAY = 1e-4


@dataclass(frozen=True)
class DigitsSplits:
    """Train and test tensors: ``x`` float32 ``(N, 1, 8, 8)`` normalised, ``y`` int64 class labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def digits_splits(seed: int = 0, test_fraction: float = 0.25) -> DigitsSplits:
    """Load scikit-learn's digits and split them, stratified by class, into train and test.

    Pixels (0..16) are standardised with the mean and standard deviation of the *training* images,
    so no test statistic leaks into the model.

    Args:
        seed: picks the split; the same seed gives the same split.
        test_fraction: share of the images held out for testing, in (0, 1).

    Returns:
        A `DigitsSplits`.

    Example:
        >>> s = digits_splits(seed=0)
        >>> len(s.train_y) + len(s.test_y), len(s.test_y)
        (1797, 450)
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32)
    labels = data.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    mean, std = float(tr_x.mean()), float(tr_x.std())

    def as_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x - mean) / std).unsqueeze(1).contiguous()

    return DigitsSplits(as_tensor(tr_x), torch.from_numpy(tr_y), as_tensor(te_x), torch.from_numpy(te_y))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _ResidualBlock(nn.Module):
    """``relu(x + f(x))`` with ``f`` = conv-bn-relu-conv-bn, the ResNet basic block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.body(x))


class DigitsCNN(nn.Module):
    """stem conv (8x8) -> residual block -> 2x2 max-pool -> conv (4x4) -> global average -> Linear(10).

    Args:
        width: channels of the stem and the residual block (the last conv doubles it).

    Example:
        >>> DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        self.stem = _conv_bn_relu(1, width)
        self.block = _ResidualBlock(width)
        self.pool = nn.MaxPool2d(2)
        self.conv = _conv_bn_relu(width, 2 * width)
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(x)))
        x = self.conv(x).mean(dim=(2, 3))
        return self.head(x)


def _check_split(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1:] != (1, 8, 8):
        raise ValueError(f"x must be a float tensor of shape (N, 1, 8, 8), got {getattr(x, 'shape', type(x))}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"y must be a tensor of {x.shape[0]} labels, got {getattr(y, 'shape', type(y))}")


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    # Linear warm-up keeps the first SGD steps from blowing up the freshly initialised BN stats.
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_digits_cnn(
    splits: DigitsSplits, epochs: int = TRAINING_SCHEDULE["epochs"], seed: int = 0, width: int = 16
) -> DigitsCNN:
    """Train a `DigitsCNN` with `TRAINING_SCHEDULE` (SGD + momentum, warm-up, cosine decay).

    Deterministic: the seed fixes the initial weights and the batch order (on one machine and
    thread count; float summation order can differ elsewhere).

    Args:
        splits: from `digits_splits` (only the training half is used).
        epochs: passes over the training images.
        seed: initial weights and shuffling.
        width: channel width of the network.

    Returns:
        The trained float model, in eval mode.

    Example:
        >>> s = digits_splits()
        >>> model = train_digits_cnn(s, epochs=1)  # 30 epochs reach about 98.7 % test accuracy
        >>> model.training, len(list(model.parameters()))
        (False, 14)
    """
    _check_split(splits.train_x, splits.train_y)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN(width)
    sched = TRAINING_SCHEDULE
    optimizer = torch.optim.SGD(
        model.parameters(), lr=sched["lr"], momentum=sched["momentum"], weight_decay=_WEIGHT_DECAY
    )
    n = len(splits.train_y)
    steps_per_epoch = math.ceil(n / sched["batch_size"])
    total = epochs * steps_per_epoch
    warmup = min(sched["warmup_epochs"] * steps_per_epoch, total // 2) or 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, total))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, sched["batch_size"]):
            idx = order[start : start + sched["batch_size"]]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(splits.train_x[idx]), splits.train_y[idx]).backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on images `x` with labels `y`, in eval mode (the mode is restored).

    Example:
        >>> s = digits_splits()
        >>> 0.0 <= accuracy(DigitsCNN(), s.test_x, s.test_y) <= 1.0
        True
    """
    _check_split(x, y)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    was_training = model.training
    model.eval()
    try:
        correct = sum(
            int((model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size]).sum())
            for i in range(0, len(y), batch_size)
        )
    finally:
        model.train(was_training)
    return correct / len(y)
