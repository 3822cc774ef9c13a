"""Under torch.distributed a failure on one rank stops every rank with a clear error; data-fitted steps refuse."""

import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import quantpilot as qp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outcome(fn) -> str:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 (the test reads which error each rank got)
        return f"{type(err).__name__}: {err}"
    return "ok"


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 4))

        def calibrate_with_a_failing_rank():
            qmodel = qp.quantize(net, "int8-static")
            with qp.calibrate(qmodel):
                qmodel(torch.randn(8, 4))
                if rank == 1:
                    raise RuntimeError("rank 1's data loader broke")

        def smoothquant_under_torchrun():
            qp.algorithms.smoothquant(net, [torch.randn(64, 4)], alpha=0.5)

        def ranks_out_of_step():
            qmodel = qp.quantize(net, "int8-static")
            for _ in range(2 if rank == 0 else 1):  # rank 0 calibrates one block more than rank 1
                with qp.calibrate(qmodel):
                    qmodel(torch.randn(8, 4))
            qp.freeze(qmodel)

        lines = [
            _outcome(calibrate_with_a_failing_rank),
            _outcome(smoothquant_under_torchrun),
            _outcome(ranks_out_of_step),
        ]
        Path(out, f"rank{rank}.txt").write_text("\n".join(lines))
    finally:
        dist.destroy_process_group()


def test_one_failing_rank_stops_the_others_with_a_clear_error_instead_of_a_hang(tmp_path):
    context = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    finished = False
    # join() returns as soon as one process ends: keep joining until both have, or the deadline passes.
    while not finished and time.monotonic() < deadline:
        finished = context.join(timeout=max(1.0, deadline - time.monotonic()))
    if not finished:
        for process in context.processes:
            process.terminate()
    assert finished, "a rank hung"
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text().splitlines() for r in range(2))
    assert rank1[0] == "RuntimeError: rank 1's data loader broke"
    assert rank0[0].startswith("ValueError: calibration failed on another rank")
    for lines in (rank0, rank1):
        assert "each rank would build a different model" in lines[1]
        assert lines[2].startswith("ValueError: the ranks are out of step"), lines[2]
