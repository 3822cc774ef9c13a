"""`qp.load` refuses damaged or hostile files with a one-line ValueError before anything runs (issue 19)."""

import json
import struct
import time

import pytest
import safetensors.torch
import torch
from torch import nn

import quantpilot as qp
from quantpilot.load_checks import MAX_PATTERNS, tensor_checksums


def _net(hidden: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 8))


def _int8(net):  # narrow-range int8 codes (w8a16: symmetric, -127..127)
    return qp.freeze(qp.quantize(net, "w8a16"))


def _rtn(net):  # packed uint4 codes, fp16 scales and zero points
    return qp.algorithms.rtn(net, bits=4, group_size=32, skip=())


def _saved(tmp_path, build=_rtn, hidden=32):
    net = _net(hidden)
    qmodel = build(net)
    return net, qmodel, qp.save(qmodel, tmp_path / "q")


def _rewrite_tensor(directory, name, value):
    """Replace one stored tensor and re-sign the map, as a hostile writer could: only the value checks are left."""
    state = safetensors.torch.load_file(directory / "model.safetensors")
    state[name] = value(state[name])
    safetensors.torch.save_file(state, directory / "model.safetensors", metadata={"format": "quantpilot"})
    _edit_map(directory, lambda meta: meta.update(checksums=tensor_checksums(state)))


def _edit_map(directory, change):
    meta = json.loads((directory / "quantpilot.json").read_text())
    change(meta)
    (directory / "quantpilot.json").write_text(json.dumps(meta))


def _with(t, index, value, dtype=None):
    t = t.to(dtype or t.dtype).clone()
    t.view(-1)[index] = value
    return t


def _flip_data_byte(directory):
    path = directory / "model.safetensors"
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    start, _ = json.loads(raw[8 : 8 + n])["0.bias"]["data_offsets"]
    raw[8 + n + start + 1] ^= 0xFF
    path.write_bytes(bytes(raw))


def _set_layer_sizes(rows, cols):
    def change(meta):
        meta["layers"]["0"]["config"].update(out_features=rows, in_features=cols)

    return change


TENSOR_CASES = [
    (_int8, "0.weight_int", lambda t: _with(t, 0, 300, torch.int32), r"'0\.weight_int' is stored as I32 .*int8"),
    (_int8, "0.weight_int", lambda t: t.float(), r"'0\.weight_int' is stored as F32 .*int8"),
    (_int8, "0.weight_int", lambda t: _with(t, 3, -128), r"0\.weight_int \(int8\) holds values in \[-128.*-127\.\.127"),
    (_rtn, "0.weight_zero_point", lambda t: _with(t, 0, 1e4), r"0\.weight_zero_point holds values .*10000.*0\.\.15"),
    (_rtn, "0.weight_packed", lambda t: t.long(), r"'0\.weight_packed' is stored as I64 .*uint8"),
    (_rtn, "2.weight_scale", lambda t: _with(t, 1, float("nan")), r"2\.weight_scale holds nan; scales must be finite"),
    (_int8, "2.weight_scale", lambda t: _with(t, 0, -1.0), r"2\.weight_scale holds -1\.0; scales must be .*positive"),
]


@pytest.mark.parametrize(
    ("build", "name", "value", "message"),
    TENSOR_CASES,
    ids=[
        "int32-codes-300",
        "float32-codes",
        "minus-128-narrow",
        "zero-point-1e4",
        "packed-int64",
        "nan-scale",
        "neg-scale",
    ],
)
def test_a_damaged_tensor_is_a_one_line_error_naming_it(tmp_path, build, name, value, message):
    net, _, directory = _saved(tmp_path, build)
    _rewrite_tensor(directory, name, value)
    with pytest.raises(ValueError, match=message) as err:
        qp.load(net, directory)
    assert "\n" not in str(err.value)


def test_flipped_data_bytes_under_an_intact_header_fail_the_checksum(tmp_path):
    net, _, directory = _saved(tmp_path, _int8)
    _flip_data_byte(directory)
    with pytest.raises(ValueError, match=r"tensor '0\.bias' does not match its checksum"):
        qp.load(net, directory)


MAP_CASES = [
    (lambda d: d.write_bytes(b'{"format": "quantpilot\xff\xfe"}'), r"is not UTF-8 text"),
    (lambda d: d.write_text("[" * 100_000 + "]" * 100_000), r"nested too deep"),
    (lambda d: _edit_map(d.parent, lambda m: m.pop("recipe")), r"has no 'recipe' key"),
    (lambda d: _edit_map(d.parent, lambda m: m.pop("layers")), r"has no 'layers' key"),
    (
        lambda d: _edit_map(d.parent, lambda m: m["recipe"].update(skip=[f"x{i}" for i in range(2 * MAX_PATTERNS)])),
        r"holds 20000 'skip' entries \(at most 10000",
    ),
    (
        lambda d: _edit_map(d.parent, _set_layer_sizes(32, -128)),
        r"layer '0' has in_features=-128; sizes must be positive",
    ),
    (lambda d: _edit_map(d.parent, _set_layer_sizes(32, "64")), r"layer '0' has in_features='64'"),
    (lambda d: _edit_map(d.parent, lambda m: m["recipe"].update(skip=7)), r"holds a damaged recipe: .int. object"),
]


@pytest.mark.parametrize(
    ("damage", "message"),
    MAP_CASES,
    ids=["not-utf8", "nested-100k", "no-recipe", "no-layers", "20k-skip", "negative-size", "string-size", "bad-skip"],
)
def test_a_damaged_map_is_a_one_line_error(tmp_path, damage, message):
    net, _, directory = _saved(tmp_path)
    damage(directory / "quantpilot.json")
    with pytest.raises(ValueError, match=message) as err:
        qp.load(net, directory)
    assert "\n" not in str(err.value)


def test_a_map_declaring_a_huge_layer_fails_fast_without_allocating(tmp_path):
    net, _, directory = _saved(tmp_path)
    _edit_map(directory, _set_layer_sizes(2**20, 2**13))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"layer '0' is 1048576 x 8192 .* this float model's is 32 x 64"):
        qp.load(net, directory)
    assert time.perf_counter() - start < 0.5


def _llm_int8(net):
    return qp.algorithms.llm_int8(net, skip=())


@pytest.mark.parametrize("build", [_rtn, _llm_int8], ids=["rtn", "llm-int8"])
def test_a_map_from_a_model_of_another_width_is_refused(tmp_path, build):
    _, _, directory = _saved(tmp_path, build, hidden=32)
    with pytest.raises(ValueError, match=r"layer '0' is 32 x 64 .* float model's is 48 x 64"):
        qp.load(_net(hidden=48), directory)


@pytest.mark.parametrize("build", [_int8, _rtn, _llm_int8], ids=["int8", "rtn", "llm-int8"])
def test_a_normal_save_load_is_bit_exact_and_records_checksums(tmp_path, build):
    net, qmodel, directory = _saved(tmp_path, build)
    meta = json.loads((directory / "quantpilot.json").read_text())
    assert set(safetensors.torch.load_file(directory / "model.safetensors")) <= set(meta["checksums"])
    loaded = qp.load(net, directory)
    x = torch.randn(4, 64)
    assert torch.equal(loaded(x), qmodel(x))
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), qmodel.state_dict().values(), strict=True)
    )


def test_a_map_without_checksums_still_loads(tmp_path):
    net, qmodel, directory = _saved(tmp_path, _int8)
    _edit_map(directory, lambda meta: meta.pop("checksums"))
    x = torch.randn(2, 64)
    assert torch.equal(qp.load(net, directory)(x), qmodel(x))
