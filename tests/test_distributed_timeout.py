"""Under torch.distributed a rank that never reaches freeze stops the others within QUANTPILOT_DIST_TIMEOUT, named."""

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import quantpilot as qp
from quantpilot.distributed import TIMEOUT_ENV, exchange_timeout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ[TIMEOUT_ENV] = "2"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        qmodel = qp.quantize(nn.Sequential(nn.Linear(4, 4)), "int8-static")
        with qp.calibrate(qmodel):
            qmodel(torch.randn(8, 4))
        if rank == 1:
            # Rank 1 "dies" before freeze: it never arrives. It stays alive (rank 0 hosts the store) until
            # rank 0 has its answer, then leaves without the collective teardown rank 0 would wait in.
            deadline = time.monotonic() + 60
            while not Path(out, "rank0.txt").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            return
        start = time.monotonic()
        try:
            qp.freeze(qmodel)
            outcome = "ok"
        except Exception as err:  # noqa: BLE001 (the test reads which error rank 0 got)
            outcome = f"{type(err).__name__}: {err}"
        Path(out, "rank0.txt").write_text(f"{time.monotonic() - start:.1f}\n{outcome}")
    finally:
        if rank == 0:
            dist.destroy_process_group()


def test_a_rank_that_never_reaches_freeze_is_named_within_the_timeout(tmp_path):
    context = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 90
    finished = False
    while not finished and time.monotonic() < deadline:
        finished = context.join(timeout=max(1.0, deadline - time.monotonic()))
    if not finished:
        for process in context.processes:
            process.terminate()
    assert finished, "a rank hung"
    waited, outcome = (tmp_path / "rank0.txt").read_text().splitlines()
    expected = "ValueError: rank 0 waited at quantpilot.freeze for the other ranks; rank(s) [1] did not arrive"
    assert outcome.startswith(expected), outcome
    assert TIMEOUT_ENV in outcome
    assert 1.5 < float(waited) < 30  # the 2 s timeout, not torch's 30 minutes


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"], ids=["zero", "negative", "text", "nan"])
def test_a_bad_timeout_setting_is_a_one_line_error(monkeypatch, value):
    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV}='{value}' is not a positive number of seconds"):
        exchange_timeout()


def test_the_timeout_setting_is_read_in_seconds(monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "42.5")
    assert exchange_timeout() == 42.5
    monkeypatch.delenv(TIMEOUT_ENV)
    assert exchange_timeout() == 300.0
