"""The language-model testbeds: a small GPT-2 (or Llama) trained on WikiText-2, its data and its perplexity.

No small language model ships with weights here, so `load_testbed` trains one once (a byte-level BPE
tokenizer and a ~14 M parameter GPT-2, or with `arch="llama"` a ~7 M Llama, on `valid.txt`, ~20 minutes)
and caches both outside git; later calls load the cache. Perplexity is measured on non-overlapping windows
of `test.txt`, as the GPTQ and AWQ papers evaluate; `perplexity` and `kl_to_reference` are the
library's (`quantpilot.metrics`), re-exported here. Tests use `tiny_causal_lm` (random weights).

Example:
    >>> import torch
    >>> model = tiny_causal_lm("gpt2")
    >>> ppl = perplexity(model, torch.randint(0, 512, (130,)), window=64)
    >>> 100 < ppl < 5000    # a random model is close to uniform over its 512 tokens
    True
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The metrics and the tiny test models belong to the library; re-exported so testbed users find them here.
from quantpilot.metrics import kl_to_reference, perplexity
from quantpilot.testing import tiny_causal_lm
from quantpilot_testbed.llama_testbed import LLAMA_TESTBED_CONFIG, build_llama

# fmt: off
__all__ = [
    "TESTBED_CONFIG", "wikitext_path", "default_cache_dir", "load_testbed", "train_testbed", "wikitext_tokens",
    "perplexity", "kl_to_reference", "calibration_batches", "tiny_causal_lm",
]
# fmt: on

# The testbed's shape: GPT-2 with d=384, 6 blocks, 6 heads, an 8k byte-level BPE vocabulary, 256-token
# context. About 13.9 M parameters (3.1 M of them the tied embedding); every Linear's input width (384,
# 1536) is a multiple of 128, so W4 g128 groups tile the weights exactly as in the papers' models.
# Version 2 (d=256, 4 blocks, 5.3 M parameters) was too small to tell the W4 methods apart: RTN W4 g128
# already matched FP32 perplexity there (-0.36 %), leaving no gap for AWQ or GPTQ to close.
TESTBED_CONFIG: dict[str, Any] = {
    "version": 3,
    "vocab_size": 8192,
    "n_embd": 384,
    "n_layer": 6,
    "n_head": 6,
    "n_positions": 256,
    # ~10 passes over valid.txt's ~250k tokens; dropout 0.1 keeps the 14 M parameters from memorising it.
    "train_steps": 1200,
    # Wall-clock cap: the machine's 2 cores are shared, so a step takes ~1 s (idle) to several seconds.
    # The learning-rate schedule follows max(step / train_steps, elapsed / max_seconds), so a capped run
    # still anneals.
    "max_seconds": 1400,
    "dropout": 0.1,
    "eval_windows": 200,
    "batch_size": 8,
    "seq_len": 256,
    "lr": 2e-3,
    "seed": 0,
}
_DONE_FILE = "train_log.json"


def wikitext_path(split: str) -> Path:
    """Path of WikiText-2's `valid.txt` or `test.txt` (`$QUANTPILOT_WIKITEXT` or `../shared/data/wikitext-2`).

    Example:
        >>> wikitext_path("test").name
        'test.txt'
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' (to train and calibrate) or 'test' (to evaluate), got {split!r}")
    root = os.environ.get("QUANTPILOT_WIKITEXT")
    base = Path(root) if root else Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2"
    return base / f"{split}.txt"


def _read_split(split: str) -> str:
    path = wikitext_path(split)
    if not path.is_file():
        raise ValueError(f"{path} not found: set QUANTPILOT_WIKITEXT to the folder holding WikiText-2's {split}.txt")
    return path.read_text(encoding="utf-8")


def _config(arch: str) -> dict[str, Any]:
    """The shape and training recipe of testbed `arch` ("gpt2", or "llama": `llama_testbed`)."""
    if arch == "gpt2":
        return TESTBED_CONFIG
    if arch == "llama":
        return LLAMA_TESTBED_CONFIG
    raise ValueError(f"arch must be 'gpt2' or 'llama', got {arch!r}")


def default_cache_dir(arch: str = "gpt2") -> Path:
    """Where testbed `arch` is cached: `lm-testbed/<arch>-v<version>` under `$QUANTPILOT_CACHE` or ~/.cache/quantpilot.

    Example:
        >>> default_cache_dir().name.startswith("gpt2-v"), default_cache_dir("llama").name.startswith("llama-v")
        (True, True)
    """
    root = os.environ.get("QUANTPILOT_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "quantpilot"
    return base / "lm-testbed" / f"{arch}-v{_config(arch)['version']}"


def _gpt2_config(
    vocab_size: int, n_embd: int, n_layer: int, n_head: int, n_positions: int, dropout: float = 0.0
) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_positions=n_positions,
        bos_token_id=0,
        eos_token_id=0,
        # Dropout only while training (eval() turns it off); the testbed sees its small corpus many times.
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )


def _train_tokenizer(text: str, vocab_size: int) -> Any:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text.splitlines(), vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", model_max_length=10**9
    )


def _learning_rate(peak: float, progress: float) -> float:
    """Linear warm-up over the first 5 %, then cosine decay to 10 % of `peak` (the usual GPT recipe)."""
    warmup = 0.05
    if progress < warmup:
        return peak * (progress + 1e-3) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))))


def train_testbed(
    directory: str | Path | None = None,
    *,
    steps: int | None = None,
    max_seconds: float | None = None,
    log: Any = print,
    overwrite: bool = False,
    arch: str = "gpt2",
) -> Path:
    """Train the testbed tokenizer and model (GPT-2, or `arch="llama"`) on `valid.txt`; write them to `directory`.

    The files appear atomically (written to a temporary sibling folder, then renamed), so a
    concurrent `load_testbed` never sees half a checkpoint. `directory` must not exist or be empty:
    a folder holding anything else is refused before training starts, and nothing of the user's is
    ever deleted. An existing checkpoint (a folder with `train_log.json`) is refused too, unless
    `overwrite`, which replaces it only once the new one is written.

    Args:
        directory: target folder (default `default_cache_dir()`).
        steps: optimizer steps (default `TESTBED_CONFIG["train_steps"]`; small values for smoke runs).
        max_seconds: wall-clock cap on the training loop (default `TESTBED_CONFIG["max_seconds"]`).
        log: called with progress lines.
        overwrite: replace an existing trained testbed in `directory` (after the new one is written).
        arch: "gpt2" (`TESTBED_CONFIG`) or "llama" (`llama_testbed.LLAMA_TESTBED_CONFIG`).

    Returns:
        The directory, holding `tokenizer.json`, the model (`config.json`, `model.safetensors`) and
        `train_log.json` (steps run, final train loss, test perplexity, seconds).

    Example:
        >>> callable(train_testbed)
        True
    """
    cfg = _config(arch)
    directory = Path(directory) if directory is not None else default_cache_dir(arch)
    _check_target(directory, overwrite)
    steps = cfg["train_steps"] if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model, tokenizer, record = _train(steps, max_seconds, log, arch)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_FILE).write_text(json.dumps(record, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the temporary folder is ours
        raise
    return _install(tmp, directory, overwrite)


def _check_target(directory: Path, overwrite: bool = False) -> None:
    """Refuse, before any training, a target the testbed may not write: it must be absent or an empty folder.

    A folder holding a trained testbed (its `train_log.json`) is accepted only with `overwrite`; a
    folder holding anything else is the user's, and is never deleted.
    """
    if not directory.exists() and not directory.is_symlink():
        return
    if not directory.is_dir():
        raise ValueError(f"{directory} is a file, not a folder for the testbed; choose another path")
    if (directory / _DONE_FILE).is_file():
        if overwrite:
            return
        raise ValueError(f"{directory} already holds a trained testbed; delete it first to retrain (or use --force)")
    if any(directory.iterdir()):
        raise ValueError(
            f"{directory} exists and is not a quantpilot testbed (no {_DONE_FILE}); "
            "choose a new or empty folder: nothing in it is deleted"
        )


def _install(tmp: Path, directory: Path, overwrite: bool = False) -> Path:
    """Rename the written checkpoint `tmp` to `directory`, which must be absent or empty (or, with
    `overwrite`, a trained testbed, set aside and deleted only after the rename). Never deletes a
    folder quantpilot did not write; if `directory` was filled meanwhile, `tmp` is kept and named."""
    old = None
    if overwrite and (directory / _DONE_FILE).is_file():
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
        directory.rename(old / directory.name)
    elif directory.is_dir() and not any(directory.iterdir()):
        try:
            directory.rmdir()  # only ever succeeds on an empty folder
        except OSError:
            pass
    if directory.exists() or directory.is_symlink():
        if (directory / _DONE_FILE).is_file():  # another process trained it meanwhile: use that one
            shutil.rmtree(tmp, ignore_errors=True)
            return directory
        raise ValueError(
            f"{directory} appeared while training and is not a quantpilot testbed; nothing in it was touched. "
            f"The trained testbed is in {tmp}"
        )
    try:
        tmp.rename(directory)
    except BaseException:
        if old is not None and not directory.exists():
            (old / directory.name).rename(directory)  # put the previous testbed back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # the previous testbed, with its train_log.json
    return directory


def _build(arch: str, vocab_size: int, cfg: dict[str, Any]) -> nn.Module:
    if arch == "llama":
        return build_llama(vocab_size, cfg)
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel(
        _gpt2_config(vocab_size, cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["n_positions"], cfg["dropout"])
    )


def _train(steps: int, max_seconds: float | None, log: Any, arch: str = "gpt2") -> tuple[nn.Module, Any, dict]:
    """Train the tokenizer and the model (minutes): (model, tokenizer, the train_log.json record)."""
    cfg = _config(arch)
    start = time.perf_counter()
    torch.manual_seed(cfg["seed"])
    text = _read_split("valid")
    tokenizer = _train_tokenizer(text, cfg["vocab_size"])
    data = wikitext_tokens("valid", tokenizer)
    log(f"tokenizer: {len(tokenizer)} tokens; valid.txt -> {data.numel()} tokens ({time.perf_counter() - start:.0f}s)")
    model = _build(arch, len(tokenizer), cfg)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"],
        betas=(0.9, 0.95),
    )
    max_seconds = float(cfg["max_seconds"]) if max_seconds is None else float(max_seconds)
    gen = torch.Generator().manual_seed(cfg["seed"])
    seq, bs = cfg["seq_len"], cfg["batch_size"]
    model.train()
    losses: list[float] = []
    train_start = time.perf_counter()
    for step in range(steps):
        progress = max(step / steps, (time.perf_counter() - train_start) / max_seconds)
        if progress >= 1.0:
            log(f"stopping at step {step}: the {max_seconds:.0f}s budget is spent")
            break
        for group in opt.param_groups:
            group["lr"] = _learning_rate(cfg["lr"], progress)
        starts = torch.randint(0, data.numel() - seq - 1, (bs,), generator=gen)
        batch = torch.stack([data[s : s + seq] for s in starts.tolist()])
        # bf16 autocast: ~2x faster matmuls on AVX512-BF16/AMX CPUs; master weights and the optimizer stay fp32.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps}  loss {loss.item():.3f}  ({time.perf_counter() - start:.0f}s)")
    model.eval()
    final_loss = sum(losses[-20:]) / len(losses[-20:])
    test_ppl = perplexity(
        model, wikitext_tokens("test", tokenizer), window=cfg["seq_len"], max_windows=cfg["eval_windows"]
    )
    seconds = time.perf_counter() - start
    log(
        f"final train loss {final_loss:.3f} (mean of last 20 steps); test perplexity {test_ppl:.2f} "
        f"(first {cfg['eval_windows']} windows of {cfg['seq_len']}); {seconds:.0f}s"
    )
    record = {
        "config": cfg,
        "steps": len(losses),
        "final_train_loss": final_loss,
        "test_perplexity": test_ppl,
        "seconds": seconds,
        "torch": torch.__version__,
    }
    return model, tokenizer, record


def load_testbed(
    directory: str | Path | None = None, *, train: bool = True, arch: str = "gpt2"
) -> tuple[nn.Module, Any]:
    """The trained testbed model (float32, eval mode) and its tokenizer; trains and caches it on first use.

    Args:
        directory: cache folder (default `default_cache_dir(arch)`).
        train: train when the cache is empty (a few minutes); False raises instead.
        arch: "gpt2" (GPT2LMHeadModel) or "llama" (LlamaForCausalLM, `llama_testbed`).

    Returns:
        (model, tokenizer). Each call returns a fresh model object.

    Example:
        >>> callable(load_testbed)
        True
    """
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory) if directory is not None else default_cache_dir(arch)
    if not (directory / _DONE_FILE).exists():  # train once, then every call loads the cache
        if not train:
            raise ValueError(f"no trained testbed in {directory}: run `python scripts/train_lm.py --arch {arch}` first")
        train_testbed(directory, arch=arch)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    tokenizer.model_max_length = 10**9  # whole splits are tokenized at once, never fed to the model whole
    # The folder's config.json names the class, so a folder given with `directory` loads as what it holds.
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model.eval(), tokenizer


def wikitext_tokens(split: str, tokenizer: Any) -> torch.Tensor:
    """All token ids of a WikiText-2 split as one 1-D LongTensor.

    Args:
        split: "valid" or "test".
        tokenizer: a Hugging Face tokenizer (or any callable returning {"input_ids": [...]}).

    Example:
        >>> ids = wikitext_tokens("test", lambda text, **kw: {"input_ids": list(text.encode()[:10])})
        >>> ids.shape, ids.dtype
        (torch.Size([10]), torch.int64)
    """
    ids = tokenizer(_read_split(split), add_special_tokens=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long)


def calibration_batches(tokenizer: Any, n: int = 128, seq_len: int = 256, seed: int = 0) -> list[dict]:
    """`n` random windows of `valid.txt` (the GPTQ/AWQ calibration recipe), as `{"input_ids": (1, seq_len)}`.

    `valid.txt` is also the testbed's training text; evaluation uses `test.txt`, which neither
    training nor calibration sees.

    Example:
        >>> tok = lambda text, **kw: {"input_ids": list(text.encode())}
        >>> batches = calibration_batches(tok, n=2, seq_len=16)
        >>> len(batches), batches[0]["input_ids"].shape
        (2, torch.Size([1, 16]))
    """
    if n < 1 or seq_len < 2:
        raise ValueError(f"need n >= 1 windows of seq_len >= 2 tokens, got n={n}, seq_len={seq_len}")
    data = wikitext_tokens("valid", tokenizer)
    if data.numel() <= seq_len:
        raise ValueError(f"valid.txt has {data.numel()} tokens, fewer than one window of {seq_len}")
    rng = random.Random(seed)
    starts = [rng.randrange(0, data.numel() - seq_len) for _ in range(n)]
    return [{"input_ids": data[s : s + seq_len].unsqueeze(0).clone()} for s in starts]
