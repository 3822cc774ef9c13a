"""Frozen tiny random GPT-2 / Llama models (quantpilot presets) and a tiny byte-level BPE tokenizer."""

from __future__ import annotations

import warnings

import pytest
import torch

import quantpilot as qp
from quantpilot.testing import tiny_causal_lm

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantized language models run on CPUs with llama.cpp and OpenVINO.",
    "Robert Boulter is an English film, television and theatre actor.",
] * 20


def frozen(kind: str, recipe: qp.Recipe) -> torch.nn.Module:
    """The tiny model through quantize -> (calibrate on 2 batches when the recipe needs data) -> freeze."""
    qmodel = qp.quantize(tiny_causal_lm(kind), recipe)
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if recipe.activations is not None or recipe.steps:
            with qp.calibrate(qmodel):
                for _ in range(2):
                    qmodel(input_ids=torch.randint(0, 512, (1, 64), generator=g))
        qp.freeze(qmodel)
    return qmodel


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE tokenizer with 300 tokens (the tiny models have 512 rows: the GGUF pads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def rtn_models():
    """kind -> RTN W4 g128 model (the rtn-w4-g128 preset's codes: asymmetric uint4, fp16 scales)."""
    return {kind: qp.algorithms.rtn(tiny_causal_lm(kind), bits=4, group_size=128) for kind in ("gpt2", "llama")}
