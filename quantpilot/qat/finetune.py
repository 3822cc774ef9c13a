"""`finetune`: the QAT training loop (one process, or data-parallel under `torch.distributed`).

Example:
    >>> import torch, quantpilot as qp
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(64, 4); y = x @ torch.randn(4, 2)
    >>> qmodel = qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 2)))
    >>> with qp.calibrate(qmodel):
    ...     _ = qmodel(x)
    >>> model = qp.qat.prepare(qmodel)
    >>> batches = list(zip(x.split(16), y.split(16)))
    >>> result = qp.qat.finetune(model, batches, torch.nn.functional.mse_loss,
    ...                          qp.qat.Schedule(epochs=3, lr=0.01, batch_size=16), progress=False)
    >>> len(result.train_losses), result.best_epoch in (0, 1, 2)
    (3, True)
"""

from __future__ import annotations

import copy
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..distributed import is_distributed
from ..nn import QuantModule, TensorQuantizer
from .schedule import Schedule

__all__ = ["finetune", "FinetuneResult"]

# Learned scales are kept above this: LSQ steps could otherwise push a tiny scale through zero.
_MIN_SCALE = 1e-8


@dataclass
class FinetuneResult:
    """What `finetune` did: per-epoch mean training loss and evaluation score, and the epoch kept.

    ``best_epoch`` is the epoch whose weights the model holds at the end: the best ``eval_fn``
    score, or the lowest training loss when there was no ``eval_fn``.
    """

    train_losses: list[float] = field(default_factory=list)
    eval_scores: list[float] = field(default_factory=list)
    best_epoch: int = -1


def _show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _learned_scales(model: nn.Module) -> list[nn.Parameter]:
    scales = []
    for m in model.modules():
        if isinstance(m, TensorQuantizer) and isinstance(m.scale, nn.Parameter):
            scales.append(m.scale)
        elif isinstance(m, QuantModule) and isinstance(m._parameters.get("weight_scale"), nn.Parameter):
            scales.append(m.weight_scale)
    return scales


def _global_mean(value: float, device: torch.device) -> float:
    """The mean of `value` over all ranks, so every rank takes the same best-checkpoint decision."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def finetune(
    model: nn.Module,
    train_batches: Iterable,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    schedule: Schedule,
    eval_fn: Callable[[nn.Module], float] | None = None,
    *,
    progress: bool | None = None,
) -> FinetuneResult:
    """Fine-tune a QAT model (from `quantpilot.qat.prepare`) in place, keeping the best epoch's weights.

    Every epoch is one pass over `train_batches`; each item is ``(inputs, target)``, and the model
    is called as ``model(inputs)``, ``model(*inputs)`` for a tuple or ``model(**inputs)`` for a dict.
    The optimizer and the per-step learning rate come from ``schedule.build`` (`batch_size` is
    the loader's business). After each epoch ``eval_fn(model)`` (higher is better, run in eval
    mode) scores the model; the best epoch's weights are restored at the end.

    Under `torch.distributed` (e.g. launched with ``torchrun``) the model is wrapped in
    `DistributedDataParallel` for the run: each rank passes its own shard of the data, gradients
    are averaged, and scores are averaged over ranks so all ranks keep the same epoch.

    Args:
        model: the model to train (trained in place).
        train_batches: a re-iterable of ``(inputs, target)`` pairs (a list or a DataLoader, not a
            generator), with a length or it is counted once first.
        loss_fn: ``loss_fn(output, target)`` returning a scalar tensor.
        schedule: a `Schedule`, typically ``adapt_schedule(original)``.
        eval_fn: optional ``eval_fn(model) -> float``, higher is better (e.g. validation accuracy).
        progress: show a progress bar (default: on an interactive terminal outside CI, rank 0 only).

    Returns:
        A `FinetuneResult`; the model itself holds the best epoch's weights, in training mode.

    Raises:
        TypeError / ValueError: bad arguments, batches that are not pairs, or a loss that is not
            a finite scalar (lower the schedule's lr).
    """
    steps_per_epoch = _steps_per_epoch(model, train_batches, loss_fn, schedule, eval_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    trained: nn.Module = model
    if is_distributed() and not isinstance(model, nn.parallel.DistributedDataParallel):
        device_ids = [device.index] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    optimizer, scheduler = schedule.build(params, steps_per_epoch)
    scales = _learned_scales(model)
    rank0 = not is_distributed() or dist.get_rank() == 0
    show = (_show_progress() if progress is None else progress) and rank0
    bar = tqdm(total=schedule.epochs * steps_per_epoch, desc="QAT", unit="batch", disable=not show)
    result, best_score, best_state = FinetuneResult(), -math.inf, None
    try:
        for epoch in range(schedule.epochs):
            epoch_loss = _train_epoch(
                trained, train_batches, loss_fn, optimizer, scheduler, scales, device, bar, epoch, schedule.lr
            )
            mean_loss = _global_mean(epoch_loss, device)
            result.train_losses.append(mean_loss)
            if eval_fn is not None:
                model.eval()
                with torch.no_grad():
                    score = _global_mean(float(eval_fn(model)), device)
                result.eval_scores.append(score)
            else:
                score = -mean_loss
            if score > best_score:
                best_score, result.best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
    finally:
        bar.close()
    if best_state is not None:  # None only if every eval score was NaN: keep the last weights
        model.load_state_dict(best_state)
    model.train()
    return result


def _steps_per_epoch(model: Any, train_batches: Iterable, loss_fn: Any, schedule: Any, eval_fn: Any) -> int:
    """Check `finetune`'s arguments; return how many batches one epoch has."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a quantpilot.qat.Schedule, got {type(schedule).__name__}")
    if not callable(loss_fn) or (eval_fn is not None and not callable(eval_fn)):
        raise TypeError("loss_fn (and eval_fn, when given) must be callables")
    if iter(train_batches) is train_batches:
        raise ValueError(
            "train_batches is a one-shot iterator; finetune passes over it once per epoch, so give a list or "
            "a DataLoader"
        )
    try:
        steps_per_epoch = len(train_batches)
    except TypeError:
        steps_per_epoch = sum(1 for _ in train_batches)
    if steps_per_epoch == 0:
        raise ValueError("train_batches yields no batch: give at least one (inputs, target) pair")
    return steps_per_epoch


def _train_epoch(
    trained: nn.Module,
    train_batches: Iterable,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scales: list[nn.Parameter],
    device: torch.device,
    bar: Any,
    epoch: int,
    lr: float,
) -> float:
    """One pass over `train_batches`: an optimizer step per batch; returns this rank's mean loss."""
    trained.train()
    total, count = 0.0, 0
    for item in train_batches:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(f"each batch must be an (inputs, target) pair, got {type(item).__name__}")
        inputs, target = _to_device(item[0], device), _to_device(item[1], device)
        loss = loss_fn(_call(trained, inputs), target)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor (reduce the loss with mean or sum)")
        if not torch.isfinite(loss):
            raise ValueError(
                f"the loss became {loss.item()} in epoch {epoch}: lower the schedule's lr (now {lr}) or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for s in scales:
                s.clamp_(min=_MIN_SCALE)
        total += float(loss.detach())
        count += 1
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{total / count:.4f}")
    return total / count
