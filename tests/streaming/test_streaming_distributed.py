"""Streamed GPTQ under torch.distributed: 2 gloo processes, each with half the calibration data, build the model
one process builds on all of it (Hessians summed across ranks)."""

import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import quantpilot as qp
from quantpilot.algorithms.gptq import HessianAccumulator
from quantpilot.streaming import quantize_checkpoint
from quantpilot.streaming.ranks import merge_hessians

from ._decoders import calibration_ids, tiny_model


def _x() -> torch.Tensor:
    return torch.randn(96, 16, generator=torch.Generator().manual_seed(2))


def _worker(rank: int, world: int, port: int, src: str, out: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        acc = HessianAccumulator(16)
        for rows in _x().chunk(world)[rank].split(16):  # uneven shares: 48 rows each, three batches
            acc.add(rows)
        accumulators = {"fc": acc}
        merge_hessians(accumulators)
        torch.save((accumulators["fc"].hessian, accumulators["fc"].tokens), f"{out}/hessian-rank{rank}.pt")
        share = calibration_ids(8, 32).chunk(world)[rank]
        quantize_checkpoint(src, "gptq-w4-g128", share, out=f"{out}/q", batch_size=2)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(saved_decoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-stream")
    # Forked, not spawned: the children reuse the parent's imports (torch, transformers: most of a spawn's cost).
    args = (2, _free_port(), str(saved_decoder("llama")), str(out))
    mp.start_processes(_worker, args=args, nprocs=2, join=True, start_method="fork")
    return out


def test_merged_hessians_equal_one_process_on_the_union(two_ranks):
    single = HessianAccumulator(16)
    single.add(_x())
    for rank in range(2):
        hessian, tokens = torch.load(two_ranks / f"hessian-rank{rank}.pt")
        assert tokens == 96
        torch.testing.assert_close(hessian, single.hessian, rtol=1e-5, atol=1e-6)
    # Broadcast from rank 0: both ranks solve the very same matrix.
    assert torch.equal(torch.load(two_ranks / "hessian-rank0.pt")[0], torch.load(two_ranks / "hessian-rank1.pt")[0])


def test_two_ranks_build_the_single_process_model(two_ranks, saved_decoder, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_checkpoint(
            saved_decoder("llama"), "gptq-w4-g128", calibration_ids(8, 32), out=tmp_path / "q", batch_size=2
        )
    merged = qp.load(tiny_model("llama"), two_ranks / "q").state_dict()
    single = qp.load(tiny_model("llama"), tmp_path / "q").state_dict()
    codes = [k for k in single if k.endswith("weight_packed")]
    assert codes
    same = sum(int(torch.equal(merged[k], single[k])) for k in codes)
    # The Hessians agree to float32 rounding (summed per rank vs one running mean): the codes are the same.
    assert same == len(codes), f"{len(codes) - same} of {len(codes)} layers differ"
