"""`quantpilot auto` end to end on a tiny BERT folder (target torch, fake timer), then inspect/evaluate/export/
benchmark on the folder it wrote; every user mistake is one line with exit 2 and nothing written."""

import json

import pytest

from quantpilot.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("quantpilot: error: ")


@pytest.fixture(scope="module")
def auto_out(tmp_path_factory, tiny_bert, sentences):
    """The folder `quantpilot auto` writes, and what it printed (run once for the module)."""
    import torch

    import quantpilot.auto.api

    threads = torch.get_num_threads()  # --threads sets torch's process-wide count: give it back after
    mp = pytest.MonkeyPatch()
    latency = {"fp32": 10e-3, "bf16": 5e-3, "dynamic": 4e-3}  # static int8: 2 ms, so it is the one chosen
    mp.setattr(quantpilot.auto.api, "default_timer", lambda fns: {n: latency.get(n.split()[0], 2e-3) for n in fns})
    out = tmp_path_factory.mktemp("runs") / "auto"
    calib, evals = sentences
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(io.StringIO()) as progress:
        code = main(["auto", "--model", str(tiny_bert), "--calib-data", str(calib), "--eval-data", str(evals),
                     "--calib-size", "12", "--budget", "5%", "--target", "torch", "--batch-size", "4", "--threads", "1",
                     "--out", str(out)])  # fmt: skip
    mp.undo()
    torch.set_num_threads(threads)
    assert code == 0, progress.getvalue()[-3000:]
    return out, printed.getvalue(), progress.getvalue()


def test_auto_writes_everything_and_prints_the_table(auto_out):
    out, printed, progress = auto_out
    assert {"recipe.yaml", "model", "deploy", "report.json", "report.html"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left beside it
    assert (out / "model" / "source.json").is_file() and (out / "model" / "config.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["calibration samples"] == 12 and report["data"]["eval samples"] == 16
    assert report["commands"][0].startswith("quantpilot auto --model ")
    assert "latency on torch" in printed and "vs bf16" in printed and "report: " in printed
    assert "loading" in progress.splitlines()[0]  # progress from the start, on stderr
    assert "12 calibration samples" in progress


def test_inspect_evaluate_export_benchmark_reopen_the_folder(
    auto_out, tiny_bert, sentences, capsys, tmp_path, monkeypatch
):
    import quantpilot.export

    def export_onnx(qmodel, batch, path, target="generic"):  # the real export has its own tests (8 s here)
        assert set(batch) >= {"input_ids", "attention_mask"} and target == "tensorrt"
        path.write_bytes(b"onnx")
        return path

    monkeypatch.setattr(quantpilot.export, "export_onnx", export_onnx)
    out, _, _ = auto_out
    if not (out / "model" / "quantpilot.json").is_file():
        pytest.skip("the autopilot's answer was float on this run: nothing quantized to reopen")
    code, printed, _ = _run(capsys, "inspect", out)
    assert code == 0 and "vs FP32" in printed and "encoder.layer.0" in printed
    code, printed, err = _run(capsys, "evaluate", out, "--eval-data", sentences[1], "--reference", tiny_bert)
    assert code == 0, err
    assert float(printed.split()[1]) > 0.9 and "on 16 samples" in printed
    code, printed, err = _run(
        capsys, "export", out, "--format", "onnx", "--target", "tensorrt", "--out", tmp_path / "x"
    )
    assert code == 0, err
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["model.onnx"] and "exported to" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no staging left
    code, printed, err = _run(capsys, "benchmark", out, "--engine", "torch", "--batch", "2", "--seq-len", "8",
                              "--iters", "3", "--warmup", "1")  # fmt: skip
    assert code == 0, err
    assert "p99 ms" in printed and all(row in printed for row in ("fp32", "bf16", "quantized"))


def test_interrupted_run_leaves_nothing(monkeypatch, tiny_bert, sentences, tmp_path, capsys):
    import quantpilot.auto

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantpilot.auto, "autoquantize", interrupted)
    code, _, err = _run(capsys, "auto", "--model", tiny_bert, "--calib-data", sentences[0], "--eval-data",
                        sentences[1], "--target", "torch", "--out", tmp_path / "out")  # fmt: skip
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_failure_while_saving_leaves_nothing(monkeypatch, tiny_bert, sentences, tmp_path, capsys):
    import quantpilot.auto
    import quantpilot.saved_dirs

    class Result:
        report = {"verdict": "v"}

        def save(self, out):
            (out / "model").mkdir(parents=True)
            (out / "report.json").write_text("{}")

    def no_source(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantpilot.auto, "autoquantize", lambda *a, **k: Result())
    monkeypatch.setattr(quantpilot.saved_dirs, "write_source", no_source)
    code, _, _ = _run(capsys, "auto", "--model", tiny_bert, "--calib-data", sentences[0], "--eval-data",
                      sentences[1], "--target", "torch", "--out", tmp_path / "out")  # fmt: skip
    assert code == 130 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--threads", "0"], "--threads: must be at least 1"),
        (["--calib-size", "-3"], "--calib-size: must be at least 1"),
        (["--calib-size", "999"], "--calib-size 999 is more than the 16 samples"),
        (["--budget", "abc"], "--budget 'abc'"),
        (["--budget=-1%"], "must be a finite amount >= 0"),
        (["--budget", "150%"], "less than 100%"),
        (["--budget", "1%", "--absolute"], "not a percentage"),
        (["--metric", "nope"], "use cosine, top1, perplexity or MODULE:FUNC"),
        (["--metric", "no_such_module_qp:f"], "cannot import no_such_module_qp"),
        (["--metric", "top1"], "needs labels"),
        (["--metric", "perplexity"], "needs a causal language model"),
        (["--target", "tpu"], "invalid choice"),
    ],
    ids=["threads-0", "calib-negative", "calib-oversized", "budget-abc", "budget-negative", "budget-100",
         "absolute-percent", "metric-unknown", "metric-import", "top1-no-labels", "perplexity-encoder", "target"],
)  # fmt: skip
def test_mistakes_are_one_line_exit_2(extra, needle, tiny_bert, sentences, tmp_path, capsys):
    code, _, err = _run(capsys, "auto", "--model", tiny_bert, "--calib-data", sentences[0], "--eval-data",
                        sentences[1], "--out", tmp_path / "out", *extra)  # fmt: skip
    assert code == 2 and _one_line(err) and needle in err, err
    assert list(tmp_path.iterdir()) == []


def test_path_mistakes_are_one_line_exit_2(tmp_path, tiny_bert, sentences, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "ok"}\n{not json\n')
    base = ["auto", "--calib-data", sentences[0], "--eval-data", sentences[1]]
    cases = [
        (base + ["--model", tiny_bert, "--out", a_file], "is an existing file"),
        (base + ["--model", no_weights, "--out", tmp_path / "o"], "no weights"),
        (["auto", "--model", tiny_bert, "--calib-data", tmp_path / "none.txt", "--out", tmp_path / "o"], "not exist"),
        (["auto", "--model", tiny_bert, "--calib-data", bad_jsonl, "--out", tmp_path / "o"], "line 2: not valid JSON"),
        (["inspect", tmp_path], "holds no quantpilot model"),
        (["export", tmp_path, "--format", "onnx", "--out", tmp_path / "x"], "holds no quantpilot model"),
        (["benchmark", tmp_path / "nowhere", "--engine", "torch-int8"], "runs a quantized model"),
        (["evaluate", tmp_path, "--eval-data", tmp_path / "missing.txt"], "does not exist"),
    ]  # fmt: skip
    for argv, needle in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2 and _one_line(err) and needle in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "file.txt", "no-weights"]


def test_version(capsys):
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("quantpilot ")


def test_a_quantize_folder_reopens_alone(tiny_bert, sentences, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this process's thread count
    out = tmp_path / "q"
    argv = ["quantize", "--model", tiny_bert, "--recipe", "int8-dynamic", "--data", sentences[0], "--calib-size", "8"]
    code, _, err = _run(capsys, *argv, "--out", out, "--threads", "1")
    assert code == 0, err
    assert json.loads((out / "source.json").read_text())["auto_class"] == "AutoModel"
    code, printed, err = _run(capsys, "inspect", out)
    assert code == 0 and "text model (AutoModel)" in printed, err
