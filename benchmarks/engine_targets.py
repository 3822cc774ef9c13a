"""Issue 18's targets for `make bench`, judged from one run's latencies and metrics (no model runs here).

AMX CPUs get the AMX targets (int8 against the bf16 matrix units), AVX-512-VNNI CPUs without AMX theirs.

Example:
    >>> check("demo", True, "1.3x")["pass"]
    PASS demo: 1.3x
    True
"""

from __future__ import annotations

from quantpilot.placement import has_amx


def check(name: str, ok: bool | None, detail: str) -> dict:
    print(f"{'n/a ' if ok is None else ('PASS' if ok else 'MISS')} {name}: {detail}")
    return {"target": name, "pass": ok, "detail": detail}


def _best(lat: dict, metric: dict, names: list[str], ok) -> str | None:
    """The fastest of `names` whose metric passes `ok`, else the fastest of them all."""
    names = [n for n in names if n in lat]
    good = [n for n in names if ok(metric[n])] or names
    return min(good, key=lambda n: lat[n]) if good else None


def targets(
    minilm: dict | None, cos: dict | None, effnet: dict | None, acc: dict | None = None, cpu: dict | None = None
) -> list[dict]:
    """PASS/MISS for issue 18's targets on this CPU (AMX targets, or AVX-512-VNNI ones without AMX)."""
    amx = has_amx(cpu)
    kind = "with AMX" if amx else "without AMX (AVX-512-VNNI)"
    print(f"targets for a CPU {kind}; speed against the same engine's bf16")
    results = []
    if minilm is not None:
        results += minilm_targets(minilm["latency"], cos, amx)
    if effnet is not None:
        results += effnet_targets(effnet["latency"], acc, amx)
    return results


def minilm_targets(lat: dict, cos: dict, amx: bool = True) -> list[dict]:
    placements = [n for n in lat if n.startswith("qp placement")]
    floor = 0.998 if amx else 0.99
    ours = _best(lat, cos, placements, lambda c: c >= floor)
    results = []
    if ours is None:
        return [check("MiniLM placements", False, "no placement row ran")]
    ratio = lat["OpenVINO bf16"] / lat[ours]
    goal = 1.2 if amx else 1.5
    results.append(
        check(
            f"MiniLM int8 >= {goal}x OpenVINO bf16 at cosine >= {floor}",
            ratio >= goal and cos[ours] >= floor,
            f"{ours}: {ratio:.2f}x, cosine {cos[ours]:.4f}",
        )
    )
    results += versus_nncf("MiniLM", lat, ours, lambda best: f"; cosine {cos[ours]:.4f} vs {cos[best]:.4f}")
    results += torch_targets(lat)
    return results


def versus_nncf(model: str, lat: dict, ours: str, extra=lambda best: "") -> list[dict]:
    """`ours` at least as fast as the fastest NNCF row (2 % timing slack); no check when no NNCF row ran.

    Example:
        >>> [r["pass"] for r in versus_nncf("M", {"NNCF a": 2.0, "NNCF b": 1.0, "qp": 1.01}, "qp")]
        PASS M qp as fast as the fastest NNCF (NNCF b): 0.99x its speed
        [True]
    """
    nncf = [n for n in lat if n.startswith("NNCF")]
    if not nncf:
        return []
    best = min(nncf, key=lambda n: lat[n])
    return [
        check(
            f"{model} {ours} as fast as the fastest NNCF ({best})",
            lat[ours] <= lat[best] * 1.02,
            f"{lat[best] / lat[ours]:.2f}x its speed{extra(best)}",
        )
    ]


def torch_targets(lat: dict) -> list[dict]:
    from quantpilot.engines.torch_int8 import bf16_hardware

    results = []
    for row in ("qp int8-dynamic on torch-int8", "qp int8-static on torch-int8"):
        if row not in lat:
            continue
        ratio = lat["bf16 eager"] / lat[row]
        documented = bf16_hardware()  # compile warns and the README names the engine to use instead
        detail = f"{ratio:.2f}x torch bf16 eager" + ("; documented: not worth using on this CPU" if documented else "")
        results.append(check(f"{row} >= torch bf16 eager or documented", ratio >= 1.0 or documented, detail))
    return results


def effnet_targets(lat: dict, acc: dict, amx: bool = True) -> list[dict]:
    placements = [n for n in lat if n.startswith("qp placement")]
    fp32 = acc["FP32 eager"]
    ours = _best(lat, acc, placements, lambda a: a >= fp32 - 0.0025 - 1e-6)  # 1e-6: float32 accuracies
    if ours is None:
        return [check("EfficientNet placements", False, "no placement row ran")]
    ratio = lat["OpenVINO bf16"] / lat[ours]
    detail = f"{ours}: {ratio:.2f}x, top-1 {acc[ours]:.4f} vs FP32 {fp32:.4f}"
    if not amx:
        return [check("EfficientNet int8 >= 1.5x OpenVINO bf16", ratio >= 1.5, detail)]
    results = [
        check(
            "EfficientNet int8 >= 1.0x OpenVINO bf16, top-1 within 0.25 points of FP32",
            ratio >= 1.0 and acc[ours] >= fp32 - 0.0025 - 1e-6,
            detail,
        )
    ]
    return results + versus_nncf("EfficientNet", lat, ours)
