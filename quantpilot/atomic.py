"""Atomic file production: a file (or a folder of files) appears whole under its final name, or not at all.

Everything quantpilot writes (saved models, recipes, ONNX files) is first written under a hidden
temporary name beside its final one, then published in one step. An exception, Ctrl-C included,
removes the temporary and leaves nothing behind. A final name that already exists, or that is a
symbolic link (dangling or not), is refused: quantpilot never overwrites a file and never writes
through a link. Files get the mode the process umask gives a new file (0644 with the usual umask),
whatever the writer used for its own temporaries.

Example:
    >>> import tempfile, pathlib
    >>> final = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> with atomic_path(final) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> final.read_text(), sorted(p.name for p in final.parent.iterdir())
    ('hello', ['notes.txt'])
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_directory", "check_new"]


def check_new(final: str | Path) -> Path:
    """`final` as a Path, refused (ValueError) when it exists or is a symbolic link, dangling or not."""
    final = Path(final)
    if final.is_symlink():
        raise ValueError(f"{final} is a symbolic link; quantpilot never writes through a link, choose another path")
    if final.exists():
        raise ValueError(f"{final} already exists; quantpilot never overwrites a file, choose another path")
    return final


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it
    os.umask(mask)
    return mask


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _publish(tmp: Path, final: Path) -> None:
    """Give `tmp` the name `final` in one step, refusing (ValueError) if `final` appeared meanwhile.

    A hard link never replaces an existing name (a symbolic link included); where the file system
    has no hard links the name is checked, then replaced.
    """
    try:
        os.link(tmp, final, follow_symlinks=False)
    except FileExistsError:
        raise ValueError(f"{final} appeared while it was being written; nothing was overwritten") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV):
            raise
        check_new(final)
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final` to write; on normal exit it becomes `final`, on an exception it is removed.

    The temporary is hidden and names the final file (`.model.onnx.tmp-<pid>-<random>`). The parent
    folder is created if needed. Raises ValueError (before anything is written) when `final`
    exists or is a symbolic link.
    """
    final = check_new(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(final)
    try:
        yield tmp
        if not tmp.is_file() or tmp.is_symlink():
            raise RuntimeError(f"nothing was written to {tmp} for {final}")
        os.chmod(tmp, 0o666 & ~_umask())
        _publish(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_directory(final: str | Path, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder whose files, on normal exit, appear in `final`; on an exception it is removed.

    When `final` does not exist the temporary folder (`.{name}.tmp-<pid>-<random>`, beside it) is
    renamed into place, so the folder appears with all its files at once. When `final` is an
    existing folder each file is moved into it in one step, the names in `last` last and in that
    order (a reader looking for the last one finds the others whole); a name that already exists
    there is refused, and if anything fails the files already moved are taken back out. Either way
    the temporary sits beside `final`, not inside it (unless the parent is read-only), so an
    interrupted write leaves no half-written file in the user's folder.
    """
    final = Path(final)
    if final.is_symlink() and not final.exists():
        raise ValueError(f"{final} is a dangling symbolic link; quantpilot never writes through a link")
    if final.exists() and not final.is_dir():
        raise ValueError(f"{final} exists and is not a folder; choose a new or empty folder")
    merge = final.exists()
    # An existing folder may be a link to another file system: stage beside the folder itself.
    base = final.resolve() if merge else final
    base.parent.mkdir(parents=True, exist_ok=True)
    staging = _temp_name(base)
    try:
        staging.mkdir(mode=0o700)
    except PermissionError:
        if not merge:
            raise
        staging = base / f".quantpilot.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
    moved: list[Path] = []
    try:
        yield staging
        files = sorted(p.name for p in staging.iterdir())
        mode = 0o666 & ~_umask()
        for name in files:
            if not (staging / name).is_file() or (staging / name).is_symlink():
                raise RuntimeError(f"{staging / name} is not a plain file; only files are published")
            os.chmod(staging / name, mode)
        if not merge:
            os.chmod(staging, 0o777 & ~_umask())
            try:
                os.rename(staging, final)  # onto an absent name (or an empty folder made meanwhile)
            except OSError as err:
                if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise ValueError(f"{final} appeared while it was being written; nothing was overwritten") from None
                raise
            return
        order = [n for n in files if n not in last] + [n for n in last if n in files]
        for name in order:
            _publish(staging / name, base / name)
            moved.append(base / name)
        staging.rmdir()
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        _remove(staging)
        raise
