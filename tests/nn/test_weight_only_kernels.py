"""PyTorch's packed weight-only CPU kernels behind WeightOnlyKernelLinear, checked against dequantize + matmul."""

from __future__ import annotations

import pytest
import torch

import quantpilot as qp
from quantpilot.nn.packed import WeightOnlyLinear, weight_only_spec
from quantpilot.nn.weight_only_kernels import WeightOnlyKernelLinear, kernel_problem, unpack_cpu_int4pack
from quantpilot.testing import tiny_causal_lm


def test_the_kernels_exist_in_this_torch():
    for op in ("_weight_int8pack_mm", "_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu"):
        assert hasattr(torch.ops.aten, op), op


@pytest.mark.parametrize("rows, cols", [(64, 32), (128, 256), (192, 64)], ids=["64x32", "128x256", "192x64"])
def test_cpu_int4pack_layout_round_trips(rows, cols):
    codes = torch.randint(0, 16, (rows, cols), generator=torch.Generator().manual_seed(rows + cols))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    assert packed.shape == (rows, cols // 2) and packed.dtype == torch.uint8
    assert torch.equal(unpack_cpu_int4pack(packed, rows, cols), codes.to(torch.uint8))


def random_layer(bits: int, group: int | None, out_f: int = 128, in_f: int = 256, bias: bool = True):
    gen = torch.Generator().manual_seed(bits * 100 + (group or 0))
    groups = 1 if group is None else in_f // group
    qmax = 2**bits - 1
    return WeightOnlyLinear.from_codes(
        torch.randint(0, qmax + 1, (out_f, in_f), generator=gen),
        torch.rand(out_f, groups, generator=gen) / 20 + 1e-3,
        torch.randint(0, qmax + 1, (out_f, groups), generator=gen).float(),
        weight_only_spec(bits, group),
        torch.randn(out_f, generator=gen) if bias else None,
    )


@pytest.mark.parametrize("bits, group", [(8, None), (4, 128), (4, 32)], ids=["int8-pc", "int4-g128", "int4-g32"])
@pytest.mark.parametrize("rows", [1, 5, 40], ids=["decode-1", "decode-5", "prefill-40"])
def test_kernel_layer_equals_dequantize_then_matmul(bits, group, rows):
    layer = random_layer(bits, group)
    fast = WeightOnlyKernelLinear(layer)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    # Reference: the stored weight dequantized exactly, float64 matmul of the same bf16 inputs.
    w = layer.quantized_weight(torch.float64)
    expected = x.double() @ w.T + layer.bias.double()
    out = fast(x)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 128)
    # bf16 output, bf16 scales in the kernel: within a few bf16 steps of the output's magnitude.
    err = (out.double() - expected).abs().max() / expected.abs().max()
    assert err < 2e-2
    # Float32 callers get float32 back (computed in bf16).
    assert fast(x.float()).dtype == torch.float32


@pytest.mark.parametrize("bits, group", [(8, None), (4, 64)], ids=["int8", "int4"])
def test_kernel_and_prefill_paths_agree(bits, group):
    layer = random_layer(bits, group, bias=False)
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    kernel = WeightOnlyKernelLinear(layer, kernel_max_rows=8)(x).float()
    dequant = WeightOnlyKernelLinear(layer, kernel_max_rows=0)(x).float()
    assert ((kernel - dequant).abs().max() / dequant.abs().max()) < 2e-2


def test_kernel_problems_are_named():
    assert "per-group" in kernel_problem(random_layer(8, 64))
    assert "group size 16" in kernel_problem(random_layer(4, 16))
    assert "multiple of 64" in kernel_problem(random_layer(4, 32, out_f=96))
    with pytest.raises(ValueError, match="cannot serve"):
        WeightOnlyKernelLinear(random_layer(8, 64))


@pytest.mark.parametrize("bits, group", [(8, None), (4, 128)], ids=["w8a16", "w4a16-g128"])
def test_torch_int8_engine_runs_rtn_models_for_prefill_and_decode(bits, group):
    model = tiny_causal_lm("llama")
    qmodel = qp.algorithms.rtn(model, bits=bits, group_size=group)
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert len(runner.integer_layers) == 14 and not runner.fallback_layers
    assert all(("int8pack" if bits == 8 else "int4pack") in path for path in runner.integer_layers.values())
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = qmodel(input_ids=ids).logits
        prefill = runner.model(input_ids=ids).logits
        # Token by token with the KV cache: every step runs the packed kernel (one row).
        past, steps = None, []
        for t in range(ids.shape[1]):
            out = runner.model(input_ids=ids[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        decode = torch.cat(steps, dim=1)
    for got in (prefill, decode):
        cos = torch.nn.functional.cosine_similarity(got.flatten().double(), ref.flatten().double(), dim=0)
        assert cos > 0.999
    assert qp.engines.compile(qmodel, engine="torch-int8").model is not qmodel  # the user's model is untouched
