"""bench-llm: LLM weight quantization methods on the WikiText-2 testbed GPT-2, in one table.

Rows: FP32, bf16, RTN W8A16, RTN W4A16 g128, AWQ W4 g128, GPTQ W4 g128, RTN W4 g128 with the token
table (and its tied head) packed W4 g32 too, SmoothQuant W8A8, LLM.int8(), torchao int8 / int4
weight-only, optimum-quanto int8 / int4 weight-only. Columns: perplexity on test.txt
(non-overlapping 256-token windows, capped by --windows), mean per-token KL divergence of the
next-token distribution from FP32's (first --kl-windows windows, in 1e-3 nats), size on disk,
weight bytes resident, peak RSS of a process that only loads and serves the variant, prefill and
decode tokens/s.

Stages, each variant in its own subprocess so memory peaks never mix:
  1. build: quantize from the float testbed (calibration: --calib windows of valid.txt), save,
     measure perplexity as deployed;
  2. serve: a fresh process loads the saved variant, runs prefill + decode once, reports peak RSS;
  3. time: one process loads every variant and times prefill (1 x --prefill tokens) and greedy
     decode with the KV cache (--decode new tokens), interleaved round by round so the shared
     machine's drift hits all rows alike; medians and ratios to bf16.

Quantized weight-only rows are timed on the torch-int8 engine (bf16 activations, PyTorch's packed
int8 / int4 kernels for decode, dequantize + bf16 matmul for prefill; the rest of those models in
bf16 like the bf16 row); their perplexity is that of the stored weights with float32 activations.
W8A8 and LLM.int8() rows run their own layers in float32.

Quanto rows convert GPT-2's Conv1D layers to nn.Linear first (quanto only quantizes nn.Linear).

Usage: python benchmarks/bench_llm.py [--windows 100] [--calib 128] [--threads 1] [--out bench-out]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from quantpilot.machine import cpu_header, cpu_report  # noqa: E402

VARIANTS = [
    "FP32",
    "bf16",
    "RTN W8A16",
    "RTN W4A16 g128",
    "AWQ W4 g128",
    "GPTQ W4 g128",
    "RTN W4A16 g128 + table W4 g32",
    "SmoothQuant W8A8",
    "LLM.int8()",
    "torchao int8 weight-only",
    "torchao int4 weight-only g128 (Intx)",
    "quanto int8 weight-only",
    "quanto int4 weight-only g128",
]
WEIGHT_ONLY_ROWS = {"RTN W8A16", "RTN W4A16 g128", "AWQ W4 g128", "GPTQ W4 g128", "RTN W4A16 g128 + table W4 g32"}
QUANTPILOT_ROWS = WEIGHT_ONLY_ROWS | {"SmoothQuant W8A8", "LLM.int8()"}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


# --------------------------------------------------------------------------- building variants
def build_variant(name: str, model: torch.nn.Module, calib: list[dict]) -> torch.nn.Module:
    """The variant as a model object (quantpilot rows frozen, ready for qp.save)."""
    import quantpilot as qp

    algorithms = qp.algorithms
    if name == "FP32":
        return model
    if name == "bf16":
        return model.to(torch.bfloat16)
    if name == "RTN W8A16":
        return algorithms.rtn(model, bits=8, group_size=None)
    if name == "RTN W4A16 g128":
        return algorithms.rtn(model, bits=4, group_size=128)
    if name == "RTN W4A16 g128 + table W4 g32":
        # The token table (40 % of this small model's weights) and the head tied to it, packed too, in
        # groups of 32: the head decides every logit, and g32 costs +0.09 % perplexity where g128 costs
        # +1.4 % (measured on the testbed); the 256x256 position table stays float.
        linear = algorithms.rtn(model, bits=4, group_size=128)
        return algorithms.quantize_embeddings(linear, bits=4, group_size=32, skip=("transformer.wpe",))
    if name == "GPTQ W4 g128":
        return algorithms.gptq(model, calib, bits=4, group_size=128)
    if name in ("AWQ W4 g128", "LLM.int8()"):
        fn = getattr(algorithms, "awq" if name.startswith("AWQ") else "llm_int8", None)
        if fn is None:
            raise RuntimeError("not available: quantpilot.algorithms has no such function yet")
        return fn(model, calib, bits=4, group_size=128) if name.startswith("AWQ") else fn(model, threshold=6.0)
    if name == "SmoothQuant W8A8":
        return algorithms.smoothquant(model, calib, alpha=0.5)
    if name.startswith("torchao"):
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        if "int8" in name:
            model = model.to(torch.bfloat16)
            quantize_(model, Int8WeightOnlyConfig())
        else:
            # torchao 0.18's Int4WeightOnlyConfig packs only for GPU kernels (plain / preshuffled /
            # tile_packed_to_4d); its CPU int4 weight-only path is IntxWeightOnlyConfig, whose default
            # layout keeps int4 values unpacked in int8.
            from torchao.quantization import IntxWeightOnlyConfig
            from torchao.quantization.granularity import PerGroup

            model = model.to(torch.bfloat16)
            quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(128)))
        return model
    if name.startswith("quanto"):
        from optimum.quanto import freeze, qint4, qint8, quantize

        # quanto quantizes nn.Linear only; GPT-2's transformers Conv1D layers (weight stored transposed)
        # become equivalent nn.Linear layers first, or quanto would leave every block in float.
        model = _conv1d_as_linear(model).to(torch.bfloat16)
        quantize(model, weights=qint8 if "int8" in name else qint4, exclude=["lm_head"])
        freeze(model)
        return model
    raise ValueError(f"unknown variant {name!r}")


def _conv1d_as_linear(model: torch.nn.Module) -> torch.nn.Module:
    for name, m in list(model.named_modules()):
        if type(m).__name__ == "Conv1D":
            linear = torch.nn.Linear(m.weight.shape[0], m.weight.shape[1])
            with torch.no_grad():
                linear.weight.copy_(m.weight.t())
                linear.bias.copy_(m.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


def save_variant(name: str, model: torch.nn.Module, directory: Path) -> None:
    import safetensors.torch

    import quantpilot as qp

    directory.mkdir(parents=True, exist_ok=True)
    if name in QUANTPILOT_ROWS:
        qp.save(model, directory)
    elif name.startswith(("torchao", "quanto")):
        # torchao's and quanto's tensor subclasses serialise with torch.save (what they document); size only.
        torch.save(model.state_dict(), directory / "model.pt")
    else:
        safetensors.torch.save_model(model, str(directory / "model.safetensors"))


def deployable(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """What serves requests: weight-only rows on the torch-int8 engine with the rest in bf16."""
    import quantpilot as qp
    from quantpilot.nn.packed import PackedWeight, WeightOnlyEmbedding
    from quantpilot.nn.weight_only_kernels import WeightOnlyKernelLinear

    if name in WEIGHT_ONLY_ROWS:
        runner = qp.engines.compile(model, engine="torch-int8")
        served = runner.model
        for m in served.modules():
            if isinstance(m, WeightOnlyEmbedding):
                m.output_dtype = torch.bfloat16  # its rows feed the bf16 blocks
            if isinstance(m, WeightOnlyKernelLinear | PackedWeight):
                continue  # keep their exact qparams; they compute in the activations' dtype
            for key, t in list(m._parameters.items()) + list(m._buffers.items()):
                if t is not None and t.is_floating_point():
                    (m._parameters if key in m._parameters else m._buffers)[key] = (
                        torch.nn.Parameter(t.detach().to(torch.bfloat16), requires_grad=False)
                        if key in m._parameters
                        else t.to(torch.bfloat16)
                    )
        return served
    if name == "SmoothQuant W8A8":
        return qp.engines.compile(model, engine="torch-int8").model
    return model


def load_variant(name: str, directory: Path) -> torch.nn.Module:
    """Rebuild a saved variant in a fresh process (torchao rows are re-quantized from the float testbed)."""
    import safetensors.torch
    from transformers import GPT2LMHeadModel

    import quantpilot as qp
    from quantpilot_testbed.language_model import default_cache_dir, load_testbed

    config_dir = default_cache_dir()
    if name.startswith(("torchao", "quanto")):
        model, _ = load_testbed(train=False)
        return build_variant(name, model, [])
    skeleton = GPT2LMHeadModel.from_pretrained(config_dir, dtype=torch.float32)  # architecture; weights replaced
    if name in QUANTPILOT_ROWS:
        model = qp.load(skeleton, directory)
    else:
        model = skeleton.to(torch.bfloat16) if name == "bf16" else skeleton
        safetensors.torch.load_model(model, str(directory / "model.safetensors"))
    del skeleton
    gc.collect()
    return model.eval()


# --------------------------------------------------------------------------- measuring
def tensor_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        data = getattr(t, "data", t)
        try:
            key = data.untyped_storage().data_ptr()
            size = data.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # tensor subclasses (torchao): sum their inner tensors
            key, size = id(t), sum(x.nbytes for x in _inner_tensors(t))
        if key not in seen:
            seen.add(key)
            total += size
    return total


def _inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return [x for n in names for x in _inner_tensors(getattr(t, n))]
    return [t]


def prefill(model: torch.nn.Module, ids: torch.Tensor) -> None:
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)


def greedy_decode(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy generation one token at a time with the KV cache (no `generate` helper in the timed loop)."""
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        generated = [token]
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            generated.append(token)
    return torch.cat(generated, dim=1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --------------------------------------------------------------------------- stages (child processes)
def stage_build(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from quantpilot_testbed.language_model import (
        calibration_batches,
        kl_to_reference,
        load_testbed,
        perplexity,
        wikitext_tokens,
    )

    model, tokenizer = load_testbed(train=False)
    calib = calibration_batches(tokenizer, n=args.calib, seq_len=256, seed=0) if name in (
        "AWQ W4 g128", "GPTQ W4 g128", "SmoothQuant W8A8") else []
    start = time.perf_counter()
    variant = build_variant(name, model, calib)
    build_s = time.perf_counter() - start
    directory = workdir / slug(name)
    save_variant(name, variant, directory)
    size = sum(p.stat().st_size for p in directory.iterdir())
    served = deployable(name, variant)
    tokens = wikitext_tokens("test", tokenizer)
    # Weight-only rows: perplexity of the stored weights with float32 activations (the papers' protocol),
    # so the bf16 rounding of the deployed path (the bf16 row's own error) does not blur the method gaps.
    evaluated = variant if name in WEIGHT_ONLY_ROWS else served
    ppl = perplexity(evaluated, tokens, window=256, max_windows=args.windows)
    # How far the predictions moved from FP32, token by token: on a testbed whose perplexity W4 noise
    # does not hurt, this is where the methods' differences show (a fresh float model: the bf16 row
    # converted the loaded one in place).
    reference, _ = load_testbed(train=False)
    kl = kl_to_reference(evaluated, reference, tokens, window=256, max_windows=args.kl_windows)
    del reference
    extra = {}
    if name == "LLM.int8()":
        try:
            import quantpilot as qp

            extra["outlier_fraction"] = qp.algorithms.outlier_fraction(served)
        except Exception as err:  # a report column only; the row stands without it
            extra["outlier_fraction"] = f"unavailable: {err}"
    if name in WEIGHT_ONLY_ROWS:
        # The quantized Linear layers alone vs the same layers in FP32 (the embedding stays float, as in the papers).
        from quantpilot.nn.packed import WeightOnlyLinear

        layers = [m for m in variant.modules() if isinstance(m, WeightOnlyLinear) and m.tied_to is None]
        extra["linear_mb"] = sum(tensor_bytes(m) for m in layers) / 2**20
        fp32_bytes = sum(4 * m.out_features * (m.in_features + (m.bias is not None)) for m in layers)
        extra["linear_fp32_mb"] = fp32_bytes / 2**20
    return {"perplexity": ppl, "kl_to_fp32": kl, "size_mb": size / 2**20, "build_s": build_s, **extra}


def stage_serve(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    baseline = rss_mb()
    model = deployable(name, load_variant(name, workdir / slug(name)))
    gc.collect()
    ids = torch.randint(0, 8000, (1, args.prefill), generator=torch.Generator().manual_seed(0))
    prefill(model, ids)
    greedy_decode(model, ids[:, :32], args.decode)
    return {"peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": baseline, "weights_mb": tensor_bytes(model) / 2**20}


def stage_time(names: list[str], workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from quantpilot.timing import interleaved_latency

    models = {n: deployable(n, load_variant(n, workdir / slug(n))) for n in names}
    ids = torch.randint(0, 8000, (1, args.prefill), generator=torch.Generator().manual_seed(0))
    prompt = ids[:, :32]
    fns_prefill = {n: (lambda m=m: prefill(m, ids)) for n, m in models.items()}
    fns_decode = {n: (lambda m=m: greedy_decode(m, prompt, args.decode)) for n, m in models.items()}
    pre = interleaved_latency(fns_prefill, warmup=1, iters=args.iters)
    dec = interleaved_latency(fns_decode, warmup=1, iters=args.iters)
    return {n: {"prefill_tok_s": args.prefill / pre[n], "decode_tok_s": args.decode / dec[n]} for n in names}


def run_child(stage: str, names: list[str], workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = workdir / f"{stage}-{slug('_'.join(names))[:60]}.json"
    cmd = [sys.executable, __file__, "--stage", stage, "--names", json.dumps(names), "--workdir", str(workdir),
           "--result", str(out), "--windows", str(args.windows), "--kl-windows", str(args.kl_windows),
           "--calib", str(args.calib),
           "--threads", str(args.threads), "--prefill", str(args.prefill), "--decode", str(args.decode),
           "--iters", str(args.iters)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[-300:] or f"exit code {proc.returncode}"}
    return json.loads(out.read_text())


def child_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    names = json.loads(args.names)
    workdir = Path(args.workdir)
    try:
        if args.stage == "time":
            result = stage_time(names, workdir, args)
        else:
            fn = stage_build if args.stage == "build" else stage_serve
            result = fn(names[0], workdir, args)
    except Exception as err:  # reported as the row's reason, never hidden
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if not msg.startswith("not available"):
            traceback.print_exc()
            msg = f"failed: {type(err).__name__}: {msg}"
        result = {"error": msg[:300]}
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------- the table
def fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, int | float) else "-"


def target_checks(rows: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The issue's targets that this table can judge, each True/False (rows missing or failed are skipped).

    >>> target_checks({"FP32": {"perplexity": 100.0}, "RTN W8A16": {"perplexity": 100.2}})
    {'RTN W8A16 within 0.5 % of FP32 perplexity': True}
    """
    def ok(name: str, key: str) -> bool:
        return name in rows and "error" not in rows[name] and isinstance(rows[name].get(key), (int, float))

    checks: dict[str, bool] = {}
    if not ok("FP32", "perplexity"):
        return checks
    ref = rows["FP32"]["perplexity"]

    def gap(name: str) -> float:
        return rows[name]["perplexity"] / ref - 1

    if ok("RTN W8A16", "perplexity"):
        checks["RTN W8A16 within 0.5 % of FP32 perplexity"] = abs(gap("RTN W8A16")) <= 0.005
    rtn = "RTN W4A16 g128"
    for method in ("AWQ W4 g128", "GPTQ W4 g128"):
        if ok(rtn, "perplexity") and ok(method, "perplexity"):
            # Only a positive RTN gap can be closed; with none, the check would be meaningless, so say so.
            label = f"{method} closes >= half of RTN W4 g128's perplexity gap"
            checks[label + f" ({100 * gap(rtn):+.2f} % -> {100 * gap(method):+.2f} %)"] = (
                gap(rtn) > 0 and gap(method) <= gap(rtn) / 2
            )
        if ok(rtn, "kl_to_fp32") and ok(method, "kl_to_fp32"):
            checks[f"{method} closes >= half of RTN W4 g128's KL to FP32"] = (
                rows[method]["kl_to_fp32"] <= rows[rtn]["kl_to_fp32"] / 2
            )
    if ok("FP32", "size_mb"):
        for name in (rtn, "RTN W4A16 g128 + table W4 g32"):
            if ok(name, "size_mb"):
                ratio = rows["FP32"]["size_mb"] / rows[name]["size_mb"]
                checks[f"{name} checkpoint >= 6x smaller than FP32 ({ratio:.2f}x)"] = ratio >= 6.0
    if ok("RTN W8A16", "decode_tok_s") and ok("bf16", "decode_tok_s"):
        ratio = rows["RTN W8A16"]["decode_tok_s"] / rows["bf16"]["decode_tok_s"]
        checks[f"weight-only int8 decode at least as fast as bf16 ({ratio:.2f}x)"] = ratio >= 1.0
    return checks


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="LLM weight quantization on the WikiText-2 testbed")
    parser.add_argument("--windows", type=int, default=80, help="test.txt windows of 256 tokens (of 942)")
    parser.add_argument("--kl-windows", type=int, default=40, help="test windows for the KL to FP32 column")
    parser.add_argument("--calib", type=int, default=128, help="calibration windows of 256 tokens (AWQ, GPTQ, SQ)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (2 cores are shared)")
    parser.add_argument("--prefill", type=int, default=256, help="prompt tokens timed for prefill")
    parser.add_argument("--decode", type=int, default=32, help="new tokens timed for greedy decode")
    parser.add_argument("--iters", type=int, default=5, help="timed rounds (medians)")
    parser.add_argument("--only", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--names", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        child_main(args)
        return {}
    cpu = cpu_report()
    print(cpu_header(cpu))
    print(f"torch {torch.__version__}, {args.threads} thread(s) per process")
    from quantpilot_testbed.language_model import default_cache_dir, load_testbed

    load_testbed()  # trains and caches the testbed on first use (a few minutes)
    log = json.loads((default_cache_dir() / "train_log.json").read_text())
    print(f"testbed: {default_cache_dir()} (GPT-2 {log['config']['n_layer']}x{log['config']['n_embd']}, "
          f"{log['steps']} steps, train loss {log['final_train_loss']:.3f})")
    print(f"perplexity: first {args.windows} non-overlapping 256-token windows of test.txt; "
          f"calibration: {args.calib} windows of valid.txt")
    names = VARIANTS if not args.only else [n.strip() for n in args.only.split(",")]
    started = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        workdir = Path(tmp)
        for name in names:
            t0 = time.perf_counter()
            rows[name] = run_child("build", [name], workdir, args)
            if "error" not in rows[name]:
                rows[name].update(run_child("serve", [name], workdir, args))
            state = rows[name].get("error", f"ppl {rows[name].get('perplexity', float('nan')):.2f}")
            print(f"  {name}: {state} ({time.perf_counter() - t0:.0f}s)", flush=True)
        ok = [n for n in names if "error" not in rows[n]]
        timing = run_child("time", ok, workdir, args) if ok else {}
    if "error" in timing:
        print(f"timing failed: {timing['error']}")
        timing = {}
    for n, t in timing.items():
        rows[n].update(t)
    ref = rows.get("FP32", {}).get("perplexity")
    bf16 = rows.get("bf16", {})
    header = (f"{'variant':32} {'ppl':>8} {'Δppl':>7} {'KL·1e3':>7} {'disk MB':>8} {'weights MB':>10} "
              f"{'peak RSS MB':>11} "
              f"{'prefill tok/s':>13} {'decode tok/s':>12} {'decode vs bf16':>14}")
    print("\n" + header + "\n" + "-" * len(header))
    for n in names:
        r = rows[n]
        if "error" in r:
            print(f"{n:32} {r['error']}")
            continue
        dppl = f"{100 * (r['perplexity'] / ref - 1):+.2f}%" if ref else "-"
        ratio = r.get("decode_tok_s", 0) / bf16["decode_tok_s"] if bf16.get("decode_tok_s") else None
        kl = 1e3 * r["kl_to_fp32"] if isinstance(r.get("kl_to_fp32"), float) else None
        print(f"{n:32} {r['perplexity']:8.2f} {dppl:>7} {fmt(kl, '7.3f')} {r['size_mb']:8.2f} "
              f"{fmt(r.get('weights_mb'), '10.2f')} "
              f"{fmt(r.get('peak_rss_mb'), '11.0f')} {fmt(r.get('prefill_tok_s'), '13.0f')} "
              f"{fmt(r.get('decode_tok_s'), '12.1f')} {fmt(ratio, '13.2f') + ('x' if ratio else '')}")
    shape = f"{log['config']['vocab_size']}x{log['config']['n_embd']}"
    for n in names:
        if "linear_mb" in rows[n]:
            r = rows[n]
            table = "token table packed too" if "table" in n else f"float token table {shape}"
            print(f"{n}: quantized Linear layers {r['linear_mb']:.2f} MB vs {r['linear_fp32_mb']:.2f} MB in FP32 "
                  f"({r['linear_fp32_mb'] / r['linear_mb']:.2f}x smaller); whole checkpoint "
                  f"{rows['FP32']['size_mb'] / r['size_mb']:.2f}x smaller ({table}, float positions)"
                  if "size_mb" in rows.get("FP32", {}) else "")
    if "LLM.int8()" in rows and "outlier_fraction" in rows["LLM.int8()"]:
        print(f"LLM.int8() outlier fraction: {rows['LLM.int8()']['outlier_fraction']}")
    checks = target_checks(rows)
    if checks:
        print()
        for what, ok in checks.items():
            print(f"{'PASS' if ok else 'MISS'}  {what}")
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f}s. Published anchor (OPT-125M, WikiText-2): FP16 27.65, RTN W4 g128 30.49, "
          "AWQ 29.77, GPTQ 29.39.")
    result = {"cpu": cpu, "torch": torch.__version__, "args": {k: v for k, v in vars(args).items() if k != "out"
              and not k.startswith(("stage", "names", "workdir", "result"))} | {"out": str(args.out)},
              "testbed": log, "rows": rows, "checks": checks, "seconds": elapsed}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_llm.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
