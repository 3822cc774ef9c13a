"""bench-llm's child-process stages and what they measure: build (perplexity, KL, size), serve (peak RSS),
time (prefill and decode tokens/s, interleaved).

Each stage runs in its own process (`bench_llm.run_child`), so memory peaks never mix.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch
from llm_variants import WEIGHT_ONLY_ROWS, build_variant, deployable, load_variant, save_variant, slug


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers, each storage counted once (tied weights share theirs).

    >>> tensor_bytes(torch.nn.Linear(4, 2))
    40
    """
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        data = getattr(t, "data", t)
        try:
            key = data.untyped_storage().data_ptr()
            size = data.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # tensor subclasses (torchao): sum their inner tensors
            key, size = id(t), sum(x.nbytes for x in _inner_tensors(t))
        if key not in seen:
            seen.add(key)
            total += size
    return total


def _inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return [x for n in names for x in _inner_tensors(getattr(t, n))]
    return [t]


def prefill(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """One forward pass over the whole prompt, no cache kept (what the prefill column times)."""
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)


def greedy_decode(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy generation one token at a time with the KV cache (no `generate` helper in the timed loop)."""
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        generated = [token]
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            generated.append(token)
    return torch.cat(generated, dim=1)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def stage_build(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build, save and score one variant: perplexity, KL to FP32, size on disk, build seconds (and extras)."""
    from quantpilot_testbed.language_model import (
        calibration_batches,
        kl_to_reference,
        load_testbed,
        perplexity,
        wikitext_tokens,
    )

    model, tokenizer = load_testbed(train=False)
    calib = (
        calibration_batches(tokenizer, n=args.calib, seq_len=256, seed=0)
        if name in ("AWQ W4 g128", "GPTQ W4 g128", "SmoothQuant W8A8")
        else []
    )
    start = time.perf_counter()
    variant = build_variant(name, model, calib)
    build_s = time.perf_counter() - start
    directory = workdir / slug(name)
    save_variant(name, variant, directory)
    size = sum(p.stat().st_size for p in directory.iterdir())
    served = deployable(name, variant)
    tokens = wikitext_tokens("test", tokenizer)
    # Weight-only rows: perplexity of the stored weights with float32 activations (the papers' protocol),
    # so the bf16 rounding of the deployed path (the bf16 row's own error) does not blur the method gaps.
    evaluated = variant if name in WEIGHT_ONLY_ROWS else served
    ppl = perplexity(evaluated, tokens, window=256, max_windows=args.windows)
    # How far the predictions moved from FP32, token by token: on a testbed whose perplexity W4 noise
    # does not hurt, this is where the methods' differences show (a fresh float model: the bf16 row
    # converted the loaded one in place).
    reference, _ = load_testbed(train=False)
    kl = kl_to_reference(evaluated, reference, tokens, window=256, max_windows=args.kl_windows)
    del reference
    extra = {}
    if name == "LLM.int8()":
        try:
            import quantpilot as qp

            extra["outlier_fraction"] = qp.algorithms.outlier_fraction(served)
        except Exception as err:  # a report column only; the row stands without it
            extra["outlier_fraction"] = f"unavailable: {err}"
    if name in WEIGHT_ONLY_ROWS:
        # The quantized Linear layers alone vs the same layers in FP32 (the embedding stays float, as in the papers).
        from quantpilot.nn.packed import WeightOnlyLinear

        layers = [m for m in variant.modules() if isinstance(m, WeightOnlyLinear) and m.tied_to is None]
        extra["linear_mb"] = sum(tensor_bytes(m) for m in layers) / 2**20
        fp32_bytes = sum(4 * m.out_features * (m.in_features + (m.bias is not None)) for m in layers)
        extra["linear_fp32_mb"] = fp32_bytes / 2**20
    return {"perplexity": ppl, "kl_to_fp32": kl, "size_mb": size / 2**20, "build_s": build_s, **extra}


def stage_serve(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Load the saved variant as deployed, prefill and decode once: peak RSS and resident weight bytes."""
    baseline = rss_mb()
    model = deployable(name, load_variant(name, workdir / slug(name)))
    gc.collect()
    ids = torch.randint(0, 8000, (1, args.prefill), generator=torch.Generator().manual_seed(0))
    prefill(model, ids)
    greedy_decode(model, ids[:, :32], args.decode)
    return {"peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": baseline, "weights_mb": tensor_bytes(model) / 2**20}


def stage_time(names: list[str], workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Prefill and decode tokens/s of every variant, timed in interleaved rounds (medians)."""
    from quantpilot.timing import interleaved_latency

    models = {n: deployable(n, load_variant(n, workdir / slug(n))) for n in names}
    ids = torch.randint(0, 8000, (1, args.prefill), generator=torch.Generator().manual_seed(0))
    prompt = ids[:, :32]
    fns_prefill = {n: (lambda m=m: prefill(m, ids)) for n, m in models.items()}
    fns_decode = {n: (lambda m=m: greedy_decode(m, prompt, args.decode)) for n, m in models.items()}
    pre = interleaved_latency(fns_prefill, warmup=1, iters=args.iters)
    dec = interleaved_latency(fns_decode, warmup=1, iters=args.iters)
    return {n: {"prefill_tok_s": args.prefill / pre[n], "decode_tok_s": args.decode / dec[n]} for n in names}
