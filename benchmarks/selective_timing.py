"""bench-selective's engines and latencies: every variant compiled on one engine and timed in turns.

OpenVINO when `quantpilot.engines` has it and every variant exports, else the PyTorch fake-quant engine;
FP32 and bf16 run eager too, as the baselines. A tiny model's call is repeated to about 20 ms per timed
sample (`calls_per_sample`), and the latencies are medians of interleaved runs
(`quantpilot.timing.interleaved_latency`), so a burst of other work on the shared CPU hits all alike.

Example:
    >>> to_bf16({"ids": torch.ones(2, dtype=torch.long), "x": torch.ones(2)})["x"].dtype
    torch.bfloat16
"""

from __future__ import annotations

import copy
import math
import time
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

import quantpilot as qp
from quantpilot.timing import interleaved_latency


def runner(model: nn.Module, example: Any, engine: str):
    """`model` compiled on `engine` ("torch" needs no example inputs; the exporting engines trace `example`).

    Example:
        >>> runner(nn.Linear(2, 2), None, "torch").run(torch.ones(1, 2)).shape
        torch.Size([1, 2])
    """
    if engine == "torch":
        return qp.engines.compile(model, engine="torch")
    return qp.engines.compile(model, engine=engine, example_inputs=example)


def to_bf16(batch: Any) -> Any:
    """Float tensors of a batch cast to bf16 (token ids and masks stay integers).

    Example:
        >>> to_bf16(torch.ones(1, dtype=torch.long)).dtype
        torch.int64
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(torch.bfloat16) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: to_bf16(v) for k, v in batch.items()}
    return batch


class Bf16(nn.Module):
    """Runs a bf16 copy of a float model on float inputs (cast at the door), so `eval_fn` can score bf16 too.

    Example:
        >>> Bf16(nn.Linear(2, 2))(torch.ones(1, 2)).dtype
        torch.float32
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(model).to(torch.bfloat16).eval()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*[to_bf16(a) for a in args], **{k: to_bf16(v) for k, v in kwargs.items()})
        return out.float() if isinstance(out, torch.Tensor) else out


class OnEngine(nn.Module):
    """A compiled engine model behind the `nn.Module` call an `eval_fn` makes (eval()/train() are no-ops).

    Example:
        >>> OnEngine(lambda x: x + 1)(torch.zeros(1)).tolist()
        [1.0]
    """

    def __init__(self, runner: Any) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.runner(*args, **kwargs)


def pick_engine(models: list[nn.Module], example: Any, wanted: str) -> str:
    """`wanted` if it is registered and runs every model given; else "torch" (said in the table).

    Example:
        >>> pick_engine([nn.Linear(2, 2)], torch.ones(1, 2), "torch")
        'torch'
    """
    try:
        for model in models:
            runner(model, example, wanted).run(example)
        return wanted
    except Exception as err:  # noqa: BLE001 - any failure means "this engine is not usable here"
        print(f"  engine {wanted!r} unavailable ({type(err).__name__}: {str(err)[:120]}); timing with 'torch'")
        return "torch"


def calls_per_sample(fn, target_s: float = 0.02) -> int:
    """How many calls make one timed sample of about `target_s` (tiny models run in microseconds).

    Example:
        >>> calls_per_sample(lambda: time.sleep(0.03))
        1
    """
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, math.ceil(target_s / max(time.perf_counter() - t0, 1e-6)))


def time_variants(
    model: nn.Module, variants: dict[str, nn.Module], example: Any, engine: str, iters: int
) -> SimpleNamespace:
    """Compile the float baselines and every variant, and time them in turns (`iters` rounds, 3 warm-up).

    Returns runners (name -> compiled model, in table order), latency (name -> seconds per call), reps
    (calls per timed sample), and fp32_key / bf16_key (the float rows on `engine`, the speed-up references).

    Example:
        >>> t = time_variants(nn.Linear(2, 2), {}, torch.ones(1, 2), "torch", 1)
        >>> sorted(t.latency), t.fp32_key
        (['FP32 eager', 'bf16 eager'], 'FP32 eager')
    """
    bf16_example = to_bf16(example)
    runners = {"FP32 eager": runner(model, example, "torch")}
    runners["bf16 eager"] = qp.engines.compile(model, engine="torch", dtype="bfloat16")
    if engine != "torch":
        runners[f"FP32 {engine}"] = runner(model, example, engine)
        runners[f"bf16 {engine}"] = qp.engines.compile(model, engine=engine, example_inputs=example, dtype="bfloat16")
    for key, qmodel in variants.items():
        runners[key] = runner(qmodel, example, engine)
    feeds = {k: bf16_example if k == "bf16 eager" else example for k in runners}
    reps = calls_per_sample(lambda: runners["FP32 eager"].run(example))
    calls = {k: (lambda r=r, x=feeds[k]: [r.run(x) for _ in range(reps)]) for k, r in runners.items()}
    latency = {k: v / reps for k, v in interleaved_latency(calls, 3, iters).items()}
    return SimpleNamespace(
        runners=runners,
        latency=latency,
        reps=reps,
        fp32_key=f"FP32 {engine}" if engine != "torch" else "FP32 eager",
        bf16_key=f"bf16 {engine}" if engine != "torch" else "bf16 eager",
    )
