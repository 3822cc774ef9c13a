"""OpenVINO IR export: NNCF's compressed-weight layout (u4/u8 constants, zero point, scale), run in OpenVINO."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
import torch

from quantpilot.export.llm.engine_check import OPENVINO_EXACT_CONFIG
from quantpilot.export.llm.openvino_ir import write_openvino_ir


def _constants(model: ov.Model) -> list[str]:
    return [
        n.get_output_element_type(0).get_type_name() for n in model.get_ordered_ops() if n.get_type_name() == "Constant"
    ]


# One architecture: a trace + compile takes several seconds (Llama runs in test_export_llm and the benchmark).
def test_gpt2_round_trip_with_u4_weights(rtn_models, tmp_path):
    model = rtn_models["gpt2"]
    result = write_openvino_ir(model, tmp_path / "m.xml")
    assert result.compressed == 8 and result.low_bit_types == ("u4",)
    ir = ov.Core().read_model(str(result.path))
    kinds = _constants(ir)
    assert kinds.count("u4") == 16  # codes and zero points of the 8 layers
    subtracts = [n for n in ir.get_ordered_ops() if n.get_type_name() == "Subtract"]
    assert sum(n.input_value(1).get_node().input_value(0).get_element_type() == ov.Type.u4 for n in subtracts) == 8
    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(5))
    compiled = ov.Core().compile_model(ir, "CPU", OPENVINO_EXACT_CONFIG)
    with torch.no_grad():
        ours = model(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(compiled(ids.numpy())[0], ours, rtol=1e-4, atol=1e-5)


def test_existing_files_and_wrong_suffix_are_refused(rtn_models, tmp_path):
    (tmp_path / "m.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="already exists"):
        write_openvino_ir(rtn_models["gpt2"], tmp_path / "m.xml")
    with pytest.raises(ValueError, match="must end in .xml"):
        write_openvino_ir(rtn_models["gpt2"], tmp_path / "m.onnx")


def test_fp16_scales_are_stored_as_f16_and_widened(rtn_models, tmp_path):
    result = write_openvino_ir(rtn_models["gpt2"], tmp_path / "m.xml", kv_cache=False)
    ir = ov.Core().read_model(str(result.path))
    multiplies = [n for n in ir.get_ordered_ops() if n.get_type_name() == "Multiply"]
    scales = [m.input_value(1).get_node() for m in multiplies]
    widened = [
        c for c in scales if c.get_type_name() == "Convert" and c.input_value(0).get_element_type() == ov.Type.f16
    ]
    assert len(widened) == result.compressed  # one f16 scale constant per compressed weight


def test_a_6_bit_table_is_stored_as_u8_codes_and_runs(rtn_models, tmp_path):
    # OpenVINO has no 6-bit type: the Q6_K-grid table keeps its codes in u8 constants (llama.cpp reads the
    # same codes as Q6_K), and the graph computes the same logits.
    import quantpilot as qp

    model = qp.algorithms.quantize_embeddings(rtn_models["gpt2"], bits=6, group_size=16, skip=("transformer.wpe",))
    result = write_openvino_ir(model, tmp_path / "m.xml", kv_cache=False)
    assert result.low_bit_types == ("u4", "u8")
    ir = ov.Core().read_model(str(result.path))
    compiled = ov.Core().compile_model(ir, "CPU", OPENVINO_EXACT_CONFIG)
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = model(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(compiled(ids.numpy())[0], ours, rtol=1e-4, atol=1e-5)
