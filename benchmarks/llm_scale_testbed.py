"""Streamed equals in-memory on the trained testbed GPT-2: RTN, GPTQ and AWQ W4 g128, WikiText-2 test perplexity.

`bench_llm_scale.py --sizes testbed` runs this. The testbed (`quantpilot_testbed.language_model`,
trained by `scripts/train_lm.py`) is saved as a Hugging Face folder (`save_pretrained` + tokenizer);
each method then runs twice on the same 128 calibration windows of 256 tokens from `valid.txt`:

- in memory: `qp.algorithms.rtn / gptq / awq(model, batches, bits=4, group_size=128)`;
- streamed: `quantize_checkpoint(folder, recipe, batches)` with the recipe the in-memory run recorded
  (`qp.recipe_of`), so both run the very same steps, then `qp.load` onto a fresh float skeleton.

Reported: perplexity on the first 200 256-token windows of `test.txt` (neither training nor
calibration sees it; the testbed's own evaluation size), KL(in-memory || streamed) and KL(float || each)
per token on the first 50, and whether every saved tensor (codes,
scales, zero points, float parts) is bit-identical. Targets: RTN codes identical; GPTQ and AWQ
perplexities within `PPL_TOLERANCE` (0.5 %) of each other — the run-to-run noise of the field's
calibration (another seed of the 128 windows moves GPTQ's testbed perplexity by more than that).

Example:
    >>> verdict({"method": "rtn", "identical": True, "ppl_memory": 200.0, "ppl_stream": 200.0})
    'PASS'
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

PPL_TOLERANCE = 0.005  # relative: streamed vs in-memory perplexity on the same windows
# The testbed's own evaluation size (TESTBED_CONFIG eval_windows): 51k test tokens. The whole split is
# ~1100 windows, and each of the 8 passes per method took minutes on the shared 2 cores.
PPL_WINDOWS = 200
KL_WINDOWS = 50
METHODS = ("rtn", "gptq", "awq")


def verdict(row: dict) -> str:
    """PASS when streamed equals in-memory: identical codes for RTN, perplexity within 0.5 % for GPTQ/AWQ.

    Example:
        >>> verdict({"method": "gptq", "identical": False, "ppl_memory": 200.0, "ppl_stream": 202.0})
        'MISS'
    """
    if row["method"] == "rtn":
        return "PASS" if row["identical"] else "MISS"
    return "PASS" if abs(row["ppl_stream"] / row["ppl_memory"] - 1) <= PPL_TOLERANCE else "MISS"


def _in_memory(method: str, model, batches):
    import quantpilot as qp

    if method == "rtn":
        return qp.algorithms.rtn(model, bits=4, group_size=128)
    return getattr(qp.algorithms, method)(model, batches, bits=4, group_size=128)


def compare_on_testbed(work: Path, windows: int = 128) -> list[dict]:
    """One row per method: perplexities, KLs, bit-identity and both wall times (see the module text).

    Example:
        >>> callable(compare_on_testbed)
        True
    """
    import torch

    import quantpilot as qp
    from quantpilot.metrics import kl_to_reference, perplexity
    from quantpilot.streaming import quantize_checkpoint
    from quantpilot_testbed.language_model import calibration_batches, load_testbed, wikitext_tokens

    model, tokenizer = load_testbed(train=False)
    folder = work / "testbed-hf"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    batches = calibration_batches(tokenizer, n=windows, seq_len=256)
    test = wikitext_tokens("test", tokenizer)
    rows = [{"method": "float", "ppl": perplexity(model, test, max_windows=PPL_WINDOWS)}]
    for method in METHODS:
        torch.manual_seed(0)
        tick = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the head left float, said once per run already
            memory = _in_memory(method, load_testbed(train=False)[0], batches)
            t_memory = time.perf_counter() - tick
            recipe = qp.recipe_of(memory)
            tick = time.perf_counter()
            out = quantize_checkpoint(folder, recipe, batches if method != "rtn" else None, out=work / method)
            t_stream = time.perf_counter() - tick
            streamed = qp.load(load_testbed(train=False)[0], out)
        a, b = memory.state_dict(), streamed.state_dict()
        identical = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
        rows.append({
            "method": method, "identical": identical, "t_memory": t_memory, "t_stream": t_stream,
            "ppl_memory": perplexity(memory, test, max_windows=PPL_WINDOWS),
            "ppl_stream": perplexity(streamed, test, max_windows=PPL_WINDOWS),
            "kl_memory_stream": kl_to_reference(streamed, memory, test, max_windows=KL_WINDOWS),
            "kl_float_memory": kl_to_reference(memory, model, test, max_windows=KL_WINDOWS),
            "kl_float_stream": kl_to_reference(streamed, model, test, max_windows=KL_WINDOWS),
        })  # fmt: skip
        print(f"  testbed {method}: {_line(rows[-1])}", file=sys.stderr, flush=True)
    return rows


def _line(r: dict) -> str:
    return (
        f"ppl in-memory {r['ppl_memory']:.3f} streamed {r['ppl_stream']:.3f} "
        f"({100 * (r['ppl_stream'] / r['ppl_memory'] - 1):+.3f} %), KL(mem||stream) {r['kl_memory_stream']:.2e}, "
        f"{'identical' if r['identical'] else 'not identical'}, {r['t_memory']:.0f} s / {r['t_stream']:.0f} s"
    )


def print_testbed(rows: list[dict]) -> None:
    """The testbed table and its PASS/MISS lines.

    Example:
        >>> print_testbed([{"method": "float", "ppl": 191.4}])  # doctest: +ELLIPSIS
        <BLANKLINE>
        testbed GPT-2 (...): float perplexity 191.40
        | method W4 g128 | ppl in-memory | ...
        |---|...
    """
    print(f"\ntestbed GPT-2 (WikiText-2 test, first {PPL_WINDOWS} windows of 256 tokens; KL on {KL_WINDOWS}): "
          f"float perplexity {rows[0]['ppl']:.2f}")  # fmt: skip
    print("| method W4 g128 | ppl in-memory | ppl streamed | diff % | KL(mem‖stream) | KL(float‖mem) "
          "| KL(float‖stream) | bit-identical | s in-memory | s streamed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows[1:]:
        print(f"| {r['method']} | {r['ppl_memory']:.3f} | {r['ppl_stream']:.3f} | "
              f"{100 * (r['ppl_stream'] / r['ppl_memory'] - 1):+.3f} | {r['kl_memory_stream']:.2e} | "
              f"{r['kl_float_memory']:.4f} | {r['kl_float_stream']:.4f} | {r['identical']} | "
              f"{r['t_memory']:.0f} | {r['t_stream']:.0f} |")  # fmt: skip
    for r in rows[1:]:
        what = "identical codes" if r["method"] == "rtn" else f"perplexity within {100 * PPL_TOLERANCE:.1f} %"
        print(f"target testbed {r['method']} streamed equals in-memory ({what}): {verdict(r)}")
