"""Run a GGUF in llama.cpp (llama-cpp-python's low-level API): logits of a sequence, timed decode steps.

The low-level API, not `llama_cpp.Llama`, because the check needs one model parameter that class
does not expose: `use_extra_bufts=False`. With it on, llama.cpp repacks Q4_0/Q4_1/Q8_0 weights for
its AMX kernels; on this machine (a VM with AMX flags) decoding more than one token with them
crashed the process (segmentation fault), while the plain CPU kernels compute the same blocks. Logits
are llama.cpp's own arithmetic either way (activations quantized to 8 bits for the dot products).

Example:
    >>> LlamaCpp.__name__
    'LlamaCpp'
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["LlamaCpp"]


class LlamaCpp:
    """A loaded GGUF with one context of `n_ctx` tokens; use as a context manager (frees the model).

    Example:
        >>> callable(LlamaCpp.logits)
        True
    """

    def __init__(self, path: str | Path, n_ctx: int, vocab_size: int, threads: int = 2, extra_buffers: bool = False):
        import llama_cpp as lc

        self._lc = lc
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.use_extra_bufts = extra_buffers
        self.model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ValueError(f"llama.cpp could not load {path}")
        ctx = lc.llama_context_default_params()
        ctx.n_ctx = ctx.n_batch = ctx.n_ubatch = n_ctx
        ctx.n_threads = ctx.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, ctx)
        self.n_ctx, self.vocab_size = n_ctx, vocab_size
        self.batch = lc.llama_batch_init(n_ctx, 0, 1)

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self._lc.llama_batch_free(self.batch)
        self._lc.llama_free(self.ctx)
        self._lc.llama_model_free(self.model)

    def _decode(self, ids: list[int], start: int, all_logits: bool) -> None:
        batch = self.batch
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == len(ids) - 1
        batch.n_tokens = len(ids)
        if self._lc.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def reset(self) -> None:
        """Forget the cached sequence."""
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self.ctx), True)

    def logits(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """Logits (n, vocab) of every position of `ids`, from an empty cache."""
        ids = [int(t) for t in ids]
        self.reset()
        self._decode(ids, 0, True)
        ptr = self._lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(len(ids), self.vocab_size)).copy()

    def decode_seconds(self, prompt: list[int] | np.ndarray, tokens: list[int] | np.ndarray) -> list[float]:
        """Decode `prompt` at once, then `tokens` one per step with the cache; the seconds of each step."""
        prompt = [int(t) for t in prompt]
        self.reset()
        self._decode(prompt, 0, False)
        seconds = []
        for i, token in enumerate(tokens):
            start = time.perf_counter()
            self._decode([int(token)], len(prompt) + i, False)
            seconds.append(time.perf_counter() - start)
        return seconds
