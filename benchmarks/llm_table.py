"""bench-llm's printed table: one row per variant, notes on the quantized layers, the targets as PASS/MISS.

Example:
    >>> fmt(3.14159, "6.2f"), fmt(None, "6.2f")
    ('  3.14', '-')
"""

from __future__ import annotations

from typing import Any


def fmt(v: Any, spec: str) -> str:
    """`v` formatted with `spec`, or "-" where it is missing (a row that failed or skipped a column)."""
    return format(v, spec) if isinstance(v, int | float) else "-"


def target_checks(rows: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The issue's targets that this table can judge, each True/False (rows missing or failed are skipped).

    >>> target_checks({"FP32": {"perplexity": 100.0}, "RTN W8A16": {"perplexity": 100.2}})
    {'RTN W8A16 within 0.5 % of FP32 perplexity': True}
    """

    def ok(name: str, key: str) -> bool:
        return name in rows and "error" not in rows[name] and isinstance(rows[name].get(key), (int, float))

    checks: dict[str, bool] = {}
    if not ok("FP32", "perplexity"):
        return checks
    ref = rows["FP32"]["perplexity"]

    def gap(name: str) -> float:
        return rows[name]["perplexity"] / ref - 1

    if ok("RTN W8A16", "perplexity"):
        checks["RTN W8A16 within 0.5 % of FP32 perplexity"] = abs(gap("RTN W8A16")) <= 0.005
    rtn = "RTN W4A16 g128"
    for method in ("AWQ W4 g128", "GPTQ W4 g128"):
        if ok(rtn, "perplexity") and ok(method, "perplexity"):
            # Only a positive RTN gap can be closed; with none, the check would be meaningless, so say so.
            label = f"{method} closes >= half of RTN W4 g128's perplexity gap"
            checks[label + f" ({100 * gap(rtn):+.2f} % -> {100 * gap(method):+.2f} %)"] = (
                gap(rtn) > 0 and gap(method) <= gap(rtn) / 2
            )
        if ok(rtn, "kl_to_fp32") and ok(method, "kl_to_fp32"):
            checks[f"{method} closes >= half of RTN W4 g128's KL to FP32"] = (
                rows[method]["kl_to_fp32"] <= rows[rtn]["kl_to_fp32"] / 2
            )
    if ok("FP32", "size_mb"):
        for name in (rtn, "RTN W4A16 g128 + table W4 g32"):
            if ok(name, "size_mb"):
                ratio = rows["FP32"]["size_mb"] / rows[name]["size_mb"]
                checks[f"{name} checkpoint >= 6x smaller than FP32 ({ratio:.2f}x)"] = ratio >= 6.0
    if ok("RTN W8A16", "decode_tok_s") and ok("bf16", "decode_tok_s"):
        ratio = rows["RTN W8A16"]["decode_tok_s"] / rows["bf16"]["decode_tok_s"]
        checks[f"weight-only int8 decode at least as fast as bf16 ({ratio:.2f}x)"] = ratio >= 1.0
    return checks


def print_table(rows: dict[str, dict[str, Any]], names: list[str]) -> None:
    """The table: perplexity and its change from FP32, KL, sizes, peak RSS, prefill and decode speed."""
    ref = rows.get("FP32", {}).get("perplexity")
    bf16 = rows.get("bf16", {})
    header = (
        f"{'variant':32} {'ppl':>8} {'Δppl':>7} {'KL·1e3':>7} {'disk MB':>8} {'weights MB':>10} "
        f"{'peak RSS MB':>11} "
        f"{'prefill tok/s':>13} {'decode tok/s':>12} {'decode vs bf16':>14}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for n in names:
        r = rows[n]
        if "error" in r:
            print(f"{n:32} {r['error']}")
            continue
        dppl = f"{100 * (r['perplexity'] / ref - 1):+.2f}%" if ref else "-"
        ratio = r.get("decode_tok_s", 0) / bf16["decode_tok_s"] if bf16.get("decode_tok_s") else None
        kl = 1e3 * r["kl_to_fp32"] if isinstance(r.get("kl_to_fp32"), float) else None
        print(
            f"{n:32} {r['perplexity']:8.2f} {dppl:>7} {fmt(kl, '7.3f')} {r['size_mb']:8.2f} "
            f"{fmt(r.get('weights_mb'), '10.2f')} "
            f"{fmt(r.get('peak_rss_mb'), '11.0f')} {fmt(r.get('prefill_tok_s'), '13.0f')} "
            f"{fmt(r.get('decode_tok_s'), '12.1f')} {fmt(ratio, '13.2f') + ('x' if ratio else '')}"
        )


def print_notes(rows: dict[str, dict[str, Any]], names: list[str], log: dict[str, Any]) -> None:
    """Below the table: how small the quantized Linear layers are, and LLM.int8()'s outlier fraction."""
    shape = f"{log['config']['vocab_size']}x{log['config']['n_embd']}"
    for n in names:
        if "linear_mb" in rows[n]:
            r = rows[n]
            table = "token table packed too" if "table" in n else f"float token table {shape}"
            print(
                f"{n}: quantized Linear layers {r['linear_mb']:.2f} MB vs {r['linear_fp32_mb']:.2f} MB in FP32 "
                f"({r['linear_fp32_mb'] / r['linear_mb']:.2f}x smaller); whole checkpoint "
                f"{rows['FP32']['size_mb'] / r['size_mb']:.2f}x smaller ({table}, float positions)"
                if "size_mb" in rows.get("FP32", {})
                else ""
            )
    if "LLM.int8()" in rows and "outlier_fraction" in rows["LLM.int8()"]:
        print(f"LLM.int8() outlier fraction: {rows['LLM.int8()']['outlier_fraction']}")


def print_checks(checks: dict[str, bool]) -> None:
    """The issue's targets, one PASS/MISS line each (nothing when none could be judged)."""
    if checks:
        print()
        for what, ok in checks.items():
            print(f"{'PASS' if ok else 'MISS'}  {what}")
