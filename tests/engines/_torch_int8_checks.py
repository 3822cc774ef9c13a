"""The checks the torch-int8 tests share: integer layers against fake-quant layers and exact float64 math.

Tolerances, derived. Given the same input, an `Int8Linear` and its fake-quant `QuantLinear` compute
the same sum `s_x * s_w[n] * sum_k (q_x - zp_x) W_q[n, k] + b[n]`: the integer one exactly in int32
(the static bias rounded to int32 adds at most half a step `s_x * s_w[n] / 2`), then a few float32
roundings of the rescale (`8 u |y|`, `u = 2**-24`); the fake-quant one with a float32 GEMM, whose error
is bounded by `2 K u (|x_dq| @ |W_dq|^T)`. So each layer is checked twice per element: against the
exact value (float64 from the integer codes) within half a step plus rescale rounding, and against
the fake-quant layer within one step `s_x * s_w[n]` plus the float32 GEMM error.

Through a whole model, a sub-step difference can move a value across a rounding boundary of the
next layer's input quantizer (one code flips), so whole-model outputs are compared by how much
smaller their difference is than the quantization error itself.
"""

import torch
from torch import nn

import quantpilot as qp
from quantpilot.nn.integer_linear import Int8Linear, Int8WeightOnlyLinear
from quantpilot.primitives import choose_qparams, min_max, quantize
from quantpilot.spec import PerToken

U = 2.0**-24  # float32 unit roundoff


def mlp(seed: int = 0) -> nn.Module:
    # K = 40, 72, 36 and N = 36, 10: not all multiples of 8 or 16.
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 72), nn.GELU(), nn.Linear(72, 36), nn.ReLU(), nn.Linear(36, 10)).eval()


def mlp_batch(seed: int, rows: int = 4) -> torch.Tensor:
    # An offset so asymmetric ranges get a non-zero zero point.
    return torch.randn(rows, 9, 40, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def frozen(model: nn.Module, recipe, batches) -> nn.Module:
    """Quantize with `recipe` (None: the model is quantized already), calibrate if needed, freeze."""
    qmodel = model if recipe is None else qp.quantize(model, recipe)
    if any(m.needs_calibration for m in qmodel.modules() if isinstance(m, qp.nn.TensorQuantizer)):
        with qp.calibrate(qmodel):
            for batch in batches:
                qp.batches.call_model(qmodel, batch)
    return qp.freeze(qmodel)


def smoothed(reference: qp.nn.QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """What the input quantizer sees: the layer input, divided by SmoothQuant factors where a layer has them."""
    smoothing = getattr(reference, "input_smoothing", None)
    return x if smoothing is None else x / smoothing


def input_qparams(reference: qp.nn.QuantLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (scale, zero point) the layer's input quantizer uses for `x`."""
    q = reference.input_quantizer
    if q.dynamic:
        return choose_qparams(*min_max(x, q.spec), q.spec)
    return q.scale, q.zero_point


def per_row(t: torch.Tensor, reference: qp.nn.QuantLinear) -> torch.Tensor:
    # Per-token qparams have one value per row: line them up with the (..., N) output.
    return t.unsqueeze(-1) if isinstance(reference.input_quantizer.spec.granularity, PerToken) else t


def exact_output(reference: qp.nn.QuantLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantized layer's value in float64 from its integer codes, and one output step s_x * s_w[n]."""
    x = smoothed(reference, x)
    bias = torch.zeros(()) if reference.bias is None else reference.bias.double()
    w_q = reference.weight_int.double()
    s_w = reference.weight_scale.double()
    if reference.input_quantizer.spec is None:  # weight-only: the step is the float GEMM's, no integer grid
        return (x.double() @ w_q.T) * s_w + bias, torch.zeros(())
    scale, zero_point = input_qparams(reference, x)
    codes = quantize(x, scale, zero_point, reference.input_quantizer.spec).double()
    s_x = per_row(scale.double(), reference)
    y = ((codes - per_row(zero_point.double(), reference)) @ w_q.T) * (s_x * s_w) + bias
    return y, s_x * s_w


def run_capturing_inputs(model: nn.Module, batch, types) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run `batch` through `model`, returning {layer name: (input, output)} of the layers of `types`."""
    seen = {}
    hooks = [
        # A copy: the model may change its input in place after the layer ran.
        m.register_forward_hook(lambda _m, args, out, name=name: seen.__setitem__(name, (args[0].clone(), out)))
        for name, m in model.named_modules()
        if isinstance(m, types)
    ]
    try:
        with torch.no_grad():
            qp.batches.call_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return seen


def check_layers_against_fake_quant(runner, qmodel: nn.Module, batch) -> int:
    """Feed each integer layer's own input to its fake-quant original and to exact float64 math, per element."""
    seen = run_capturing_inputs(runner.model, batch, Int8Linear | Int8WeightOnlyLinear)
    assert set(seen) == set(runner.integer_layers)
    with torch.no_grad():
        for name, (x, y_int) in seen.items():
            reference, integer = qmodel.get_submodule(name), runner.model.get_submodule(name)
            y_exact, step = exact_output(reference, x)
            bias = torch.zeros(()) if reference.bias is None else reference.bias.abs().double()
            # Integer layers: exact but for the int32 bias (half a step) and a few float32 roundings of the
            # rescale. Weight-only layers: a float32 GEMM, whose error 2 K u (|x| @ |W|^T) bounds.
            w_dq = reference.quantized_weight(torch.float32).double()
            x_dq = reference.input_quantizer(smoothed(reference, x)).double()
            gemm_error = 2 * x.shape[-1] * U * (x_dq.abs() @ w_dq.abs().T)
            rounding = 8 * U * (y_exact.abs() + bias)
            allowed = rounding + (0.5 * step if getattr(integer, "bias_mode", "") == "int32" else 0)
            if isinstance(integer, Int8WeightOnlyLinear):
                allowed = allowed + gemm_error
            excess = (y_int.double() - y_exact).abs() - allowed
            assert excess.max() <= 0, f"{name}: off the exact value by {excess.max().item():.3g} more than allowed"
            # The fake-quant layer reaches the same value through float32 GEMM: one step plus its GEMM error.
            excess = (y_int.double() - reference(x).double()).abs() - (step + gemm_error + rounding)
            assert excess.max() <= 0, f"{name}: exceeds one output step by {excess.max().item():.3g}"
    return len(seen)


def check_model_against_fake_quant(runner, qmodel, float_model, batch, key=None):
    """Through the whole model, integer and fake-quant layers see the same activation codes but for rare flips.

    A sub-step difference flips a code only where a value lies that close to a rounding boundary of
    the next quantizer, and then by one step: we allow 1 code in 100 to differ, by one. The outputs
    then stay >= 10 dB closer to the fake-quant model than the fake-quant model is to float.
    """
    integer_inputs = run_capturing_inputs(runner.model, batch, Int8Linear)
    fake_quant_inputs = run_capturing_inputs(qmodel, batch, qp.nn.QuantLinear)
    for name, (x_int, _) in integer_inputs.items():
        reference = qmodel.get_submodule(name)
        spec = reference.input_quantizer.spec
        x_int, x_fq = smoothed(reference, x_int), smoothed(reference, fake_quant_inputs[name][0])
        codes_int = quantize(x_int, *input_qparams(reference, x_int), spec).int()
        codes_fq = quantize(x_fq, *input_qparams(reference, x_fq), spec).int()
        flipped = codes_int != codes_fq
        assert (codes_int - codes_fq).abs().max() <= 1 and flipped.float().mean() <= 0.01, name
    with torch.no_grad():
        ref, fq, out = (qp.batches.call_model(m, batch) for m in (float_model, qmodel, runner.model))
    if key:
        ref, fq, out = ref[key], fq[key], out[key]
    assert qp.metrics.sqnr_db(fq, out) >= qp.metrics.sqnr_db(ref, fq) + 10
