"""Calibration under `torch.distributed`: every rank ends with the statistics of all ranks' data.

Under data-parallel training (DDP, launched with `torchrun`) each rank sees its own shard of the
calibration data. Freezing ranges from local statistics would give every rank a different model;
so when a `quantpilot.calibrate` block closes, each static quantizer's statistics from this
block are gathered from all ranks and merged, in rank order, into what it had before. Min/max
calibrators then hold the global min/max, histograms the summed counts (`Calibrator.merge` is
exact: a merged histogram equals one collected from the union of the data), and every rank
computes identical ranges. Merging per block, not per `freeze`, keeps statistics from several
`calibrate` blocks from being counted twice.

The gather goes through `all_gather_object`, which works on every backend (gloo on CPU, NCCL on
GPUs); the statistics are small (a few kB per quantizer), and it runs once per block.

Before each exchange (the end of a calibrate block, and freeze) every rank checks in at the process
group's store and waits at most `QUANTPILOT_DIST_TIMEOUT` seconds (default 300) for the others, so a
rank that died, hung or never reaches freeze stops the others with one error naming it, instead of
leaving them in a collective until torch's 30-minute timeout.

Example:
    >>> is_distributed()
    False
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from .nn import TensorQuantizer

__all__ = ["is_distributed", "merged_across_ranks", "merge_calibration_across_ranks", "exchange_timeout", "TIMEOUT_ENV"]

TIMEOUT_ENV = "QUANTPILOT_DIST_TIMEOUT"
# Long enough for ranks whose shards differ in size to finish a block, far shorter than torch's 30 minutes.
DEFAULT_TIMEOUT_S = 300.0


def is_distributed() -> bool:
    """True inside an initialised `torch.distributed` process group of more than one rank.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _local_state(q: TensorQuantizer) -> tuple[str, dict[str, torch.Tensor] | None]:
    cal = q.calibrator
    if cal is None or not cal.has_data:
        return q.qualname, None
    return q.qualname, {k: v.detach().cpu() for k, v in cal.state_dict().items()}


def merge_calibration_across_ranks(quantizers: Sequence[TensorQuantizer]) -> None:
    """Replace each quantizer's calibrator by the merge of that calibrator on every rank.

    A collective call: every rank must call it with the same model's quantizers, in the same
    order. Outside `torch.distributed` it does nothing.

    Args:
        quantizers: the static quantizers of the model, as every rank lists them.

    Raises:
        ValueError: the ranks hold different models (quantizer names differ).

    Example:
        >>> from quantpilot import QuantSpec
        >>> merge_calibration_across_ranks([TensorQuantizer(QuantSpec("int8"))])  # one process: no-op
    """
    if not is_distributed():
        return
    local = [_local_state(q) for q in quantizers]
    gathered: list[list[tuple[str, dict[str, torch.Tensor] | None]]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    names = [name for name, _ in local]
    for rank, states in enumerate(gathered):
        if [name for name, _ in states] != names:
            raise ValueError(
                f"rank {rank} calibrates different quantizers than rank {dist.get_rank()}: every rank must run "
                "`quantpilot.calibrate` on the same quantized model"
            )
    for i, q in enumerate(quantizers):
        merged = None
        # Rank order, the same on every rank, so every rank computes bit-identical statistics.
        for states in gathered:
            state = states[i][1]
            if state is None:
                continue
            incoming = q.calibrator_config.build(q.spec).load_state_dict(state)
            merged = incoming if merged is None else merged.merge(incoming)
        if merged is not None:
            q.calibrator = merged


# Which collective a rank is in: every exchange carries it, so ranks that took different paths (one
# calibrating a second block while another already freezes) find out instead of pairing the wrong calls.
_CALIBRATE_BLOCK, _FREEZE = 1, 2
_OUT_OF_STEP = (
    "the ranks are out of step: they ran different numbers of quantpilot.calibrate blocks before freeze; "
    "give every rank the same number of blocks (an empty shard still enters the block)"
)


_STAGE_NAMES = {_CALIBRATE_BLOCK: "the end of a quantpilot.calibrate block", _FREEZE: "quantpilot.freeze"}


def exchange_timeout() -> float:
    """Seconds a rank waits at an exchange for the others: `QUANTPILOT_DIST_TIMEOUT`, else 300.

    Example:
        >>> exchange_timeout()
        300.0
    """
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds; set it to e.g. 300, or unset it")
    return value


def _store_has(store, key: str) -> bool | None:
    try:
        return bool(store.check([key]))
    except Exception:  # noqa: BLE001 (the store is gone: the rank hosting it exited)
        return None


def _check_in(stage: int) -> None:
    """Wait, at most `exchange_timeout()` seconds, until every rank arrived at its next exchange.

    Each rank counts its exchanges in the process group's store (a fresh group starts at 0) and sets
    its key for this one; all keys present means every rank is there and the collective cannot hang.
    """
    store = dist.distributed_c10d._get_default_store()
    rank, world = dist.get_rank(), dist.get_world_size()
    timeout = exchange_timeout()
    keys: list[str] = []
    try:
        seq = store.add(f"quantpilot/exchanges/{rank}", 1)
        keys = [f"quantpilot/exchange/{seq}/{r}" for r in range(world)]
        store.set(keys[rank], str(stage))
        store.wait(keys, timedelta(seconds=timeout))
    except Exception:  # noqa: BLE001 (TCPStore: DistStoreError on a timeout, DistNetworkError once its host died)
        present = [_store_has(store, key) for key in keys]
        missing = [r for r, here in enumerate(present) if here is False]
        if not keys or None in present or not missing:
            who = "the rendezvous store (rank 0 hosts it) is unreachable: rank 0 exited or crashed"
        else:
            who = f"rank(s) {missing} did not arrive within {timeout:g} s: they failed, hung or exited"
        raise ValueError(
            f"rank {rank} waited at {_STAGE_NAMES[stage]} for the other ranks; {who} (their own output says why). "
            f"Every rank stops instead of waiting for torch's timeout; set {TIMEOUT_ENV} (seconds) to wait longer"
        ) from None
    if seq > 1:
        with contextlib.suppress(Exception):  # every rank passed the previous exchange: its key is spent
            store.delete_key(f"quantpilot/exchange/{seq - 1}/{rank}")


def _exchange(failed_here: bool, stage: int) -> tuple[bool, bool]:
    """(any rank failed, the ranks are at different stages), in one all_reduce once every rank is there."""
    _check_in(stage)
    flags = torch.tensor([int(failed_here), stage, -stage], dtype=torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), int(flags[1]) != -int(flags[2])


def any_rank_failed(failed_here: bool) -> bool:
    """All ranks' verdict at the end of a calibrate block: True if another rank failed (a collective call).

    Raises:
        ValueError: the ranks are out of step (another rank is already freezing).

    Example:
        >>> any_rank_failed(False)
        False
    """
    if not is_distributed():
        return False
    failed_any, out_of_step = _exchange(failed_here, _CALIBRATE_BLOCK)
    if out_of_step:
        raise ValueError(_OUT_OF_STEP)
    return failed_any and not failed_here


def check_ranks_in_step() -> None:
    """Before freezing calibrated ranges: every rank must arrive here, not one still calibrating (collective).

    Example:
        >>> check_ranks_in_step()  # one process: nothing to check
    """
    if is_distributed() and _exchange(False, _FREEZE)[1]:
        raise ValueError(_OUT_OF_STEP)


@contextlib.contextmanager
def merged_across_ranks(quantizers: Sequence[TensorQuantizer]) -> Iterator[None]:
    """Collect into fresh calibrators inside the block, then fold every rank's into the earlier ones.

    On a clean exit under `torch.distributed` the block's statistics are merged across ranks (a
    collective call); on an error, or in a single process, they are folded in locally, so
    statistics are never lost nor counted twice.

    Args:
        quantizers: the static quantizers that will collect inside the block.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> tq = TensorQuantizer(QuantSpec("int8"))
        >>> with merged_across_ranks([tq]):
        ...     tq.start_collecting(); _ = tq(torch.tensor([-1.0, 3.0])); tq.stop_collecting()
        >>> tq.calibrator.compute_range()[1].item()
        3.0
    """
    if not is_distributed():
        yield
        return
    earlier = {id(q): q.calibrator for q in quantizers}
    for q in quantizers:
        q.calibrator = None  # start_collecting builds a fresh one for this block
    clean_exit = failed_elsewhere = False
    try:
        yield
        clean_exit = True
    finally:
        # Every rank reaches this once per block, failed or not: a rank that raised inside the block
        # tells the others here, instead of leaving them waiting in the merge until torch's timeout.
        failed_elsewhere = any_rank_failed(not clean_exit)
        if clean_exit and not failed_elsewhere:
            merge_calibration_across_ranks(quantizers)
        for q in quantizers:
            before = earlier[id(q)]
            if before is not None and q.calibrator is not None:
                q.calibrator = before.merge(q.calibrator)
            elif before is not None:
                q.calibrator = before
    if failed_elsewhere:
        raise ValueError(
            "calibration failed on another rank (its own error is in that rank's output); every rank stops here "
            "instead of waiting for it: fix that rank's data or model and run again"
        )
