"""Train and cache a language-model testbed (tokenizer + small GPT-2 or Llama on WikiText-2 valid.txt).

Usage:
    python scripts/train_lm.py [--arch gpt2|llama] [--dir DIR] [--steps N] [--max-seconds S] [--force]

--arch gpt2 (the default, which the other LLM benchmarks use) or llama (bench_llm_engines' testbed).

--dir must be a new or empty folder (a folder holding anything else is refused, never deleted);
--force replaces an existing trained testbed there, once the new one is written.

The checkpoint goes to $QUANTPILOT_CACHE/lm-testbed/<arch>-v<version> (default ~/.cache/quantpilot/lm-testbed), outside
git; `quantpilot_testbed.language_model.load_testbed(arch=...)` loads it. Prints the final train loss and the
test perplexity (non-overlapping 256-token windows of test.txt).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from quantpilot_testbed.language_model import default_cache_dir, train_testbed  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2", help="testbed family (default: gpt2)")
    parser.add_argument("--dir", type=Path, default=None, help="cache folder (default: %(default)s -> testbed cache)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the testbed's)")
    parser.add_argument("--max-seconds", type=float, default=None, help="wall-clock cap on training")
    parser.add_argument("--force", action="store_true", help="retrain and replace an existing trained testbed in --dir")
    args = parser.parse_args(argv)
    directory = args.dir or default_cache_dir(args.arch)
    try:
        out = train_testbed(
            directory, steps=args.steps, max_seconds=args.max_seconds, overwrite=args.force, arch=args.arch
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"testbed written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
