"""qp.autoquantize on small models with target "torch" and a fake timer (deterministic speed), and a metric
that reads the model's structure (deterministic accuracy): which candidate wins, and why."""

import json

import pytest
import torch

import quantpilot as qp
from quantpilot.auto.targets import Bf16Model
from quantpilot.nn import QuantLinear


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    ).eval()


CALIB = [torch.randn(8, 16, generator=torch.Generator().manual_seed(i)) for i in range(6)]


def fake_timer(latencies):
    """Latency by name prefix: the longest matching prefix wins; each float unit costs 0.5 ms more."""

    def timer(fns):
        out = {}
        for name in fns:
            prefix = max((p for p in latencies if name.startswith(p)), key=len)
            floats = int(name.split(", ")[1].split()[0]) if ", " in name else 0
            out[name] = (latencies[prefix] + 0.5 * floats) * 1e-3
        return out

    return timer


def structural_metric(float_first_layer=1.0, quantized_first_layer=0.9, bf16=1.0, any_layer=False):
    """Per-sample scores (one per row) that depend only on what the model is: bf16, and whether layer 0 (or, with
    `any_layer`, any layer) is int8."""
    calls = []

    def eval_fn(model, data):
        calls.append((model, data))
        rows = sum(b.shape[0] for b in data)
        if isinstance(model, Bf16Model):
            value = bf16
        elif any_layer and any(isinstance(m, QuantLinear) for m in model.modules()):
            value = quantized_first_layer
        elif isinstance(model, torch.nn.Sequential) and isinstance(model[0], QuantLinear):
            value = quantized_first_layer
        else:
            value = float_first_layer
        return torch.full((rows,), value) + torch.linspace(-1e-3, 1e-3, rows)

    eval_fn.calls = calls
    return eval_fn


FAST_INT8 = {"fp32": 10, "bf16": 5, "dynamic": 4, "static": 2}


def test_fastest_candidate_within_budget_is_chosen_and_checked_on_holdout():
    eval_fn = structural_metric(quantized_first_layer=0.999)
    result = qp.autoquantize(_mlp(), CALIB, eval_fn, budget=0.01, target="torch", timer=fake_timer(FAST_INT8))
    report = result.report
    assert report["chosen"].startswith("static") and result.recipe is not None
    assert qp.is_frozen(result.model)
    chosen = next(c for c in report["candidates"] if c["chosen"])
    assert chosen["within_budget"] and chosen["holdout_metric"] is not None
    assert chosen["speedup_vs_bf16"] == pytest.approx(2.5) and chosen["speedup_vs_fp32"] == pytest.approx(5.0)
    assert report["deployed"]["reloaded_metric"] == pytest.approx(chosen["holdout_metric"])
    # The chosen family met the budget with every layer int8: no float fallback was tried.
    assert not any("float" in c["name"] and c["family"] == "static" for c in report["candidates"])


def test_bf16_is_the_answer_when_no_int8_candidate_is_faster_and_nothing_quantized_is_scored():
    eval_fn = structural_metric(quantized_first_layer=0.999)
    slow = {"fp32": 10, "bf16": 2, "dynamic": 4, "static": 3}
    result = qp.autoquantize(_mlp(), CALIB, eval_fn, budget=0.01, target="torch", timer=fake_timer(slow))
    report = result.report
    assert report["chosen"] == "bf16" and result.recipe is None
    assert "no quantization" in report["verdict"]
    # fp32 search + holdout, bf16 search + holdout, the deployed artifact: no quantized model was ever scored.
    assert report["evaluations"] == len(eval_fn.calls) == 5
    assert not any(isinstance(m, torch.nn.Sequential) and isinstance(m[0], QuantLinear) for m, _ in eval_fn.calls)
    assert all(c["metric"] is None for c in report["candidates"] if c["kind"] == "quantized")


def test_a_quantized_candidate_slower_than_bf16_is_never_chosen_even_within_budget():
    eval_fn = structural_metric(quantized_first_layer=1.0)
    final = {"fp32": 10, "bf16": 5, "dynamic": 6, "static": 6}
    timings = iter([FAST_INT8, final])

    def timer(fns):  # the probe sees int8 fast; the final, side-by-side timing sees it slower than bf16
        return fake_timer(next(timings))(fns)

    report = qp.autoquantize(_mlp(), CALIB, eval_fn, budget=0.01, target="torch", timer=timer).report
    assert report["chosen"] == "bf16"
    quantized = [c for c in report["candidates"] if c["kind"] == "quantized"]
    assert any(c["within_budget"] and "never chosen" in c["why"] for c in quantized)


def test_float_fallback_rescues_a_harmful_layer_and_costs_its_speed():
    # Layer 0 quantized loses 5 %: only leaving it in float meets a 1 % budget. bf16 also misses (0.9).
    eval_fn = structural_metric(quantized_first_layer=0.95, bf16=0.9)
    net = _mlp()
    with torch.no_grad():
        net[0].weight[:, 0] *= 50  # make layer 0 the worst by output error, so the proxy ranks it first
    result = qp.autoquantize(net, CALIB, eval_fn, budget=0.01, target="torch", timer=fake_timer(FAST_INT8))
    report = result.report
    assert report["chosen"] == "static, 1 unit float", report["trail"]
    assert not isinstance(result.model[0], QuantLinear)
    assert report["sensitivity"] and report["sensitivity"][0]["layer"] == "0"
    assert report["evaluations"] <= 40


def test_holdout_is_never_scored_by_the_search():
    holdout = [torch.randn(8, 16) for _ in range(3)]
    eval_fn = structural_metric(quantized_first_layer=0.999)
    report = qp.autoquantize(
        _mlp(), CALIB, eval_fn, budget=0.01, target="torch", holdout=holdout, timer=fake_timer(FAST_INT8)
    ).report
    with_holdout = [i for i, (_, data) in enumerate(eval_fn.calls) if any(x is holdout[0] for x in data)]
    labels = [entry["what"] for entry in report["evaluation_log"]]
    assert [labels[i] for i in with_holdout] == [label for label in labels if label.endswith("(holdout)")]
    assert all(not any(x is h for h in holdout for x in data) for _, data in eval_fn.calls if len(data) == len(CALIB))
    assert report["data"] == {"calibration_items": 6, "search_items": 6, "holdout_items": 3}


def test_without_holdout_every_second_item_is_held_out_of_calibration_and_search():
    eval_fn = structural_metric(quantized_first_layer=0.999)
    report = qp.autoquantize(_mlp(), CALIB, eval_fn, budget=0.01, target="torch", timer=fake_timer(FAST_INT8)).report
    assert report["data"] == {"calibration_items": 3, "search_items": 3, "holdout_items": 3}
    held = {id(CALIB[i]) for i in (1, 3, 5)}
    for (_, data), entry in zip(eval_fn.calls, report["evaluation_log"], strict=True):
        assert entry["what"].endswith("(holdout)") == all(id(x) in held for x in data)


def test_a_float_metric_gives_no_interval_and_the_verdict_says_so():
    result = qp.autoquantize(_mlp(), CALIB, lambda m, d: 1.0, budget=0.01, target="torch", timer=fake_timer(FAST_INT8))
    assert result.report["float"]["interval"] is None
    assert "no confidence interval" in result.report["verdict"]


def test_lower_is_better_and_absolute_budget():
    eval_fn = structural_metric(float_first_layer=0.10, quantized_first_layer=0.105, bf16=0.2)
    result = qp.autoquantize(_mlp(), CALIB, eval_fn, budget=0.01, target="torch", lower_is_better=True,
                             absolute=True, timer=fake_timer(FAST_INT8))  # fmt: skip
    assert result.report["chosen"].startswith("static")
    assert result.report["budget"] == pytest.approx(
        {"value": 0.01, "absolute": True, "lower_is_better": True, "allowed_loss": 0.01, "allowed_loss_holdout": 0.01}
    )


def test_qat_is_tried_when_post_training_misses_the_budget():
    eval_fn = structural_metric(quantized_first_layer=0.5, bf16=0.5, any_layer=True)
    train = [(b, torch.zeros(b.shape[0], 4)) for b in CALIB[:2]]
    loss = torch.nn.functional.mse_loss
    report = qp.autoquantize(_mlp(), CALIB, eval_fn, budget=0.01, target="torch", timer=fake_timer(FAST_INT8),
                             train_data=train, loss_fn=loss, max_evaluations=8).report  # fmt: skip
    assert any(c["name"] == "qat" and c["metric"] == pytest.approx(0.5, abs=1e-2) for c in report["candidates"])
    assert report["chosen"] == "fp32" and report["evaluations"] <= 8


def test_max_evaluations_is_never_exceeded():
    eval_fn = structural_metric(quantized_first_layer=0.5, bf16=0.5)
    report = qp.autoquantize(_mlp(), CALIB, eval_fn, budget=0.01, target="torch", timer=fake_timer(FAST_INT8),
                             max_evaluations=7).report  # fmt: skip
    assert report["evaluations"] == len(eval_fn.calls) <= 7
    assert report["chosen"] == "fp32"


@pytest.mark.parametrize(
    "kwargs,message",
    [({"target": "tensorrt"}, "target="), ({"budget": -0.1}, "budget"), ({"budget": "1%"}, "budget"),
     ({"max_evaluations": 2}, "max_evaluations"), ({"train_data": [1]}, "loss_fn"), ({"holdout": []}, "holdout")],
    ids=["target", "negative budget", "string budget", "few evaluations", "train without loss", "empty holdout"],
)  # fmt: skip
def test_user_mistakes_are_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        qp.autoquantize(_mlp(), CALIB, lambda m, d: 1.0, **kwargs)
    assert "\n" not in str(err.value)


def test_empty_calibration_data_is_refused():
    with pytest.raises(ValueError, match="calib_data is empty"):
        qp.autoquantize(_mlp(), [], lambda m, d: 1.0, target="torch")


def test_save_writes_the_layout_atomically_and_refuses_a_non_empty_folder(tmp_path):
    eval_fn = structural_metric(quantized_first_layer=0.999)
    result = qp.autoquantize(_mlp(), CALIB, eval_fn, budget=0.01, target="torch", timer=fake_timer(FAST_INT8))
    json.dumps(result.report, allow_nan=False)  # plain JSON, no NaN/Infinity
    assert result.report["histograms"] and result.report["sensitivity"][0]["layer"] in {"0", "2", "4"}
    out = result.save(tmp_path / "out")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["deploy", "model", "recipe.yaml", "report.html", "report.json"]
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert json.loads((out / "report.json").read_text())["chosen"] == result.report["chosen"]
    assert qp.Recipe.from_yaml(out / "recipe.yaml") == result.recipe
    reloaded = qp.load(_mlp(), out / "model")
    assert torch.equal(reloaded(CALIB[0]), result.model(CALIB[0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left beside it
    with pytest.raises(ValueError, match="not an empty folder"):
        result.save(out)


def test_a_candidate_the_engine_cannot_run_is_dropped_with_the_reason(monkeypatch):
    from quantpilot.auto import targets

    real = targets.runner

    def runner(target, kind, model, example):
        if kind == "quantized":
            raise RuntimeError("unsupported op QuantizeLinear\nsecond line")
        return real(target, kind, model, example)

    monkeypatch.setattr(targets, "runner", runner)
    calling = fake_timer(FAST_INT8)

    def timer(fns):  # a timer that really calls every function once (a failing one records why)
        for fn in fns.values():
            fn()
        return calling(fns)

    report = qp.autoquantize(_mlp(), CALIB, structural_metric(0.999), budget=0.01, target="torch", timer=timer).report
    assert report["chosen"] == "bf16"
    dropped = [t for t in report["trail"] if t["decision"] == "not deployable"]
    assert dropped and all(t["why"] == "cannot run on torch: unsupported op QuantizeLinear" for t in dropped)
