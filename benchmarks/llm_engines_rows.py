"""bench-llm-engines' OpenVINO and transformers rows, and the per-window scoring every row shares.

Each row keeps its per-window negative log-likelihoods (`nll`), so a row's perplexity can be compared
with its engine's float row, or with a rival, by a paired 95 % interval over the same windows.

- OpenVINO: one graph shape for every row, the KV cache as OpenVINO state (`quantpilot.export.llm.
  openvino_kv`). The float graph with explicit past/present tensors is what NNCF compresses (its
  calibration items carry an empty cache) and what quantpilot's export traces; each is then made
  stateful. A window is scored in one call after `reset_state()`; decode feeds one token per call.
- transformers: the float model in bf16 against quantpilot's compressed-tensors checkpoints reloaded by
  `AutoModelForCausalLM.from_pretrained` (on a CPU transformers takes them through compressed-tensors'
  dequantize route: the weights are float once loaded, so the speed is the float model's). These rows
  keep the token table float ("-ft"): transformers 5.24's dequantize route decompresses every dense
  layer with the config's first group (`get_dense_scheme`), so a checkpoint whose table has its own
  group (W4 g32, or 8 bits per row) fails to load there (vLLM reads each group's targets).

Example:
    >>> import numpy as np
    >>> round(ppl_of(np.log(10.0) * np.full(2, WINDOW - 1)), 6)  # every token at probability 1/10
    10.0
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

WINDOW = 256
Logits = Callable[[np.ndarray], np.ndarray]  # (n,) ids -> (n, vocab) logits


def window_nll(logits_of: Logits, windows: list[np.ndarray]) -> np.ndarray:
    """Summed next-token negative log-likelihood of each window (float64).

    Example:
        >>> window_nll(lambda ids: np.zeros((len(ids), 4)), [np.arange(3)]).round(4).tolist()
        [2.7726]
    """
    out = []
    for ids in windows:
        logits = torch.as_tensor(np.asarray(logits_of(ids)), dtype=torch.float64)[:-1]
        out.append(float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(ids[1:]), reduction="sum")))
    return np.asarray(out)


def ppl_of(nll: np.ndarray) -> float:
    """Perplexity from per-window NLLs of full `WINDOW`-token windows.

    Example:
        >>> ppl_of(np.zeros(3))
        1.0
    """
    return math.exp(float(np.sum(nll)) / (len(nll) * (WINDOW - 1)))


def paired_interval(nll: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """95 % interval of the perplexity change (%) against `reference` on the same windows (the autopilot's paired
    bootstrap of the per-window difference in nats per token, `quantpilot.auto.scores.bootstrap_interval`).

    Example:
        >>> lo, hi = paired_interval(np.array([1.0, 2.0, 3.0]) + 2.55, np.array([1.0, 2.0, 3.0]))
        >>> round(lo, 2), round(hi, 2)  # 0.01 nats per token more in every window: exp(0.01) - 1
        (1.01, 1.01)
    """
    from quantpilot.auto.scores import bootstrap_interval

    lo, hi = bootstrap_interval((np.asarray(nll, dtype=np.float64) - np.asarray(reference)) / (WINDOW - 1))
    return 100 * math.expm1(lo), 100 * math.expm1(hi)


# --------------------------------------------------------------------------- OpenVINO
def _ov_logits(compiled: Any) -> Logits:
    request = compiled.create_infer_request()

    def logits_of(ids: np.ndarray) -> np.ndarray:
        request.reset_state()  # each window is a fresh sequence
        return np.asarray(request.infer({"input_ids": np.asarray(ids, np.int64)[None]})["logits"])[0]

    return logits_of


def _ov_decode_seconds(compiled: Any, prompt: np.ndarray, tokens: np.ndarray) -> list[float]:
    """The prompt in one call, then `tokens` one per call with the cache: the seconds of each step."""
    request = compiled.create_infer_request()
    request.reset_state()
    request.infer({"input_ids": np.asarray(prompt, np.int64)[None]})
    seconds = []
    for token in tokens:
        start = time.perf_counter()
        request.infer({"input_ids": np.array([[token]], np.int64)})
        seconds.append(time.perf_counter() - start)
    return seconds


def openvino_irs(model, qmodels, calib, work: Path) -> dict[str, Any]:
    """name -> stateful ov.Model: bf16 (the float graph), NNCF plain and awq+se, quantpilot's exports."""
    import nncf
    import openvino as ov

    from quantpilot.export.llm.openvino_ir import write_openvino_ir
    from quantpilot.export.llm.openvino_kv import convert_with_cache, empty_cache, make_stateful

    float_ir = convert_with_cache(model)
    past = empty_cache(model.config)
    dataset = nncf.Dataset([{"input_ids": b["input_ids"].numpy(), **past} for b in calib])
    common = {"mode": nncf.CompressWeightsMode.INT4_ASYM, "group_size": 128, "ratio": 1.0}
    irs = {
        "bf16": float_ir.clone(),
        "NNCF INT4_ASYM g128": nncf.compress_weights(float_ir.clone(), **common),
        "NNCF INT4_ASYM g128 awq+se": nncf.compress_weights(
            float_ir.clone(), **common, dataset=dataset, awq=True, scale_estimation=True
        ),
    }
    irs = {name: make_stateful(ir) for name, ir in irs.items()}
    core = ov.Core()
    for name, q in qmodels.items():
        path = write_openvino_ir(q, work / f"qp-{name}" / "m.xml").path
        irs[f"quantpilot {name} ({'u4/u8' if name.endswith('+t8') else 'u4'})"] = core.read_model(str(path))
    return irs


def openvino_rows(model, qmodels, windows, calib, work: Path, args) -> list[dict]:
    """Perplexity (deployment defaults; quantpilot rows also at f32), size, prefill and decode speed, in turns."""
    import openvino as ov

    from quantpilot.export.llm.engine_check import OPENVINO_EXACT_CONFIG

    core = ov.Core()
    params = sum(p.numel() for p in model.parameters())
    rows, compiled = [], {}
    for name, ir in openvino_irs(model, qmodels, calib, work).items():
        precision = {"INFERENCE_PRECISION_HINT": "bf16"} if name == "bf16" else {}
        folder = work / f"ov-{len(rows)}"
        folder.mkdir()
        ov.save_model(ir, str(folder / "m.xml"), compress_to_fp16=(name == "bf16"))
        # Decode runs on --ov-threads too: OpenVINO 2026.4's CPU plugin dies (SIGFPE) compiling these graphs with
        # INFERENCE_NUM_THREADS=1 in bf16 (f32 compiles); every OpenVINO row gets the same setting.
        compiled[name] = core.compile_model(ir, "CPU", {"INFERENCE_NUM_THREADS": str(args.ov_threads), **precision})
        nll = window_nll(_ov_logits(compiled[name]), windows)
        row = {"engine": "openvino", "row": name, "ppl": ppl_of(nll), "nll": nll}
        row["mb"] = (folder / "m.bin").stat().st_size / 2**20
        row["bpw"] = row["mb"] * 2**20 * 8 / params
        if name.startswith("quantpilot"):
            exact = {"INFERENCE_NUM_THREADS": str(args.ov_threads), **OPENVINO_EXACT_CONFIG}
            strict = core.compile_model(ir, "CPU", exact)
            row["ppl_f32"] = ppl_of(window_nll(_ov_logits(strict), windows))
        rows.append(row)
    prefill: dict[str, list[float]] = {name: [] for name in compiled}
    steps: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(args.repeats):  # in turns, so the shared cores' load falls on every row alike
        for name in compiled:
            request = compiled[name].create_infer_request()
            request.reset_state()
            start = time.perf_counter()
            request.infer({"input_ids": windows[0][None].astype(np.int64)})
            prefill[name].append(time.perf_counter() - start)
            steps[name] += _ov_decode_seconds(compiled[name], windows[0][:16], windows[-1][: args.decode])
    for row in rows:
        row["prefill"] = WINDOW / statistics.median(prefill[row["row"]])
        row["decode"] = 1 / statistics.median(steps[row["row"]])
    return rows


# --------------------------------------------------------------------------- transformers
def _hf_speeds(model, windows, args) -> tuple[float, float]:
    """Prefill tok/s (one window) and decode tok/s from `generate` with the KV cache (greedy, fixed length)."""
    prompt = torch.as_tensor(windows[0][:16])[None]
    window = torch.as_tensor(windows[0])[None]
    n = args.decode
    kw = {"do_sample": False, "use_cache": True, "pad_token_id": 0}
    prefill, one, many = [], [], []
    with torch.no_grad():
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(input_ids=window)
            prefill.append(time.perf_counter() - start)
            start = time.perf_counter()
            model.generate(prompt, max_new_tokens=1, min_new_tokens=1, **kw)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kw)
            many.append(time.perf_counter() - start)
    # generate(n) - generate(1): the n - 1 cached one-token steps alone (the prompt's prefill cancels).
    return WINDOW / statistics.median(prefill), (n - 1) / max(statistics.median(many) - statistics.median(one), 1e-9)


def transformers_rows(model, tokenizer, qmodels, windows, work: Path, args) -> list[dict]:
    """The float model in bf16 and quantpilot's compressed-tensors checkpoints, each loaded by `from_pretrained`."""
    from transformers import AutoModelForCausalLM

    from quantpilot.export.llm.hf_checkpoint import write_hf_checkpoint

    params = sum(p.numel() for p in model.parameters())
    folders = {"bf16": work / "hf-bf16"}
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(folders["bf16"])  # the float model stays f32
    for name, q in qmodels.items():
        folders[f"quantpilot {name} (compressed-tensors)"] = write_hf_checkpoint(q, tokenizer, work / f"hf-{name}")
    rows = []
    torch.set_num_threads(args.torch_threads)  # scoring and timing alike for every transformers row
    for name, folder in folders.items():
        loaded = AutoModelForCausalLM.from_pretrained(str(folder)).eval()

        def logits_of(ids: np.ndarray, m: Any = loaded) -> np.ndarray:
            with torch.no_grad():
                return m(input_ids=torch.as_tensor(ids)[None]).logits[0].float().numpy()

        nll = window_nll(logits_of, windows)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        prefill, decode = _hf_speeds(loaded, windows, args)
        rows.append({
            "engine": "transformers", "row": name, "ppl": ppl_of(nll), "nll": nll, "mb": size / 2**20,
            "bpw": size * 8 / params, "prefill": prefill, "decode": decode,
            "dtype": str(next(loaded.parameters()).dtype).replace("torch.", ""),
        })  # fmt: skip
    return rows
