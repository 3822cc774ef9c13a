"""Calibration under torch.distributed: 2 gloo processes freeze the ranges of one process on all the data."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import quantpilot as qp
from quantpilot.distributed import is_distributed, merge_calibration_across_ranks, merged_across_ranks
from quantpilot.nn import TensorQuantizer

RECIPES = {
    "histogram-mse": lambda: qp.Recipe.preset("int8-static"),
    "minmax": lambda: qp.Recipe(activation_calibrator="minmax", name="minmax"),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


def _data() -> torch.Tensor:
    # Rank 1's data has the widest values, so a rank-local range would differ from the global one.
    gen = torch.Generator().manual_seed(1)
    return torch.cat([torch.randn(40, 6, generator=gen), 3 * torch.randn(40, 6, generator=gen)])


def _frozen_ranges(recipe_name: str, batches) -> dict[str, torch.Tensor]:
    qmodel = qp.quantize(_model(), RECIPES[recipe_name]())
    # Two calibrate blocks: statistics must accumulate, not be merged (counted) twice.
    for block in (batches[: len(batches) // 2], batches[len(batches) // 2 :]):
        with qp.calibrate(qmodel):
            for x in block:
                qmodel(x)
    qp.freeze(qmodel)
    return {k: v.clone() for k, v in qmodel.state_dict().items() if k.endswith(("scale", "zero_point"))}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = _data().chunk(world)[rank]
        for name in RECIPES:
            torch.save(_frozen_ranges(name, list(shard.split(10))), f"{out}/{name}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_output(tmp_path_factory):
    # One spawn for every recipe: starting the two processes is most of the test's time.
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("recipe_name", list(RECIPES), ids=list(RECIPES))
def test_two_gloo_ranks_freeze_the_ranges_of_one_process_on_the_union(two_rank_output, recipe_name):
    ranks = [torch.load(two_rank_output / f"{recipe_name}-rank{r}.pt") for r in range(2)]
    # The single process sees the shards one after the other, in rank order.
    union = _frozen_ranges(recipe_name, list(_data().split(10)))
    local_only = _frozen_ranges(recipe_name, list(_data().chunk(2)[0].split(10)))
    assert union.keys() == ranks[0].keys() == ranks[1].keys() and union
    for key, value in union.items():
        assert torch.equal(ranks[0][key], value), key
        assert torch.equal(ranks[1][key], value), key
    # The check can fail: rank 0's own data alone gives other ranges.
    assert any(not torch.equal(local_only[k], union[k]) for k in union)


def test_outside_torch_distributed_nothing_is_gathered():
    assert not is_distributed()
    tq = TensorQuantizer(qp.QuantSpec("int8"))
    with merged_across_ranks([tq]):
        tq.start_collecting()
        tq(torch.tensor([-2.0, 1.0]))
        tq.stop_collecting()
    merge_calibration_across_ranks([tq])
    assert tq.calibrator.compute_range()[0].item() == -2.0
