"""Quantization-aware training: fine-tune a calibrated quantized model with fake quantization in the loop.

    qat_model = qp.qat.prepare(calibrated_qmodel, learn_ranges=True)
    sched = qp.qat.adapt_schedule(qp.qat.Schedule(epochs=100, lr=0.1, batch_size=256, warmup_epochs=5))
    qp.qat.finetune(qat_model, train_batches, loss_fn, sched, eval_fn=None)
    qp.freeze(qat_model)

Example:
    >>> import quantpilot as qp
    >>> qp.qat.adapt_schedule(qp.qat.Schedule(epochs=20, lr=0.1, batch_size=64)).lr
    0.001
"""

from .finetune import FinetuneResult, finetune
from .learned_scale import LearnedScaleQuantizer, lsq_grad_factor
from .prepare import prepare
from .schedule import Schedule, adapt_schedule

__all__ = [
    "prepare",
    "Schedule",
    "adapt_schedule",
    "finetune",
    "FinetuneResult",
    "LearnedScaleQuantizer",
    "lsq_grad_factor",
]
