"""Finding, listing and splitting the shared ImageNet samples; top-k accuracy."""

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quantpilot.models.efficientnet_lite import preprocess
from quantpilot_testbed.imagenet_samples import (
    ENV_VAR,
    find_samples_dir,
    load_samples,
    split_calibration,
    topk_accuracy,
)


def test_samples_are_500_images_sorted_by_class():
    paths, labels = load_samples()
    assert len(paths) == len(labels) == 500
    assert labels == sorted(labels) and len(set(labels)) == 500
    assert all(0 <= label < 1000 for label in labels)
    assert all(p.is_absolute() and p.suffix == ".JPEG" for p in paths)
    assert (paths[0].name, labels[0]) == ("n01440764_tench.JPEG", 0)


def test_env_var_wins_and_may_name_either_folder(monkeypatch):
    samples = find_samples_dir()
    for folder in (samples.parent, samples):
        monkeypatch.setenv(ENV_VAR, str(folder))
        assert find_samples_dir(start=Path("/")) == samples


def test_missing_samples_say_where_they_were_looked_for(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=ENV_VAR) as error:
        find_samples_dir(start=tmp_path)
    assert str(tmp_path / "shared" / "data" / "imagenet-samples") in str(error.value)


def test_missing_labels_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        load_samples(tmp_path)


def test_default_split_takes_every_fifth_image_for_calibration():
    paths, labels = load_samples()
    calibration, evaluation = split_calibration(paths, labels)
    assert calibration.paths == paths[::5] and calibration.labels == labels[::5]
    assert len(evaluation.paths) == 400
    assert not set(calibration.paths) & set(evaluation.paths)


@given(n=st.integers(2, 600), data=st.data())
def test_split_is_a_partition_of_the_requested_sizes(n, data):
    n_calibration = data.draw(st.integers(1, n - 1))
    items = list(range(n))
    calibration, evaluation = split_calibration(items, items, n_calibration)
    assert len(calibration.paths) == n_calibration
    assert sorted(calibration.paths + evaluation.paths) == items
    assert calibration.paths == calibration.labels and evaluation.paths == evaluation.labels
    assert calibration.paths == sorted(calibration.paths) and evaluation.paths == sorted(evaluation.paths)


@pytest.mark.parametrize(
    "n_calibration,labels", [(0, [0, 1]), (2, [0, 1]), (1, [0])], ids=["none", "all", "misaligned"]
)
def test_split_rejects_bad_sizes(n_calibration, labels):
    with pytest.raises(ValueError):
        split_calibration(["a", "b"], labels, n_calibration)


class _RankByIndex(torch.nn.Module):
    """Ranks class c at position c: top-k holds exactly the classes 0..k-1."""

    def forward(self, x):
        return torch.arange(1000.0, 0.0, -1.0).expand(len(x), -1)


@pytest.mark.parametrize("batch_size", [1, 2, 50], ids=["batch-1", "batch-2", "batch-50"])
def test_topk_counts_hits_across_batches(batch_size):
    paths, _ = load_samples()
    labels = [0, 3, 4, 999]
    accuracy = topk_accuracy(_RankByIndex(), preprocess, paths[:4], labels, k=(5, 1, 4), batch_size=batch_size)
    assert accuracy == {1: 0.25, 4: 0.5, 5: 0.75}


@pytest.mark.parametrize(
    "kwargs",
    [{"labels": [0]}, {"paths": [], "labels": []}, {"k": (0,)}, {"batch_size": 0}],
    ids=["misaligned", "empty", "k-zero", "batch-zero"],
)
def test_topk_rejects_bad_arguments(kwargs):
    paths, _ = load_samples()
    arguments = {"paths": paths[:2], "labels": [0, 1], **kwargs}
    with pytest.raises(ValueError):
        topk_accuracy(_RankByIndex(), preprocess, **arguments)
