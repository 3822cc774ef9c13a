"""Fuzzing `qp.load` with damaged files: a clean load with the saved outputs, or a one-line ValueError."""

import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import quantpilot as qp


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    net = _net()
    qmodel = qp.quantize(net, qp.Recipe(skip=("2",)))
    with qp.calibrate(qmodel):
        qmodel(torch.randn(32, 64))
    qp.freeze(qmodel)
    directory = qp.save(qmodel, tmp_path_factory.mktemp("fuzz") / "q")
    x = torch.randn(4, 64)
    return directory, x, qmodel(x)


DAMAGE = st.tuples(
    st.sampled_from(["model.safetensors", "quantpilot.json"]),
    st.sampled_from(["flip", "truncate", "insert"]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    st.integers(min_value=1, max_value=255),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE)
def test_damaged_files_load_cleanly_or_fail_in_one_line(saved, tmp_path_factory, damage):
    directory, x, expected = saved
    target, operation, where, value = damage
    copy = tmp_path_factory.mktemp("case") / "q"
    shutil.copytree(directory, copy)
    data = bytearray((copy / target).read_bytes())
    position = min(int(where * len(data)), len(data) - 1)
    if operation == "flip":
        data[position] ^= value
    elif operation == "truncate":
        del data[position:]
    else:
        data[position:position] = bytes([value]) * 8
    (copy / target).write_bytes(bytes(data))
    try:
        loaded = qp.load(_net(), copy)
    except ValueError as err:
        assert "\n" not in str(err), f"{damage}: the error is more than one line: {err}"
        return
    # Loaded: the damage was harmless (JSON whitespace, a version string); the model computes as saved.
    assert torch.equal(loaded(x), expected), f"{damage}: loaded a damaged file that computes something else"
