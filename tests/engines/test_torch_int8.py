"""The torch-int8 engine: integer layers compute what the fake-quant layers compute, within one output step.

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

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import quantpilot as qp
from quantpilot.nn import int8_gemm, integer_linear
from quantpilot.nn.integer_linear import Int8Linear, Int8WeightOnlyLinear, int8_matmul, int_mm_fits, to_integer
from quantpilot.primitives import SCALE_EPS, choose_qparams, min_max, quantize
from quantpilot.spec import PerChannel, PerGroup, PerToken, QuantSpec

U = 2.0**-24  # float32 unit roundoff

RECIPES = {
    "int8-static": qp.Recipe.preset("int8-static"),
    "int8-dynamic": qp.Recipe.preset("int8-dynamic"),
    "static-asym-int8": qp.Recipe(activations=QuantSpec("int8", symmetric=False)),
    "static-asym-uint8": qp.Recipe(activations=QuantSpec("uint8", symmetric=False)),
    "static-sym-uint8": qp.Recipe(activations=QuantSpec("uint8", symmetric=True)),
    "dynamic-token-sym": qp.Recipe(activations=QuantSpec("int8", granularity=PerToken()), dynamic=True),
    "dynamic-tensor-sym": qp.Recipe(activations=QuantSpec("int8"), dynamic=True),
    "dynamic-tensor-asym-uint8": qp.Recipe(activations=QuantSpec("uint8", symmetric=False), dynamic=True),
    "per-tensor-weights": qp.Recipe(weights=QuantSpec("int8", narrow_range=True), activations="dynamic"),
    "w8a16": qp.Recipe.preset("w8a16"),
}


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


def test_engine_is_registered():
    assert "torch-int8" in qp.engines.available_engines()


@pytest.mark.parametrize("name", list(RECIPES), ids=list(RECIPES))
def test_mlp_layers_match_fake_quant_within_one_step(name):
    model = mlp()
    qmodel = frozen(model, RECIPES[name], [mlp_batch(i) for i in range(3)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert runner.engine == "torch-int8"
    assert sorted(runner.integer_layers) == ["0", "2", "4"] and runner.fallback_layers == {}
    kind = Int8WeightOnlyLinear if name == "w8a16" else Int8Linear
    assert all(type(runner.model.get_submodule(n)) is kind for n in runner.integer_layers)
    assert check_layers_against_fake_quant(runner, qmodel, mlp_batch(7)) == 3
    check_model_against_fake_quant(runner, qmodel, model, mlp_batch(8))


@pytest.mark.parametrize("preset", ["int8-static", "int8-dynamic", "w8a16"], ids=["static", "dynamic", "w8a16"])
def test_smoothquant_factors_are_applied_before_quantizing(preset):
    if not hasattr(qp.nn.QuantLinear, "smooth"):
        pytest.skip("this QuantLinear has no SmoothQuant factors")
    model = mlp()
    qmodel = qp.quantize(model, preset)
    factors = torch.rand(40, generator=torch.Generator().manual_seed(3)) * 4 + 0.25
    qmodel.get_submodule("0").smooth(factors)
    qmodel = frozen(qmodel, None, [mlp_batch(i) for i in range(3)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert torch.equal(runner.model.get_submodule("0").input_smoothing, factors)
    check_layers_against_fake_quant(runner, qmodel, mlp_batch(7))


def test_static_bias_is_folded_into_int32():
    qmodel = frozen(mlp(), "int8-static", [mlp_batch(0)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    layer = runner.model.get_submodule("0")
    assert layer.bias_mode == "int32" and layer.bias is None and layer.offset.dtype == torch.int32
    assert "bias int32" in runner.integer_layers["0"]


@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=100
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def bert_batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0  # padding, as a real batch has
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("preset", ["int8-static", "int8-dynamic"], ids=["static", "dynamic"])
def test_bert_layers_match_fake_quant_within_one_step(bert, preset):
    qmodel = frozen(bert, preset, [bert_batch(i) for i in range(3)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    # 2 layers x (query, key, value, attention output, intermediate, output) + pooler (M = 3 rows).
    assert len(runner.integer_layers) == 13 and "pooler.dense" in runner.integer_layers
    assert set(runner.fallback_layers) == {f"embeddings.{e}_embeddings" for e in ("word", "position", "token_type")}
    assert all("QuantEmbedding" in reason for reason in runner.fallback_layers.values())
    assert check_layers_against_fake_quant(runner, qmodel, bert_batch(9)) == 13
    check_model_against_fake_quant(runner, qmodel, bert, bert_batch(10), key="last_hidden_state")


class Fork(nn.Module):
    """Three layers read one tensor, as query / key / value do; the third after it changed in place."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(24, 16), nn.Linear(24, 16), nn.Linear(24, 16)

    def forward(self, x):
        x = x * 1.0  # a fresh tensor the model owns
        q, k = self.q(x), self.k(x)
        x.mul_(3.0)
        return torch.cat([q, k, self.v(x)], dim=-1)


@pytest.mark.parametrize("preset", ["int8-static", "int8-dynamic"], ids=["static", "dynamic"])
def test_layers_reading_one_tensor_quantize_it_once_and_see_in_place_changes(preset, monkeypatch):
    torch.manual_seed(0)
    model = Fork().eval()
    qmodel = frozen(model, preset, [torch.randn(6, 24) * 3 for _ in range(2)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    quantized = []
    original = Int8Linear._codes
    monkeypatch.setattr(Int8Linear, "_codes", lambda self, x: quantized.append(self) or original(self, x))
    x = torch.randn(5, 24)
    check_layers_against_fake_quant(runner, qmodel, x)
    quantized.clear()
    out = runner(x)
    # q and k share codes (calibrated on one tensor, their static ranges agree too); v's input changed in place.
    assert runner.model.q.code_key == runner.model.k.code_key
    assert [type(m) for m in quantized] == [Int8Linear, Int8Linear] and quantized[1] is runner.model.v
    with torch.no_grad():
        assert qp.metrics.sqnr_db(qmodel(x), out) > 60
    with torch.inference_mode():  # no version counters: nothing is cached, results are the same
        assert torch.equal(runner.model(x), out)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        names = ("a4", "w4g", "wasym", "fp8", "ok")
        self.fcs = nn.ModuleDict({n: nn.Linear(32, 32) for n in names})

    def forward(self, x):
        x = self.conv(x.transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, 32)
        for fc in self.fcs.values():
            x = torch.relu(fc(x)) + 0.1
        return x


def test_layers_the_integer_path_cannot_serve_fall_back_with_a_reason():
    torch.manual_seed(0)
    model = Mixed().eval()
    recipe = qp.Recipe(
        activations="dynamic",
        overrides={
            "fcs.a4": {"activations": QuantSpec("int4", symmetric=False, granularity=PerToken())},
            "fcs.w4g": {"weights": QuantSpec("int4", granularity=PerGroup(16))},
            "fcs.wasym": {"weights": QuantSpec("int8", symmetric=False, granularity=PerChannel(0))},
            "fcs.fp8": {
                "weights": QuantSpec("fp8_e4m3", granularity=PerChannel(0)),
                "activations": QuantSpec("fp8_e4m3", granularity=PerToken()),
            },
        },
    )
    qmodel = qp.freeze(qp.quantize(model, recipe))
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert list(runner.integer_layers) == ["fcs.ok"]
    reasons = runner.fallback_layers
    assert set(reasons) == {"conv", "fcs.a4", "fcs.w4g", "fcs.wasym", "fcs.fp8"}
    assert "QuantConv1d" in reasons["conv"] and "int4" in reasons["fcs.a4"] and "int4" in reasons["fcs.w4g"]
    assert "asymmetric" in reasons["fcs.wasym"] and "fp8" in reasons["fcs.fp8"]
    # The fallback layers are the fake-quant modules themselves.
    assert type(runner.model.get_submodule("fcs.fp8")) is qp.nn.QuantLinear
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))
    check_layers_against_fake_quant(runner, qmodel, x)
    check_model_against_fake_quant(runner, qmodel, model, x)


@pytest.mark.parametrize(
    ("spec", "dynamic", "reason"),
    [
        (QuantSpec("int8", granularity=PerChannel(1)), False, "static PerChannel"),
        (QuantSpec("int8", granularity=PerGroup(8)), True, "dynamic PerGroup"),
    ],
    ids=["static-per-channel", "dynamic-per-group"],
)
def test_activation_granularities_that_cannot_leave_the_sum_are_refused(spec, dynamic, reason):
    layer = qp.nn.QuantLinear(torch.randn(4, 16), None, input_quantizer=qp.nn.TensorQuantizer(spec, dynamic=dynamic))
    layer.store_weight_as_integers()
    if not dynamic:
        layer.input_quantizer.scale, layer.input_quantizer.zero_point = (
            torch.ones(16),
            torch.zeros(16, dtype=torch.int32),
        )
    assert reason in integer_linear.unsupported_reason(layer)
    with pytest.raises(ValueError, match=reason):
        to_integer(layer)


@pytest.mark.parametrize("rows", [1, 5, 16, 17], ids=lambda r: f"M{r}")
def test_shapes_cuda_int_mm_rejects_are_exact_through_both_gemms(rows, monkeypatch):
    # K = 37 and N = 13 are not multiples of 8; M <= 16 is what CUDA's _int_mm refuses.
    torch.manual_seed(rows)
    net = nn.Sequential(nn.Linear(37, 13))
    for preset in ("int8-dynamic", "int8-static"):
        qmodel = frozen(net, preset, [torch.randn(8, 37)])
        runner = qp.engines.compile(qmodel, engine="torch-int8")
        x = torch.randn(rows, 37)
        check_layers_against_fake_quant(runner, qmodel, x)
        with_int_mm = runner(x)
        with monkeypatch.context() as m:
            m.setattr(int8_gemm, "int_mm_fits", lambda *_: False)
            assert torch.equal(runner(x), with_int_mm)  # the int32 accumulator is exact either way


def test_int_mm_on_this_cpu_accepts_the_shapes_cuda_refuses():
    # Why int_mm_fits says True for every CPU shape: this build computes them exactly.
    a = torch.randint(-128, 128, (3, 7), dtype=torch.int8)
    b = torch.randint(-128, 128, (7, 5), dtype=torch.int8)
    assert torch.equal(torch._int_mm(a, b), a.long().matmul(b.long()).int())
    assert int_mm_fits(3, 7, 5, "cpu") and not int_mm_fits(3, 64, 64, "cuda") and not int_mm_fits(32, 7, 8, "cuda")


def with_layout(t: torch.Tensor, column_major: bool, size1_stride: int | None) -> torch.Tensor:
    """The same values in a row- or column-major layout; size-1 dims may carry any stride (PyTorch allows it)."""
    rows, cols = t.shape
    data = (t.t() if column_major else t).contiguous().flatten()
    strides = [1, rows] if column_major else [cols, 1]
    for dim, size in enumerate((rows, cols)):
        if size == 1 and size1_stride is not None:
            strides[dim] = size1_stride
    storage = torch.zeros(data.numel() + 8, dtype=t.dtype)
    storage[: data.numel()] = data
    return storage.as_strided((rows, cols), strides)


layouts = st.tuples(st.booleans(), st.sampled_from([None, 1, 5]))


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(0, 33),
    k=st.integers(0, 70),
    n=st.integers(1, 20),
    seed=st.integers(0, 2**16),
    a_layout=layouts,
    b_layout=layouts,
    fallback=st.booleans(),
)
@example(m=3, k=1, n=4, seed=0, a_layout=(False, None), b_layout=(True, None), fallback=False)  # x @ W.t(), K = 1
@example(m=1, k=8, n=2, seed=0, a_layout=(True, None), b_layout=(False, None), fallback=False)  # (1, K), strides (1, 1)
def test_int8_matmul_is_exact(m, k, n, seed, a_layout, b_layout, fallback):
    # Layouts matter: CPU _int_mm misread a size-1 dim with an odd stride (found here: x @ W.t() with K = 1).
    g = torch.Generator().manual_seed(seed)
    a0 = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    a0[:, :1] = -128  # the extreme code, whose abs() does not fit int8
    b0 = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=g)
    a, b = with_layout(a0, *a_layout), with_layout(b0, *b_layout)
    with pytest.MonkeyPatch.context() as mp:
        if fallback:
            mp.setattr(int8_gemm, "int_mm_fits", lambda *_: False)
        out = int8_matmul(a, b)
    assert out.dtype == torch.int32 and torch.equal(out.long(), a0.long() @ b0.long())


def test_a_layer_with_one_input_feature_is_exact():
    qmodel = frozen(nn.Sequential(nn.Linear(1, 6)), "int8-dynamic", [])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    check_layers_against_fake_quant(runner, qmodel, torch.randn(5, 1))


def test_int_mm_refusing_a_shape_falls_back_to_the_exact_path(monkeypatch):
    def refuse(*_):
        raise RuntimeError("self.size(0) needs to be greater than 16")

    monkeypatch.setattr(torch, "_int_mm", refuse)
    a = torch.randint(-128, 128, (4, 24), dtype=torch.int8)
    b = torch.randint(-128, 128, (24, 8), dtype=torch.int8)
    assert torch.equal(int8_matmul(a, b).long(), a.long() @ b.long())


def test_tiny_static_scale_keeps_the_bias_in_float_instead_of_overflowing_int32():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.fill_(-1.0)  # ReLU output is always 0: the second input range is [0, 0]
        model[2].bias.fill_(50.0)
    batches = [torch.rand(8, 4) for _ in range(2)]
    qmodel = frozen(model, "int8-static", batches)
    assert qmodel[2].input_quantizer.scale.item() == pytest.approx(SCALE_EPS)
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert runner.model[2].bias_mode == "float" and "bias float" in runner.integer_layers["2"]
    x = torch.rand(5, 4)
    with torch.no_grad():
        assert torch.allclose(runner(x), qmodel(x)) and torch.allclose(runner(x), torch.full((5, 2), 50.0))


def test_bfloat16_input_gives_bfloat16_output():
    qmodel = frozen(mlp(), "int8-dynamic", [])
    layer = to_integer(qmodel.get_submodule("0"))
    x = mlp_batch(1)
    with torch.no_grad():
        y16, y32 = layer(x.bfloat16()), layer(x)
    assert y16.dtype == torch.bfloat16 and qp.metrics.sqnr_db(y32, y16.float()) > 30


def test_compile_leaves_the_given_model_untouched():
    qmodel = frozen(mlp(), "int8-dynamic", [])
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert runner.model is not qmodel
    assert all(type(qmodel.get_submodule(n)) is qp.nn.QuantLinear for n in ("0", "2", "4"))
    assert all(torch.equal(v, qmodel.state_dict()[k]) for k, v in before.items())


def test_a_model_with_no_integer_layer_warns_and_still_runs():
    net = nn.Sequential(nn.Linear(128, 8))
    qmodel = qp.freeze(qp.quantize(net, "w4a16-g128"))
    with pytest.warns(UserWarning, match="no layer runs on the integer path"):
        runner = qp.engines.compile(qmodel, engine="torch-int8")
    x = torch.randn(2, 128)
    with torch.no_grad():
        assert torch.equal(runner(x), qmodel(x))


def test_not_frozen_is_refused():
    with pytest.raises(ValueError, match="freeze first"):
        qp.engines.compile(qp.quantize(mlp(), "int8-dynamic"), engine="torch-int8")
    qmodel = qp.quantize(mlp(), "int8-static")
    with qp.calibrate(qmodel):
        qmodel(mlp_batch(0))
    qmodel.get_submodule("0").store_weight_as_integers()
    qmodel.get_submodule("2").store_weight_as_integers()
    qmodel.get_submodule("4").store_weight_as_integers()  # weights frozen, activation ranges not yet fixed
    with pytest.raises(ValueError, match=r"freeze first.*0\.input_quantizer"):
        qp.engines.compile(qmodel, engine="torch-int8")


def test_models_without_quantized_layers_are_refused():
    with pytest.raises(ValueError, match="no quantized layer"):
        qp.engines.compile(mlp(), engine="torch-int8")
    with pytest.raises(TypeError, match="nn.Module"):
        qp.engines.compile("model.onnx", engine="torch-int8")


def test_torch_ao_dynamic_models_are_refused_not_run():
    ao_linear = pytest.importorskip("torch.ao.nn.quantized.dynamic").Linear
    with pytest.raises(ValueError, match="torch.ao"):
        qp.engines.compile(nn.Sequential(ao_linear(8, 8)), engine="torch-int8")
    mixed = qp.freeze(qp.quantize(nn.Sequential(nn.Linear(8, 8)), "int8-dynamic"))
    mixed.append(ao_linear(8, 8))  # quantpilot layers beside a torch.ao one: still refused
    with pytest.raises(ValueError, match="torch.ao"):
        qp.engines.compile(mixed, engine="torch-int8")


def test_integer_modules_refuse_layers_of_the_other_kind():
    weight_only = qp.freeze(qp.quantize(mlp(), "w8a16")).get_submodule("0")
    dynamic = qp.freeze(qp.quantize(mlp(), "int8-dynamic")).get_submodule("0")
    with pytest.raises(ValueError, match="Int8WeightOnlyLinear"):
        Int8Linear(weight_only)
    with pytest.raises(ValueError, match="Int8Linear"):
        Int8WeightOnlyLinear(dynamic)
    with pytest.raises(ValueError, match="not frozen"):
        to_integer(qp.quantize(mlp(), "int8-dynamic").get_submodule("0"))


def test_weight_only_takes_the_fake_quant_values_for_few_rows_and_many():
    # Few rows (decoding) scale the output; many rows dequantize the weight, exactly as the fake-quant layer.
    qmodel = qp.freeze(qp.quantize(mlp(), "w8a16"))
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    for rows in (1, 80):
        check_layers_against_fake_quant(runner, qmodel, torch.randn(rows, 40))
    x = torch.randn(80, 40)
    with torch.no_grad():
        assert torch.equal(runner.model.get_submodule("0")(x), qmodel.get_submodule("0")(x))
