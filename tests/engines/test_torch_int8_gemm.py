"""The torch-int8 engine's int8 GEMM: exact int32 sums for every shape and memory layout, `_int_mm` or not."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import quantpilot as qp
from quantpilot.nn import int8_gemm
from quantpilot.nn.integer_linear import int8_matmul, int_mm_fits

from ._torch_int8_checks import check_layers_against_fake_quant, frozen


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
