"""What machine a measurement ran on: CPU model, the int8/bf16 instruction sets, torch's kernels.

Benchmarks print this first, because the ranking of bf16 and int8 differs from one CPU to the
next (AMX makes bf16 GEMMs ~8x FP32; without it int8 VNNI usually wins).

Example:
    >>> report = cpu_report()
    >>> sorted(report)[:3], "avx512_vnni" in report["flags"]
    (['cores', 'flags', 'model'], True)
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["ISA_FLAGS", "cpu_report", "cpu_header"]

# /proc/cpuinfo flags that decide which int8 / bf16 kernels can be fast.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_report() -> dict[str, Any]:
    """CPU model, core count, which of `ISA_FLAGS` it has, and torch's version and CPU capability.

    Example:
        >>> isinstance(cpu_report()["cores"], int)
        True
    """
    import torch

    model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {
        "model": model,
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in ISA_FLAGS},
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def cpu_header(report: dict[str, Any] | None = None) -> str:
    """The lines a benchmark prints first: the CPU, its ISA flags, the load on the machine.

    Example:
        >>> cpu_header().startswith("CPU: ")
        True
    """
    report = report or cpu_report()
    isa = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in report["flags"].items())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"CPU: {report['model']} ({report['cores']} cores), torch {report['torch']} "
        f"({report['torch_cpu_capability']})\nISA: {isa}\n"
        f"load average: {load:.2f} (other processes sharing these cores slow every row alike)"
    )
