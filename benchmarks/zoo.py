"""The architecture zoo (`make zoo`): every family x every operation, as a matrix of ok / refused / CRASH.

Families are tiny random-weight models built from transformers configs (`quantpilot_testbed.zoo`);
operations are every preset (calibrated on 2 batches), attention-matmul points, save/load
bit-exactness (int8-static and packed W4), ONNX export checked in ONNX Runtime at a second input
shape, and for decoders `qp.algorithms.rtn(bits=4, group_size=64)` followed by `generate()`.

Cells: "ok <cos>" (lowest row cosine of the output against the float model), "warned" (ran, and
quantpilot warned about a gap), "refused" (a ValueError naming the problem), "WRONG" (ran, wrong
answer: save/load not bit-exact, ONNX Runtime disagreeing, the float model changed), "CRASH" (any
other exception), "n/a". Writes bench-out/zoo.json with every cell's full message.

    python benchmarks/zoo.py [--families llama,bert] [--out bench-out/zoo.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from quantpilot_testbed.zoo import FAMILIES, OPERATIONS, run_family  # noqa: E402


def _quiet() -> None:
    warnings.filterwarnings("ignore")  # run_family records quantpilot's own warnings per cell
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass


def _matrix(results: dict[str, dict], columns: list[str]) -> str:
    width = max(len(name) for name in results) + 2
    cols = [max(len(c), 12) + 1 for c in columns]
    lines = ["".ljust(width) + "".join(c.ljust(w) for c, w in zip(columns, cols, strict=True))]
    for family, cells in results.items():
        lines.append(
            family.ljust(width) + "".join(cells[c].short().ljust(w) for c, w in zip(columns, cols, strict=True))
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="", help="comma-separated subset of the zoo (default: all)")
    parser.add_argument("--out", default="bench-out/zoo.json")
    args = parser.parse_args(argv)
    _quiet()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    names = [n for n in args.families.split(",") if n] or list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; the zoo holds {list(FAMILIES)}")
    results = {}
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        results[name] = run_family(FAMILIES[name])
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    columns = [*OPERATIONS, "model untouched"]
    print(_matrix(results, columns))
    bad = {
        s: [(f, op, c) for f, cells in results.items() for op, c in cells.items() if c.status == s]
        for s in ("CRASH", "WRONG")
    }
    refused = sum(c.status == "refused" for cells in results.values() for c in cells.values())
    total = sum(c.status != "n/a" for cells in results.values() for c in cells.values())
    print(
        f"\n{len(results)} families x {len(columns)} operations: {total} cells run, {len(bad['CRASH'])} CRASH, "
        f"{len(bad['WRONG'])} WRONG, {refused} refused ({time.perf_counter() - start:.0f} s)"
    )
    for status, cells in bad.items():
        for family, op, cell in cells:
            print(f"{status} {family} / {op}: {cell.detail}")
    skipped = [f"{n}: {f.skip}" for n, f in FAMILIES.items() if f.skip and n in names]
    for line in skipped:
        print(f"skipped {line}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "families": {f: {op: asdict(c) for op, c in cells.items()} for f, cells in results.items()},
        "crashes": len(bad["CRASH"]),
        "wrong": len(bad["WRONG"]),
        "refused": refused,
        "skipped": skipped,
    }
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
