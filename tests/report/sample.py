"""A hand-made report dict in the autopilot's schema (README, "report.json"), shared by the report and CLI tests."""

SAMPLE = {
    "format": 1,
    "verdict": "int8-static+matmul on openvino: 2.10x FP32, 1.08x bf16, cosine 0.9931 (budget 0.5 % held)",
    "target": "openvino",
    "cpu": "Test CPU @ 2.0GHz",
    "isa": ["avx512_vnni", "amx_int8"],
    "budget": {"value": 0.005, "absolute": False, "lower_is_better": False},
    "float": {"metric": 1.0, "interval": [1.0, 1.0], "latency_ms": {"fp32": 42.0, "bf16": 21.5},
              "size_bytes": 90_000_000},
    "candidates": [
        {"name": "bf16", "recipe": None, "metric": 0.9991, "interval": [0.9988, 0.9993], "holdout_metric": 0.999,
         "latency_ms": 21.5, "speedup_vs_fp32": 1.95, "speedup_vs_bf16": 1.0, "size_bytes": 45_000_000,
         "within_budget": True, "chosen": False, "why": "baseline: no quantization"},
        {"name": "int8-dynamic", "recipe": {"name": "int8-dynamic"}, "metric": 0.9952, "interval": [0.994, 0.996],
         "holdout_metric": None, "latency_ms": 30.1, "speedup_vs_fp32": 1.4, "speedup_vs_bf16": 0.71,
         "size_bytes": 23_000_000, "within_budget": True, "chosen": False, "why": "slower than bf16 <on this CPU>"},
        {"name": "int8-static+matmul", "recipe": {"name": "int8-static"}, "metric": 0.9931, "interval": [0.992, 0.994],
         "holdout_metric": 0.9929, "latency_ms": 20.0, "speedup_vs_fp32": 2.1, "speedup_vs_bf16": 1.08,
         "size_bytes": 23_500_000, "within_budget": True, "chosen": True, "why": "fastest within budget"},
        {"name": "w4a16", "recipe": None, "metric": float("nan"), "interval": None, "holdout_metric": None,
         "latency_ms": None, "speedup_vs_fp32": None, "speedup_vs_bf16": None, "size_bytes": None,
         "within_budget": False, "chosen": False, "why": "proxy error too high; not evaluated"},
    ],
    "chosen": "int8-static+matmul",
    "deployed": {"format": "onnx (QDQ int8)", "path": "deploy/model.onnx", "metric": 0.9929, "reloaded_metric": 0.9928},
    "sensitivity": [{"layer": f"encoder.layer.{i}.output.dense", "harm": 0.002 / (i + 1)} for i in range(8)],
    "histograms": [
        {"layer": f"encoder.layer.{i}.intermediate.dense", "bins": [j / 4 - 3 for j in range(25)],
         "counts": [int(1000 * 2.7 ** -abs(j - 12) + 1) for j in range(24)], "range": [-2.1, 2.4]}
        for i in range(3)
    ],
    "trail": [
        {"step": "bf16", "decision": "timed", "why": "the honest baseline"},
        {"step": "int8-dynamic", "decision": "rejected", "why": "slower than bf16"},
        {"step": "int8-static+matmul", "decision": "chosen", "why": "fastest within budget on held-out data"},
    ],
    "evaluations": 9,
    "wall_s": 71.3,
    "commands": ["quantpilot auto --model minilm --calib-data calib.txt --eval-data eval.txt --budget 0.5% --out out"],
}  # fmt: skip
