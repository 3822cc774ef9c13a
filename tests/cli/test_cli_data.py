"""The command line's data readers and metrics: images with labels, token ids, jsonl, and a language-model folder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from quantpilot.cli_auto import input_batches, load_for_cli, model_kind, prepare_items, read_data
from quantpilot.cli_data import Samples, read_images, read_texts, read_token_ids, take
from quantpilot.cli_metrics import label_indices, metric_function, perplexity, top1


def _photo(path, value):
    Image.new("RGB", (8, 8), (value, 0, 0)).save(path)


def test_class_folders_give_labels(tmp_path):
    for label in ("0", "7"):
        (tmp_path / label).mkdir()
        for i in range(2):
            _photo(tmp_path / label / f"{i}.png", 10 * i)
    samples = read_images(tmp_path, "--eval-data")
    assert samples.labels == ["0", "0", "7", "7"] and len(samples) == 4
    batches = input_batches("image", lambda im: torch.zeros(1, 3, 4, 4), samples, 3, 0)
    assert [b.shape[0] for b in batches] == [3, 1]


def test_labels_csv_gives_labels_and_names_every_photo(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        _photo(tmp_path / name, 1)
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,3\nb.jpg,1\n")
    assert read_images(tmp_path, "--eval-data").labels == ["3", "1"]
    (tmp_path / "labels.csv").write_text("a.jpg,3\n")
    with pytest.raises(ValueError, match="no label for 1 image"):
        read_images(tmp_path, "--eval-data")


def test_label_names_go_through_the_models_classes():
    model = torch.nn.Linear(2, 2)
    model.config = type("C", (), {"label2id": {"cat": 0, "dog": 1}})()
    assert label_indices(["dog", "cat", "1"], model).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="neither a class index"):
        label_indices(["bird"], model)
    assert top1(torch.nn.Identity(), [(torch.eye(2), torch.tensor([0, 0]))]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "content, message",
    [('{"text": 3}\n', "needs a 'text' field"), ("{oops\n", "line 1: not valid JSON"), ("\n\n", "holds no samples")],
    ids=["not-text", "bad-json", "empty"],
)
def test_jsonl_mistakes_name_the_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_texts(path, "--eval-data")


def test_token_ids_from_npy_and_jsonl(tmp_path):
    np.save(tmp_path / "rows.npy", np.arange(12).reshape(3, 4))
    assert [w.tolist() for w in read_token_ids(tmp_path / "rows.npy", "--eval-data", None, 4)][2] == [8, 9, 10, 11]
    (tmp_path / "ids.jsonl").write_text("\n".join(json.dumps({"input_ids": list(range(i, i + 5))}) for i in range(3)))
    assert len(read_token_ids(tmp_path / "ids.jsonl", "--eval-data", None, 8)) == 3
    np.save(tmp_path / "float.npy", np.zeros(4))
    with pytest.raises(ValueError, match="integer array"):
        read_token_ids(tmp_path / "float.npy", "--eval-data", None, 4)
    np.save(tmp_path / "short.npy", np.arange(10))
    with pytest.raises(ValueError, match="fewer than 64 tokens"):
        read_token_ids(tmp_path / "short.npy", "--eval-data", None, 64)
    with pytest.raises(ValueError, match="use 3 or less"):
        take(Samples("causal-lm", [1, 2, 3]), 4, "--calib-size", "x")


def test_language_model_folder_with_token_ids_scores_perplexity(tmp_path):
    from quantpilot.testing import tiny_causal_lm

    tiny_causal_lm("llama").save_pretrained(tmp_path / "lm")
    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(0, 500, 96))
    assert model_kind(str(tmp_path / "lm")) == "causal-lm"  # no tokenizer needed for token ids
    model, prep, source = load_for_cli(str(tmp_path / "lm"), "causal-lm")
    assert source["auto_class"] == "AutoModelForCausalLM" and prep is None
    _, samples = read_data(str(tmp_path / "ids.npy"), "causal-lm", "--eval-data", prep, 32)
    batches, items = prepare_items("causal-lm", "perplexity", model, prep, samples, 2, 32)
    assert [b["input_ids"].shape for b in batches] == [torch.Size([2, 32]), torch.Size([1, 32])]
    scores = perplexity(model, items)
    assert len(scores) == 3 and all(100 < s < 5000 for s in scores)  # a random model over ~500 tokens


def test_a_user_metric_from_a_file(tmp_path):
    (tmp_path / "mine.py").write_text("def score(model, items):\n    return [1.0 for _ in items]\n")
    assert metric_function(f"{tmp_path / 'mine.py'}:score")(None, [1, 2]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="has no function nope"):
        metric_function(f"{tmp_path / 'mine.py'}:nope")


def test_labels_csv_header_picks_the_class_index_column(tmp_path):
    _photo(tmp_path / "n01_tench.JPEG", 1)
    (tmp_path / "labels.csv").write_text("file,synset,class_index,name\nn01_tench.JPEG,n01440764,0,tench\n")
    assert read_images(tmp_path, "--eval-data").labels == ["0"]


def test_one_data_set_for_both_is_split_never_shared(tmp_path):
    import argparse

    from quantpilot.cli_auto import _read_all

    data = tmp_path / "all.txt"
    data.write_text("\n".join(f"sentence {i}" for i in range(10)))
    args = argparse.Namespace(calib_data=str(data), eval_data=str(data), calib_size=None, seq_len=16)
    _, calib, _, evals = _read_all(args, "text", "cosine", None)
    assert calib.items == [f"sentence {i}" for i in range(5)] and evals.items == [f"sentence {i}" for i in range(5, 10)]
    args.calib_size = 10
    with pytest.raises(ValueError, match="leaves none of the 10 samples"):
        _read_all(args, "text", "cosine", None)
