"""Atomic writes: saves, recipes and ONNX files appear whole or not at all, never through a link, with one mode."""

import json
import os
import stat

import pytest
import torch

import quantpilot as qp
from quantpilot import atomic, persistence
from quantpilot.atomic import atomic_directory, atomic_path


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _frozen():
    torch.manual_seed(0)
    return qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)), "w8a16"))


def _interrupt_json(monkeypatch):
    """json.dumps raises KeyboardInterrupt: the save is cut after the weights, before the map."""

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(persistence.json, "dumps", cut)


# ---------------------------------------------------------------------------- the helper
def test_atomic_path_publishes_with_the_umask_mode_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "sub" / "f.bin"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".f.bin.tmp-")
        tmp.write_bytes(b"x")
        os.chmod(tmp, 0o600)  # what safetensors' own temporary gets
    assert final.read_bytes() == b"x"
    assert _mode(final) == 0o666 & ~_umask()
    assert os.listdir(final.parent) == ["f.bin"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_atomic_path_removes_the_temporary_on_any_exception(tmp_path, error):
    with pytest.raises(error), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("half")
        raise error
    assert os.listdir(tmp_path) == []


def test_atomic_path_refuses_an_existing_file_and_any_link(tmp_path):
    (tmp_path / "here.txt").write_text("user's")
    (tmp_path / "live").symlink_to(tmp_path / "here.txt")
    (tmp_path / "dangling").symlink_to(tmp_path / "elsewhere.txt")
    for name, words in [("here.txt", "already exists"), ("live", "symbolic link"), ("dangling", "symbolic link")]:
        with pytest.raises(ValueError, match=words), atomic_path(tmp_path / name) as tmp:
            tmp.write_text("ours")
    assert (tmp_path / "here.txt").read_text() == "user's"
    assert not (tmp_path / "elsewhere.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["dangling", "here.txt", "live"]


def test_a_file_appearing_meanwhile_is_not_overwritten(tmp_path):
    final = tmp_path / "f.txt"
    with pytest.raises(ValueError, match="appeared"), atomic_path(final) as tmp:
        tmp.write_text("ours")
        final.write_text("theirs")
    assert final.read_text() == "theirs" and os.listdir(tmp_path) == ["f.txt"]


def test_atomic_directory_into_an_existing_folder_moves_the_last_name_last(tmp_path, monkeypatch):
    order = []
    publish = atomic._publish
    monkeypatch.setattr(atomic, "_publish", lambda tmp, final: (order.append(final.name), publish(tmp, final)))
    (tmp_path / "out").mkdir()
    with atomic_directory(tmp_path / "out", last=("b.json",)) as staging:
        assert staging.parent == tmp_path  # beside the folder, not inside it
        (staging / "b.json").write_text("{}")
        (staging / "a.bin").write_text("a")
    assert order == ["a.bin", "b.json"]
    assert sorted(os.listdir(tmp_path)) == ["out"] and sorted(os.listdir(tmp_path / "out")) == order


def test_atomic_directory_takes_back_what_it_moved_when_a_later_file_fails(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.json").write_text("user's")
    with pytest.raises(ValueError, match="appeared"), atomic_directory(tmp_path / "out", last=("b.json",)) as staging:
        (staging / "a.bin").write_text("a")
        (staging / "b.json").write_text("{}")
    assert os.listdir(tmp_path / "out") == ["b.json"] and (tmp_path / "out" / "b.json").read_text() == "user's"
    assert os.listdir(tmp_path) == ["out"]


# ---------------------------------------------------------------------------- qp.save
@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
def test_an_interrupted_save_leaves_nothing_and_the_rerun_succeeds(tmp_path, monkeypatch, existing):
    qmodel, out = _frozen(), tmp_path / "out"
    if existing:
        out.mkdir()
    with monkeypatch.context() as m:
        _interrupt_json(m)
        with pytest.raises(KeyboardInterrupt):
            qp.save(qmodel, out)
    assert os.listdir(tmp_path) == (["out"] if existing else [])  # no temporary beside it either
    assert not out.exists() or os.listdir(out) == []
    qp.save(qmodel, out)
    assert sorted(os.listdir(out)) == ["model.safetensors", "quantpilot.json"]
    assert os.listdir(tmp_path) == ["out"]
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    x = torch.randn(3, 8)
    assert torch.equal(qp.load(net, out)(x), qmodel(x))


def test_the_weights_are_written_in_a_temporary_folder_beside_the_output(tmp_path, monkeypatch):
    seen = []
    write = persistence._write_files

    def spy(model, recipe, directory):
        write(model, recipe, directory)
        seen.append((directory, sorted(os.listdir(directory))))
        raise KeyboardInterrupt  # killed once everything is written, before it is published

    monkeypatch.setattr(persistence, "_write_files", spy)
    (tmp_path / "out").mkdir()
    with pytest.raises(KeyboardInterrupt):
        qp.save(_frozen(), tmp_path / "out")
    [(staging, names)] = seen
    assert staging.parent == tmp_path and staging.name.startswith(".out.tmp-")
    assert names == ["model.safetensors", "quantpilot.json"]
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "existing-folder"])
def test_both_saved_files_get_the_same_umask_mode(tmp_path, existing):
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "README").write_text("user's")  # other files may live there; they are left alone
    qp.save(_frozen(), out)
    expected = 0o666 & ~_umask()
    assert {_mode(out / name) for name in ("model.safetensors", "quantpilot.json")} == {expected}
    if not existing:
        assert _mode(out) == 0o777 & ~_umask()
    assert sorted(os.listdir(out)) == sorted(["model.safetensors", "quantpilot.json"] + existing * ["README"])
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("name", ["quantpilot.json", "model.safetensors"])
def test_save_refuses_a_dangling_symlink_in_the_output_folder(tmp_path, name):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / name).symlink_to(outside / "target")
    with pytest.raises(ValueError, match="symbolic link"):
        qp.save(_frozen(), out)
    assert os.listdir(outside) == [] and os.listdir(out) == [name]
    assert sorted(os.listdir(tmp_path)) == ["out", "outside"]


def test_save_refuses_a_dangling_symlink_as_the_output_folder(tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="symbolic link"):
        qp.save(_frozen(), tmp_path / "out")
    assert os.listdir(tmp_path) == ["out"]


def test_save_refuses_existing_files_and_leaves_them_untouched(tmp_path):
    out = qp.save(_frozen(), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match="already exists"):
        qp.save(_frozen(), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert os.listdir(tmp_path) == ["out"]


# ---------------------------------------------------------------------------- recipes and ONNX
@pytest.mark.parametrize("method", ["to_yaml", "to_json"])
def test_a_recipe_is_not_written_through_a_dangling_symlink(tmp_path, method):
    (tmp_path / "outside").mkdir()
    (tmp_path / "r").symlink_to(tmp_path / "outside" / "r")
    with pytest.raises(ValueError, match="symbolic link"):
        getattr(qp.Recipe(), method)(tmp_path / "r")
    assert os.listdir(tmp_path / "outside") == [] and sorted(os.listdir(tmp_path)) == ["outside", "r"]


def test_a_recipe_write_is_atomic(tmp_path, monkeypatch):
    path = qp.Recipe().to_json(tmp_path / "r.json")
    assert json.loads(path.read_text()) == qp.Recipe().to_dict() and os.listdir(tmp_path) == ["r.json"]
    assert _mode(path) == 0o666 & ~_umask()
    monkeypatch.setattr("pathlib.Path.write_text", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        qp.Recipe().to_yaml(tmp_path / "r.yaml")
    assert os.listdir(tmp_path) == ["r.json"]


@pytest.fixture
def frozen_static():
    qm = qp.quantize(torch.nn.Sequential(torch.nn.Linear(8, 4)), "int8-static")
    with qp.calibrate(qm):
        qm(torch.randn(16, 8))
    return qp.freeze(qm)


def _fake_trace(monkeypatch):
    """A tiny valid graph instead of the (seconds-long) trace: only the file writing is under test."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from quantpilot.export import onnx as export_onnx_module

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    program = type("Program", (), {"model_proto": proto})()
    monkeypatch.setattr(export_onnx_module, "_export_program", lambda *a, **k: program)
    return onnx


def test_onnx_export_refuses_a_dangling_symlink_before_tracing(tmp_path, frozen_static, monkeypatch):
    _fake_trace(monkeypatch)
    (tmp_path / "link.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(ValueError, match="symbolic link"):
        qp.export_onnx(frozen_static, torch.randn(2, 8), tmp_path / "link.onnx")
    assert os.listdir(tmp_path) == ["link.onnx"]


def test_onnx_export_appears_whole_with_the_umask_mode_or_not_at_all(tmp_path, frozen_static, monkeypatch):
    onnx = _fake_trace(monkeypatch)
    path = qp.export_onnx(frozen_static, torch.randn(2, 8), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"] and _mode(path) == 0o666 & ~_umask()

    def invalid(path, *args, **kwargs):
        raise onnx.checker.ValidationError("bad graph")

    monkeypatch.setattr(onnx.checker, "check_model", invalid)
    with pytest.raises(onnx.checker.ValidationError):
        qp.export_onnx(frozen_static, torch.randn(2, 8), tmp_path / "bad.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"]
