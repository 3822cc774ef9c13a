"""End to end on the command line: `quantpilot quantize --model HF_DIR` then `quantpilot export DIR --format ...`.

A tiny random Llama folder (`quantpilot.testing.tiny_causal_lm`) is quantized with rtn-w4-g128 once;
each export is then reopened by its engine's own loader, and the user's mistakes are one-line exit-2 errors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from quantpilot.cli import main
from quantpilot.testing import tiny_causal_lm


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The folder `quantpilot quantize --model HF_DIR --recipe rtn-w4-g128` wrote, and the float model's folder."""
    root = tmp_path_factory.mktemp("cli-export-llm")
    tiny_causal_lm("llama").save_pretrained(root / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["quantize", "--model", str(root / "hf"), "--recipe", "rtn-w4-g128", "--out", str(root / "q"),
                     "--threads", "1"])  # fmt: skip
    assert code == 0
    return root / "q"


def _export(quantized, out, *extra: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # q4_0 from asymmetric codes is a requantization: warned, tested elsewhere
        return main(["export", str(quantized), *extra, "--out", str(out)])


def test_gguf_q4_0_export_reads_back_in_the_gguf_reader(quantized, tmp_path, capsys):
    import gguf

    assert _export(quantized, tmp_path / "g", "--format", "gguf", "--gguf-type", "q4_0") == 0
    path = tmp_path / "g" / "model.gguf"
    assert f"exported to {path}" in capsys.readouterr().out
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.Q4_0
    weight = gguf.quants.dequantize(q.data, q.tensor_type)
    assert weight.shape == (128, 128) and np.isfinite(weight).all() and np.abs(weight).max() > 0
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "llama"


def test_gguf_without_a_type_keeps_each_weights_own_4_bit_type(quantized, tmp_path):
    import gguf

    assert _export(quantized, tmp_path / "g", "--format", "gguf") == 0
    reader = gguf.GGUFReader(str(tmp_path / "g" / "model.gguf"))
    q = {t.name: t for t in reader.tensors}["blk.0.attn_q.weight"]
    # rtn-w4-g128's asymmetric groups: Q4_1, not an 8-bit requantization of 4-bit codes
    assert q.tensor_type == gguf.GGMLQuantizationType.Q4_1


def test_hf_export_loads_in_transformers(quantized, tmp_path):
    import transformers

    assert _export(quantized, tmp_path / "h", "--format", "hf") == 0
    config = transformers.AutoConfig.from_pretrained(tmp_path / "h")
    assert config.quantization_config["quant_method"] == "compressed-tensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "h")
    ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_openvino_export_reads_in_openvino(quantized, tmp_path):
    import openvino as ov

    assert _export(quantized, tmp_path / "o", "--format", "openvino") == 0
    model = ov.Core().read_model(str(tmp_path / "o" / "openvino_model.xml"))
    types = {
        op.get_output_element_type(0).get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"
    }
    assert "u4" in types  # compressed weights, not a float graph


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "gguf", "--gguf-type", "q5_k"], "argument --gguf-type: invalid choice: 'q5_k'"),
        (["--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
    ],
    ids=["gguf-type", "format"],
)
def test_wrong_arguments_are_one_line_exit_2(quantized, tmp_path, capsys, args, message):
    code = _export(quantized, tmp_path / "x", *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_a_folder_that_is_not_a_quantize_output_is_one_line_exit_2(tmp_path, capsys):
    tiny_causal_lm("llama").save_pretrained(tmp_path / "float")  # a float HF folder, not what quantize wrote
    capsys.readouterr()  # what writing the folder printed
    code = _export(tmp_path / "float", tmp_path / "g", "--format", "gguf")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("quantpilot: error:") and "holds no quantpilot model" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "g").exists()
