"""Atomic writes (a killed run never leaves half a file or folder that looks complete), and the checks made
before opening a file someone else named (only regular files, only inside the folders allowed)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where the OS does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` a hidden sibling, flush it, then `os.replace` it onto `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data: dict) -> None:
    """JSON through `write_atomic`: a reader never sees half a file."""
    write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def publish_dir(tmp: Path, final: Path, marker: str | None = None) -> None:
    """Rename a finished folder `tmp` onto `final` (replacing an older one), after writing `marker`."""
    if marker:
        (tmp / marker).write_text("")
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


# ----- reading what others name: only regular files, only inside the allowed folders ---------------------


def is_inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> bool:
    """Whether `path`, with every symlink and `..` resolved, lies inside one of `roots` (also resolved)."""
    real = os.path.realpath(path)
    for root in roots:
        top = os.path.realpath(root)
        if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
            return True
    return False


def regular_file_problem(path: str | os.PathLike, max_bytes: int | None = None) -> str:
    """Why `path` may not be opened ("" when it may): missing, not a regular file (a FIFO, device, socket
    or folder, which could block or never end) or over `max_bytes`. Never opens the file."""
    try:
        info = os.stat(os.path.realpath(path))
    except OSError:
        return "no such file"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if max_bytes is not None and info.st_size > max_bytes:
        return f"{info.st_size} bytes, over the {max_bytes}-byte limit"
    return ""


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; OSError otherwise. The file is opened
    non-blocking and checked again on the open descriptor, so a FIFO swapped in after a check never blocks."""
    problem = regular_file_problem(path, max_bytes)
    if problem:
        raise OSError(f"{path}: {problem}")
    fd = os.open(
        os.path.realpath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    )
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            raise OSError(
                f"{path}: changed while being opened (not a regular file of at most {max_bytes} bytes)"
            )
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"{path}: grew past the {max_bytes}-byte limit while being read")
    return data
