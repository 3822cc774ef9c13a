"""Calibration under torch.distributed: 2 gloo processes freeze the ranges of one process on all the data."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

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


def _qat_weights(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """QAT-finetune on `x` (a rank's shard, or all data in one process) and return the weights."""
    qmodel = qp.quantize(_model(), RECIPES["minmax"]())
    with qp.calibrate(qmodel):
        qmodel(_data())  # the same calibration everywhere: this checks the training, not the ranges
    qat = qp.qat.prepare(qmodel, learn_ranges=True)
    target = x.sum(dim=1, keepdim=True).expand(-1, 3)
    batches = list(zip(x.split(len(x) // 4), target.split(len(x) // 4), strict=True))
    qp.qat.finetune(qat, batches, F.mse_loss, qp.qat.Schedule(epochs=2, lr=0.01, batch_size=10), progress=False)
    return {k: v.detach().clone() for k, v in qat.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = _data().chunk(world)[rank]
        for name in RECIPES:
            torch.save(_frozen_ranges(name, list(shard.split(10))), f"{out}/{name}-rank{rank}.pt")
        torch.save(_qat_weights(_data().chunk(world)[rank]), f"{out}/qat-rank{rank}.pt")
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


def test_ddp_finetune_matches_one_process_on_the_union(two_rank_output):
    ranks = [torch.load(two_rank_output / f"qat-rank{r}.pt") for r in range(2)]
    # Batch i of the union = batch i of rank 0 followed by batch i of rank 1: with equal batch
    # sizes DDP's averaged gradient is the gradient of the union batch's mean loss.
    x0, x1 = _data().chunk(2)
    union = torch.cat([torch.cat(pair) for pair in zip(x0.split(10), x1.split(10), strict=True)])
    single = _qat_weights(union)
    assert not torch.equal(single["0.weight"], _model()[0].weight)  # the run did train
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        # Summation order differs (two half-batch means vs one mean): about 1e-7 in the gradients. A
        # learned scale's LSQ gradient jumps where a value crosses a rounding boundary, so one such
        # crossing moves a scale by ~1e-3 relative; weights stay within float noise.
        rtol = 1e-2 if key.endswith("scale") else 1e-4
        torch.testing.assert_close(ranks[0][key], value, rtol=rtol, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def test_outside_torch_distributed_nothing_is_gathered():
    assert not is_distributed()
    tq = TensorQuantizer(qp.QuantSpec("int8"))
    with merged_across_ranks([tq]):
        tq.start_collecting()
        tq(torch.tensor([-2.0, 1.0]))
        tq.stop_collecting()
    merge_calibration_across_ranks([tq])
    assert tq.calibrator.compute_range()[0].item() == -2.0
