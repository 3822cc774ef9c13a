"""llama.cpp's own command-line tools (`llama-imatrix`, `llama-quantize`) for the benchmarks, built once.

llama-cpp-python (the package the benchmarks load GGUF files with) exposes `llama_model_quantize`
but not the importance-matrix tool, and its wheel ships no executables. So this helper downloads the
same llama-cpp-python version's source distribution from PyPI (it vendors llama.cpp's sources),
builds only the two targets (Release, `-DGGML_NATIVE=ON`, static, no CURL) into
`~/.cache/quantpilot/llama-tools/<version>/`, and reuses them afterwards. The first build takes
several minutes (about 10 on 2 shared cores); later calls return at once.

Command line: `python benchmarks/llama_tools.py [--version 0.3.36]` builds and prints the paths.

Example:
    >>> tool_dir("0.3.36").name
    '0.3.36'
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LlamaTools", "DEFAULT_VERSION", "tool_dir", "build_tools", "installed_version"]

# The llama-cpp-python release the benchmarks were measured with; the tools come from its vendored llama.cpp,
# so the quantizer, the imatrix and the runtime that scores the files are one llama.cpp.
DEFAULT_VERSION = "0.3.36"
CACHE = Path(os.environ.get("QUANTPILOT_LLAMA_TOOLS", Path.home() / ".cache" / "quantpilot" / "llama-tools"))
TARGETS = ("llama-imatrix", "llama-quantize")


def installed_version() -> str:
    """The importable llama-cpp-python's version, else `DEFAULT_VERSION`.

    Example:
        >>> isinstance(installed_version(), str)
        True
    """
    try:
        import llama_cpp

        return str(llama_cpp.__version__)
    except ImportError:
        return DEFAULT_VERSION


def tool_dir(version: str) -> Path:
    """Where the tools of one llama-cpp-python version are cached.

    Example:
        >>> tool_dir("0.3.36").parent == CACHE
        True
    """
    return CACHE / version


@dataclass(frozen=True)
class LlamaTools:
    """The two built executables; methods run them and raise `RuntimeError` with the tool's last lines.

    Example:
        >>> LlamaTools(Path("q"), Path("i")).quantize_bin.name
        'q'
    """

    quantize_bin: Path
    imatrix_bin: Path

    def imatrix(self, model: Path, text: Path, out: Path, ctx: int, chunks: int, threads: int = 2) -> Path:
        """Importance matrix of `model` over `text` in `chunks` windows of `ctx` tokens, written to `out`.

        Example:
            >>> callable(LlamaTools.imatrix)
            True
        """
        cmd = [self.imatrix_bin, "-m", model, "-f", text, "-o", out, "-c", ctx, "-b", ctx, "--chunks", chunks]
        _run([*cmd, "-t", threads, "--no-ppl"])
        return out

    def quantize(self, src: Path, dst: Path, ftype: str, imatrix: Path | None = None, threads: int = 2) -> Path:
        """`llama-quantize [--imatrix FILE] src dst FTYPE threads` (FTYPE: Q8_0, Q4_0, Q4_K_M, ...).

        Example:
            >>> callable(LlamaTools.quantize)
            True
        """
        extra = ["--imatrix", imatrix] if imatrix is not None else []
        _run([self.quantize_bin, *extra, src, dst, ftype, threads])
        return dst


def _run(cmd: list) -> str:
    """Run a tool; its output is kept for the error only (llama.cpp logs a lot to stderr)."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _sources(version: str, work: Path) -> Path:
    """The llama.cpp sources vendored in llama-cpp-python's sdist (downloaded by pip, the ordinary client)."""
    src = work / "src"
    if (src / "CMakeLists.txt").exists():
        return src
    sdists = work / "sdist"
    pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    _run([*pip, "-d", sdists, f"llama-cpp-python=={version}"])
    archive = next(sdists.glob("llama_cpp_python-*.tar.gz"))
    prefix = archive.name[: -len(".tar.gz")] + "/vendor/llama.cpp/"
    tmp = work / "src.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        for m in members:
            m.name = m.name[len(prefix) :]
        tar.extractall(tmp, members=[m for m in members if m.name], filter="data")
    tmp.rename(src)  # a complete tree or none: an interrupted extraction is redone
    return src


def build_tools(version: str | None = None, jobs: int = 2) -> LlamaTools:
    """Build (first call only: minutes) and return llama.cpp's `llama-quantize` and `llama-imatrix`.

    Example:
        >>> callable(build_tools)
        True
    """
    work = tool_dir(version or installed_version())
    bins = {t: work / "bin" / t for t in TARGETS}
    if not all(b.exists() for b in bins.values()):
        work.mkdir(parents=True, exist_ok=True)
        src, build = _sources(work.name, work), work / "build"
        flags = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF"]
        flags += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(["cmake", "-S", src, "-B", build, *generator, *flags])
        _run(["cmake", "--build", build, "--target", *TARGETS, "-j", jobs])
        (work / "bin").mkdir(exist_ok=True)
        for t, dest in bins.items():
            shutil.copy2(next(build.rglob(t)), dest.with_suffix(".partial"))
            dest.with_suffix(".partial").rename(dest)
    return LlamaTools(quantize_bin=bins["llama-quantize"], imatrix_bin=bins["llama-imatrix"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="llama-cpp-python version (default: the installed one)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    tools = build_tools(args.version, args.jobs)
    print(tools.quantize_bin)
    print(tools.imatrix_bin)


if __name__ == "__main__":
    main()
