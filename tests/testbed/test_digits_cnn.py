"""The digits CNN: the split, determinism, the accuracy it reaches, and input checks."""

import pytest
import torch

from quantpilot_testbed.digits_cnn import DigitsCNN, accuracy, digits_splits, train_digits_cnn


@pytest.fixture(scope="module")
def splits():
    return digits_splits(seed=0)


def test_split_is_stratified_normalised_and_reproducible(splits):
    assert splits.train_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    assert splits.train_x.shape == (1347, 1, 8, 8) and splits.test_x.shape == (450, 1, 8, 8)
    # Normalised with the training statistics.
    assert abs(splits.train_x.mean().item()) < 1e-4 and abs(splits.train_x.std().item() - 1) < 1e-3
    # Stratified: every class keeps its share (within one image) in the test half.
    train_counts = torch.bincount(splits.train_y, minlength=10).float()
    test_counts = torch.bincount(splits.test_y, minlength=10).float()
    assert torch.all((test_counts - train_counts / 3).abs() <= 1.5)
    again = digits_splits(seed=0)
    assert torch.equal(again.test_x, splits.test_x) and torch.equal(again.test_y, splits.test_y)
    assert not torch.equal(digits_splits(seed=1).test_y, splits.test_y)


def test_short_training_is_deterministic_and_accurate(splits):
    model = train_digits_cnn(splits, epochs=5, seed=0)
    assert not model.training
    assert accuracy(model, splits.test_x, splits.test_y) >= 0.95
    # Determinism needs no full run: two one-epoch runs must agree bit for bit, another seed must not.
    runs = [train_digits_cnn(splits, epochs=1, seed=seed).state_dict() for seed in (0, 0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].values(), runs[1].values(), strict=True))
    assert not torch.equal(runs[0]["head.weight"], runs[2]["head.weight"])


def test_untrained_model_is_near_chance(splits):
    torch.manual_seed(0)
    assert accuracy(DigitsCNN(), splits.test_x, splits.test_y) < 0.4


def test_accuracy_restores_training_mode(splits):
    model = DigitsCNN().train()
    accuracy(model, splits.test_x[:10], splits.test_y[:10], batch_size=3)
    assert model.training


@pytest.mark.parametrize(
    "call",
    [
        lambda s: digits_splits(test_fraction=1.5),
        lambda s: train_digits_cnn(s, epochs=0),
        lambda s: accuracy(DigitsCNN(), s.test_x[:, 0], s.test_y),
        lambda s: accuracy(DigitsCNN(), s.test_x, s.test_y[:5]),
        lambda s: accuracy(DigitsCNN(), s.test_x, s.test_y, batch_size=0),
        lambda s: DigitsCNN(width=0),
    ],
    ids=["test-fraction", "epochs", "x-shape", "y-length", "batch-size", "width"],
)
def test_bad_input_is_rejected(splits, call):
    with pytest.raises(ValueError):
        call(splits)
