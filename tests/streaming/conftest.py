"""The session's tiny Hugging Face folders, written once."""

import pytest
import torch

from ._decoders import tiny_model


@pytest.fixture(scope="session")
def saved_decoder(tmp_path_factory):
    """`saved_decoder(kind)`: the folder of a tiny random `kind` decoder, written once per session."""
    cache = {}

    def make(kind: str):
        if kind not in cache:
            folder = tmp_path_factory.mktemp(f"hf-{kind}")
            tiny_model(kind).save_pretrained(folder)
            cache[kind] = folder
        return cache[kind]

    return make


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny decoders: every op is small, and a second thread only adds fork/join waits (measured 20x slower
    # per op on the busy 2-core test machine). Restored after each test.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
