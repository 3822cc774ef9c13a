"""Regenerate testbed/quantpilot_testbed/data/sentences.txt: real English sentences for calibration and evaluation.

The text comes from the docstrings of Python's standard library (installed with every Python, so
no network is needed and the provenance is plain). Sentences are cleaned, filtered to 8-40 words,
de-duplicated and shuffled with a fixed seed; the file is committed, this script documents how.

Run: python scripts/make_sentences.py
"""

import importlib
import random
import re
from pathlib import Path

MODULES = [
    "argparse",
    "asyncio",
    "calendar",
    "collections",
    "csv",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "fractions",
    "functools",
    "gzip",
    "heapq",
    "http.client",
    "inspect",
    "json",
    "logging",
    "os",
    "pathlib",
    "pickle",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.request",
    "zipfile",
]


def sentences_of(text: str):
    text = re.sub(r"\s+", " ", text)
    for raw in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
        s = raw.strip()
        words = s.split()
        if not 8 <= len(words) <= 40 or not s.endswith("."):
            continue
        if re.search(r"[{}<>=`\[\]|\\]|>>>|\w\(|::|__", s):
            continue  # code, not prose
        yield s


def main() -> None:
    seen, out = set(), []
    for name in MODULES:
        mod = importlib.import_module(name)
        docs = [mod.__doc__ or ""]
        for attr in dir(mod):
            doc = getattr(getattr(mod, attr, None), "__doc__", None)
            if isinstance(doc, str) and not attr.startswith("_"):
                docs.append(doc)
        for doc in docs:
            for s in sentences_of(doc):
                if s.lower() not in seen:
                    seen.add(s.lower())
                    out.append(s)
    random.Random(0).shuffle(out)
    out = out[:360]
    path = Path(__file__).resolve().parents[1] / "testbed" / "quantpilot_testbed" / "data" / "sentences.txt"
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {len(out)} sentences to {path}")


if __name__ == "__main__":
    main()
