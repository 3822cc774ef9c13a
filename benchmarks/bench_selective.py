"""Naive vs hybrid vs selective int8, per model: task metric, float layers, speed, size (issue 6).

For each model, one run measures side by side:

* FP32 and bf16, eager PyTorch and on the engine (bf16 is the honest baseline, see DESIGN.md);
* naive: every layer int8 with one calibrator (the int8-static preset) plus the functional ops the model
  has (residual adds for the CNNs, attention matmuls for MiniLM): "all int8" as a user would do it, with
  the same ops the selective variant quantizes, so that the speed comparison is between equals;
* hybrid: `qp.select(..., strategy="hybrid")` from naive: the sensitivity-chosen layers left in float;
* selective: `qp.select(..., strategy="selective")` from naive: int8-preserving fixes first (per-layer
  calibrators by output MSE, SmoothQuant, per-layer calibrators by the task metric), float layers last.

All variants are frozen from one calibration pass (`CalibrationStatistics`), except a SmoothQuant one,
which is built as its recipe's note says (`qp.algorithms.smoothquant(model, calib, alpha, recipe)`).

Columns: task metric and its loss vs FP32 (in % of FP32), in PyTorch (fake quantization) and computed
from the engine's own outputs; layers in float; median latency of one batch on the engine (OpenVINO when
`quantpilot.engines` has it and the export works, else the PyTorch fake-quant engine, and the table says
which); speed-up vs FP32 and vs bf16 on the same engine in the same run; "kept %": the share of naive's
speed-up over FP32 a variant keeps, (x - 1) / (x_naive - 1); size on disk. Latencies are medians of
interleaved runs (`quantpilot.timing.interleaved_latency`; a tiny model's call is repeated to about 20 ms
per sample) on a CPU shared with other work: read ratios, not absolute times. Per model the sensitivity bar
chart (PNG) and the per-layer error table (CSV) are written too, and everything goes to
`<out>/bench_selective.json`.

Models and metrics: the digits CNN and a project ResNet (both trained here on scikit-learn digits'
training split less 300 validation images; accuracy on the test split), EfficientNet-Lite0 (bundled
weights; top-1 on 400 labelled ImageNet sample photos, the other 100 calibrate), all-MiniLM-L6-v2 (embedding
cosine with FP32 on 160 held-out sentences, retrieval agreement beside it). The search (sweep and select)
never sees the reported data; it scores variants on: the 300 validation images (digits, ResNet); top-1
on two views (as is, mirrored; `--views 4` adds zoomed ones) of the 100 calibration photos (EfficientNet);
the embedding cosine on 64 calibration-pool sentences calibration did not use (MiniLM). It aims at
`--search-budget` (0.4 %), inside the 0.5 % target, as a margin for the difference between the two
samples. The sweep is timed end to end (calibration, top_k ranking, evaluations), wall and CPU seconds;
`--sweep-only` stops after it.

Targets: selective within 0.5 % of FP32 on every model while keeping >= 90 % of naive's speed-up.

Run: make bench-selective   (or .venv/bin/python benchmarks/bench_selective.py --models digits,resnet;
     on a busy machine --iters 10; the MiniLM sweep alone: --models minilm --sweep-only)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import quantpilot as qp  # noqa: E402
from quantpilot.evaluate import size_on_disk  # noqa: E402
from quantpilot.selection import smoothquant_alpha, with_functional_ops  # noqa: E402
from quantpilot.timing import interleaved_latency  # noqa: E402

# The ONNX exporter logs a version-conversion traceback per export that it then recovers from; keep the table readable.
logging.getLogger("onnxscript").setLevel(logging.ERROR)
logging.getLogger("torch.onnx").setLevel(logging.ERROR)

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
BUDGET = 0.005
# The search scores variants on other data than the reported metric (a validation split, unused
# calibration-pool sentences, views of the calibration photos); it aims 20 % inside the budget so that
# the gap between the two samples does not push the reported loss over it.
SEARCH_BUDGET = 0.004
VALIDATION = 300


def cpu_summary() -> dict[str, Any]:
    """The CPU model name and which int8/bf16 instruction sets it has (read from /proc/cpuinfo)."""
    name, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"model": name, "cores": os.cpu_count(), "isa": {f: f in flags for f in ISA_FLAGS}}


# ----------------------------------------------------------------------------------------- models
def _train_classifier(model: nn.Module, splits, epochs: int, seed: int = 0) -> nn.Module:
    """SGD with momentum and cosine decay on the digits training split (ResNet; the digits CNN has its own)."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    steps = epochs * ((len(splits.train_y) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(splits.train_y))
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(splits.train_x[idx]), splits.train_y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def digits_task(kind: str, quick: bool) -> dict[str, Any]:
    from quantpilot_testbed.digits_cnn import DigitsSplits, accuracy, digits_splits, train_digits_cnn
    from quantpilot_testbed.resnet import ResNet

    splits = digits_splits(seed=0)
    # 300 training images are held back from training as the search's validation split: select never
    # scores variants on the test split the table reports (that would bias the reported accuracy up).
    val_x, val_y = splits.train_x[:VALIDATION], splits.train_y[:VALIDATION]
    train = DigitsSplits(splits.train_x[VALIDATION:], splits.train_y[VALIDATION:], splits.test_x, splits.test_y)
    epochs = 8 if quick else 30
    if kind == "digits":
        model = train_digits_cnn(train, epochs=epochs, seed=0)
    else:
        model = _train_classifier(
            ResNet(in_channels=1, num_classes=10, widths=(16, 32), blocks_per_stage=1), train, epochs
        )
    return {
        "model": qp.fold_batchnorm(model),
        "calib": [train.train_x[i : i + 128] for i in range(0, 512, 128)],
        "eval_fn": lambda m: accuracy(m, splits.test_x, splits.test_y),
        "search_fn": lambda m: accuracy(m, val_x, val_y),
        "metric": f"accuracy on the {len(splits.test_y)} test images",
        "search_metric": f"accuracy on {VALIDATION} validation images held out of training",
        "example": splits.test_x,
        "top_k": None,
    }


def _views(image) -> list:
    """Views of a photo for the search: as is and mirrored (the central 80 %, zoomed in, and its mirror too
    with `--views 4`)."""
    from PIL import ImageOps

    w, h = image.size
    zoom = image.crop((round(0.1 * w), round(0.1 * h), round(0.9 * w), round(0.9 * h)))
    return [image, ImageOps.mirror(image), zoom, ImageOps.mirror(zoom)]


def efficientnet_task(quick: bool, views: int = 2) -> dict[str, Any]:
    from PIL import Image

    from quantpilot.models import load
    from quantpilot_testbed import imagenet_samples as samples

    model, prep = load("efficientnet-lite0")
    paths, labels = samples.load_samples()
    calibration, evaluation = samples.split_calibration(paths, labels, n_calibration=100)
    if quick:
        evaluation = samples.Subset(evaluation.paths[::8], evaluation.labels[::8])
    photos = [Image.open(p).convert("RGB") for p in calibration.paths]
    images = [prep(photo) for photo in photos]
    calib = [torch.cat(images[i : i + 25]) for i in range(0, len(images), 25)]
    # Decoded once: every evaluation then costs only the forward passes.
    held_out = torch.cat([prep(Image.open(p).convert("RGB")) for p in evaluation.paths])
    labels = torch.tensor(evaluation.labels)

    def top1(m, inputs, targets) -> float:
        with torch.no_grad():
            hits = sum(
                int((m(x).argmax(1) == y).sum()) for x, y in zip(inputs.split(50), targets.split(50), strict=True)
            )
        return hits / len(targets)

    # The search (sweep and select) scores variants by the task metric itself, top-1, on views of each
    # calibration photo (labels known; mirrored, zoomed): it never sees the 400 evaluation photos, so the
    # reported top-1 stays unbiased, and 2 views of 100 photos move the metric in 0.5 % steps where the photos
    # alone would move it in 1 % steps. (4 views halve the step again but double the cost of every search
    # evaluation: about 90 s of CPU each on this machine.)
    search_inputs = torch.cat([prep(view) for photo in photos for view in _views(photo)[:views]])
    search_labels = torch.tensor(calibration.labels).repeat_interleave(views)
    return {
        "model": qp.fold_batchnorm(model),
        "calib": calib,
        "eval_fn": lambda m: top1(m, held_out, labels),
        "search_fn": lambda m: top1(m, search_inputs, search_labels),
        "metric": f"top-1 on {len(evaluation.paths)} photos",
        "search_metric": f"top-1 on {views} views of each of the {len(images)} calibration photos",
        "example": torch.cat(images[:8]),
        "top_k": 4 if quick else 6,
    }


def minilm_task(quick: bool) -> dict[str, Any]:
    from quantpilot.models import load
    from quantpilot_testbed import datasets
    from quantpilot_testbed.sentence_embedding import embed, retrieval_agreement, token_batches

    model, tok = load("minilm")

    def by_length(sentences):
        # Batches of similar lengths carry little padding: about half the tokens of the unsorted order,
        # and padding positions no longer feed the activation statistics.
        return sorted(sentences, key=lambda s: len(tok(s)["input_ids"]))

    pool = datasets.sentences("calibration")
    n_calib = 64 if quick else 128
    calib = list(token_batches(tok, by_length(pool[:n_calib]), batch_size=32))
    held_out = by_length(datasets.sentences("eval")[: 64 if quick else 160])
    reference = embed(model, tok, held_out)
    # The search scores variants on calibration-pool sentences that calibration did not use (64, sorted):
    # the float reference embeddings are computed once, and the reported metrics stay on unseen sentences.
    search = by_length(pool[n_calib : n_calib + 64])
    search_reference = embed(model, tok, search)

    def eval_fn(m):
        return float((embed(m, tok, held_out) * reference).sum(-1).mean())

    def search_fn(m):
        return float((embed(m, tok, search) * search_reference).sum(-1).mean())

    def extra(m):
        return {"retrieval agreement": retrieval_agreement(reference, embed(m, tok, held_out))}

    example = next(token_batches(tok, datasets.sentences("eval")[:32], batch_size=32))

    def on_engine(runner):
        # An engine returns the first output (the hidden states); embed() reads it as the model's output.
        return lambda **batch: SimpleNamespace(last_hidden_state=runner.run(batch))

    return {
        "model": model,
        "calib": calib,
        "eval_fn": eval_fn,
        "search_fn": search_fn,
        "extra": extra,
        "on_engine": on_engine,
        "metric": f"embedding cosine vs FP32 on {len(held_out)} held-out sentences",
        "search_metric": f"embedding cosine vs FP32 on {len(search)} unused calibration-pool sentences",
        "example": dict(example),
        "top_k": 8 if quick else 12,
    }


# ------------------------------------------------------------------------------------ measurement
def _runner(model: nn.Module, example: Any, engine: str):
    if engine == "torch":
        return qp.engines.compile(model, engine="torch")
    return qp.engines.compile(model, engine=engine, example_inputs=example)


def _to_bf16(batch: Any) -> Any:
    """Float tensors of a batch cast to bf16 (token ids and masks stay integers)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(torch.bfloat16) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: _to_bf16(v) for k, v in batch.items()}
    return batch


class Bf16(nn.Module):
    """Runs a bf16 copy of a float model on float inputs (cast at the door), so `eval_fn` can score bf16 too."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = __import__("copy").deepcopy(model).to(torch.bfloat16).eval()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*[_to_bf16(a) for a in args], **{k: _to_bf16(v) for k, v in kwargs.items()})
        return out.float() if isinstance(out, torch.Tensor) else out


class OnEngine(nn.Module):
    """A compiled engine model behind the `nn.Module` call an `eval_fn` makes (eval()/train() are no-ops)."""

    def __init__(self, runner: Any) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.runner(*args, **kwargs)


def pick_engine(models: list[nn.Module], example: Any, wanted: str) -> str:
    """`wanted` if it is registered and runs every model given; else "torch" (said in the table)."""
    try:
        for model in models:
            _runner(model, example, wanted).run(example)
        return wanted
    except Exception as err:  # noqa: BLE001 - any failure means "this engine is not usable here"
        print(f"  engine {wanted!r} unavailable ({type(err).__name__}: {str(err)[:120]}); timing with 'torch'")
        return "torch"


def _repeats(fn, target_s: float = 0.02) -> int:
    """How many calls make one timed sample of about `target_s` (tiny models run in microseconds)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, math.ceil(target_s / max(time.perf_counter() - t0, 1e-6)))


def bench_model(
    name: str,
    task: dict[str, Any],
    out: Path,
    engine: str,
    iters: int,
    sweep_only: bool = False,
    search_budget: float = SEARCH_BUDGET,
) -> dict[str, Any]:
    model, calib, eval_fn = task["model"], task["calib"], task["eval_fn"]
    search_fn = task.get("search_fn", eval_fn)  # what the sweep and select score variants with
    # Naive: every layer int8 with one calibrator, plus the functional ops the model has (residual adds,
    # attention matmuls): what a user quantizing "everything" gets, and the same ops the selective variant
    # quantizes, so that the speed comparison is between equals.
    naive_recipe, _ = with_functional_ops(model, qp.Recipe.preset("int8-static"))
    started = time.perf_counter()
    # The sweep as a user runs it (leave-one-out, the ranking select uses), timed end to end: one calibration
    # pass (keeping layer inputs for the calibrator choice), the layer_errors ranking for top_k, the two
    # reference metrics and one evaluation per swept layer. Wall and CPU time both: the CPU is shared, and
    # CPU seconds are what the sweep costs.
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    stats = qp.analysis.CalibrationStatistics(model, naive_recipe, calib, keep_inputs=True)
    sens = qp.analysis.sensitivity(
        model, naive_recipe, calib, search_fn, mode="leave-one-out", top_k=task["top_k"], statistics=stats
    )
    sweep = {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "layers_swept": len(sens.rows),
        "top_k": task["top_k"],
        "torch_threads": torch.get_num_threads(),
        "load_average": [load_before, os.getloadavg()[0]],
    }
    print(
        f"  {name}: sensitivity sweep (calibration + ranking + {len(sens.rows)} layers) {sweep['wall_s']:.0f} s wall, "
        f"{sweep['cpu_s']:.0f} s CPU, {torch.get_num_threads()} threads, load {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    sens.to_csv(out / f"{name}_sensitivity.csv")
    sens.plot(out / f"{name}_sensitivity.png", title=f"{name}: {task.get('search_metric', task['metric'])} lost")
    naive = stats.build(naive_recipe)
    errors = qp.analysis.layer_errors(naive, calib, float_model=model)
    errors.to_csv(out / f"{name}_layer_errors.csv")
    if sweep_only:
        return {"metric": task.get("search_metric", task["metric"]), "sensitivity_sweep": sweep}
    recipes, select_s = {}, {}
    for strategy in ("hybrid", "selective"):
        t0 = time.perf_counter()
        recipes[strategy] = qp.select(
            model, naive_recipe, calib, search_fn, search_budget, strategy=strategy, top_k=task["top_k"],
            statistics=stats,
        )  # fmt: skip
        select_s[strategy] = time.perf_counter() - t0
        recipes[strategy].to_yaml(out / f"{name}_{strategy}.yaml")
        print(f"  {name} {strategy}: {recipes[strategy].notes['select']} ({select_s[strategy]:.0f} s)", flush=True)
    # Every variant is frozen from the one calibration pass (the table compares recipes, not calibration
    # runs), except a recipe select chose SmoothQuant for: smoothed inputs have other ranges, and it is built
    # the way its note tells a user to (which also checks that the note reproduces the search's result).
    variants = {"naive": naive}
    for strategy, r in recipes.items():
        alpha = smoothquant_alpha(r)
        variants[strategy] = stats.build(r) if alpha is None else qp.selection.build(model, r, calib)
    search_s = time.perf_counter() - started
    engine = pick_engine([model, *variants.values()], task["example"], engine)
    example, bf16_example = task["example"], _to_bf16(task["example"])
    runners = {"FP32 eager": _runner(model, example, "torch")}
    runners["bf16 eager"] = qp.engines.compile(model, engine="torch", dtype="bfloat16")
    if engine != "torch":
        runners[f"FP32 {engine}"] = _runner(model, example, engine)
        runners[f"bf16 {engine}"] = qp.engines.compile(model, engine=engine, example_inputs=example, dtype="bfloat16")
    for key, qmodel in variants.items():
        runners[key] = _runner(qmodel, example, engine)
    feeds = {k: bf16_example if k == "bf16 eager" else example for k in runners}
    reps = _repeats(lambda: runners["FP32 eager"].run(example))
    calls = {k: (lambda r=r, x=feeds[k]: [r.run(x) for _ in range(reps)]) for k, r in runners.items()}
    latency = {k: v / reps for k, v in interleaved_latency(calls, 3, iters).items()}
    fp32_key = f"FP32 {engine}" if engine != "torch" else "FP32 eager"
    bf16_key = f"bf16 {engine}" if engine != "torch" else "bf16 eager"
    float_metric = eval_fn(model)
    bf16_metric = eval_fn(Bf16(model))
    on_engine = task.get("on_engine", OnEngine)
    rows = []
    for key, runner in runners.items():
        qmodel = variants.get(key)
        metric = eval_fn(qmodel) if qmodel is not None else bf16_metric if key.startswith("bf16") else float_metric
        # The deployed numbers: the same metric computed from the engine's outputs.
        engine_metric = eval_fn(on_engine(runner)) if key.endswith(engine) or qmodel is not None else None
        row = {
            "variant": key,
            "metric": metric,
            "loss_pct": 100 * (float_metric - metric) / abs(float_metric),
            "engine_metric": engine_metric,
            "engine_loss_pct": None
            if engine_metric is None
            else 100 * (float_metric - engine_metric) / abs(float_metric),
            "float_layers": None if qmodel is None else len(recipes[key].skip) if key in recipes else 0,
            "calibrator_overrides": len(recipes[key].overrides) if key in recipes else None,
            "smoothquant_alpha": smoothquant_alpha(recipes[key]) if key in recipes else None,
            "latency_ms": 1e3 * latency[key],
            "speedup_vs_fp32": latency[fp32_key] / latency[key],
            "speedup_vs_bf16": latency[bf16_key] / latency[key],
            "speedup_vs_bf16_eager": latency["bf16 eager"] / latency[key],
            "size_mb": size_on_disk(model if qmodel is None else qmodel) / 2**20,
        }
        if "extra" in task and qmodel is not None:
            row.update(task["extra"](qmodel))
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    naive_gain = by["naive"]["speedup_vs_fp32"] - 1
    for r in rows:
        # Share of naive int8's speed-up over FP32 (on the same engine) that a variant keeps.
        r["kept_pct"] = 100 * (r["speedup_vs_fp32"] - 1) / naive_gain if naive_gain > 0 else None
    selective = by["selective"]
    targets = {
        "selective within 0.5 % of FP32 (PyTorch)": selective["loss_pct"] <= 100 * BUDGET + 1e-9,
        "selective keeps >= 90 % of naive's speed-up": naive_gain <= 0 or selective["kept_pct"] >= 90,
    }
    if selective["engine_loss_pct"] is not None and engine != "torch":
        targets[f"selective within 0.5 % of FP32 (on {engine})"] = selective["engine_loss_pct"] <= 100 * BUDGET + 1e-9
    print(
        f"\n== {name}: {task['metric']} (engine {engine}; sweep {sweep['wall_s']:.0f} s wall / "
        f"{sweep['cpu_s']:.0f} s CPU, search total {search_s:.0f} s; searched on "
        f"{task.get('search_metric', 'the same metric')}, budget {search_budget:g})"
    )
    print(
        f"{'variant':<16} {'metric':>8} {'loss %':>7} {'engine':>8} {'loss %':>7} {'float':>5} {'ms':>8} "
        f"{'x FP32':>7} {'x bf16':>7} {'kept %':>7} {'MB':>7}"
    )
    for r in rows:
        fl = "-" if r["float_layers"] is None else str(r["float_layers"])
        em = "-" if r["engine_metric"] is None else f"{r['engine_metric']:.4f}"
        el = "-" if r["engine_loss_pct"] is None else f"{r['engine_loss_pct']:.2f}"
        kept = "-" if r["float_layers"] is None or r["kept_pct"] is None else f"{r['kept_pct']:.0f}"
        print(
            f"{r['variant']:<16} {r['metric']:>8.4f} {r['loss_pct']:>7.2f} {em:>8} {el:>7} {fl:>5} "
            f"{r['latency_ms']:>8.3f} {r['speedup_vs_fp32']:>7.2f} {r['speedup_vs_bf16']:>7.2f} {kept:>7} "
            f"{r['size_mb']:>7.2f}"
        )
    for label, ok in targets.items():
        print(f"  {'PASS' if ok else 'MISS'}: {label}")
    return {
        "metric": task["metric"],
        "engine": engine,
        "search_metric": task.get("search_metric", task["metric"]),
        "search_budget": search_budget,
        "sensitivity_sweep": sweep,
        "select_s": select_s,
        "search_s": search_s,
        "timing_repeats": reps,
        "rows": rows,
        "targets": targets,
        "notes": {s: r.notes.get("select", "") for s, r in recipes.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet,efficientnet,minilm")
    parser.add_argument("--out", default="bench-out/selective")
    parser.add_argument("--engine", default="openvino")
    parser.add_argument("--iters", type=int, default=30, help="timed runs per variant (fewer on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs and evaluation items (a smoke run)")
    # One torch thread by default: on the shared 2-core machine the MiniLM sweep took 24 s CPU / 71 s wall with
    # one thread against 86 s CPU / 286 s wall with two (the second thread mostly waits for a core).
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the search and eager timings")
    parser.add_argument("--top-k", type=int, default=None, help="sweep this many layers (default: per model)")
    parser.add_argument("--views", type=int, default=2, choices=(1, 2, 3, 4), help="EfficientNet search views")
    parser.add_argument("--search-budget", type=float, default=SEARCH_BUDGET, help="the budget select aims at")
    parser.add_argument("--sweep-only", action="store_true", help="time the sensitivity sweep only, then stop")
    args = parser.parse_args(argv)
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)  # a fresh folder per run: earlier results are never overwritten
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    cpu = cpu_summary()
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores), torch {torch.__version__}")
    print("ISA: " + ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in cpu["isa"].items()))
    print(f"load average {os.getloadavg()[0]:.2f}: the CPU is shared, compare ratios from this one run")
    tasks = {
        "digits": lambda: digits_task("digits", args.quick),
        "resnet": lambda: digits_task("resnet", args.quick),
        "efficientnet": lambda: efficientnet_task(args.quick, args.views),
        "minilm": lambda: minilm_task(args.quick),
    }
    results = {"cpu": cpu, "budget": BUDGET, "search_budget": args.search_budget, "quick": args.quick, "models": {}}
    for name in args.models.split(","):
        if name not in tasks:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(tasks)}")
        task = tasks[name]()
        if args.top_k is not None:
            task["top_k"] = args.top_k if args.top_k > 0 else None  # --top-k 0: every layer
        results["models"][name] = bench_model(
            name, task, out, args.engine, args.iters, args.sweep_only, args.search_budget
        )
    (out / "bench_selective.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}/")
    return results


if __name__ == "__main__":
    main()
