"""Progress: a bar on a terminal, one line per stage elsewhere; transformers' weight-loading bar off.

Every long loop of the library and the command lines (catalogue generation, encoding, index building,
ranking, training) goes through `progress_bar`: on a terminal it is a tqdm bar; when stderr is a file or a
pipe (a log, CI, `nohup`), a bar would write a line per refresh, so the stage writes one line when it
starts and one when it ends instead. `quiet_loading` wraps our own `from_pretrained` calls so that
transformers does not draw its "Loading weights" bar on every command.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


def on_terminal(stream: Any = None) -> bool:
    """Whether progress goes to a terminal (stderr by default, where tqdm writes)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class StageLines:
    """tqdm's interface (update, set_postfix, close, iteration, `with`) writing one line at the start of a
    stage and one at its end, for output that is not a terminal."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        file: Any = None,
    ):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.n = total, desc or "working", unit, initial
        self.file = file
        self.postfix: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.closed = False
        of = f" ({self.total} {unit})" if self.total is not None else ""
        resumed = f", resuming at {initial}" if initial else ""
        self._write(f"{self.desc}: started{of}{resumed}")

    def _write(self, line: str) -> None:
        print(line, file=self.file or sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        post = "".join(f", {k}={v}" for k, v in self.postfix.items())
        seconds = time.perf_counter() - self.started
        self._write(f"{self.desc}: done, {self.n} {self.unit} in {seconds:.1f} s{post}")

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __enter__(self) -> StageLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(StageLines):
    def _write(self, line: str) -> None:
        pass


def progress_bar(iterable: Iterable | None = None, *, disable: bool = False, **kwargs):
    """A tqdm bar on a terminal, else `StageLines`; `disable` silences both (as tqdm's does).

    Takes tqdm's arguments (total, desc, unit, initial, ...); what the line writer does not use is ignored.
    """
    if disable:
        keep = {k: kwargs[k] for k in ("total", "desc", "unit", "initial") if k in kwargs}
        return _Silent(iterable, **keep)
    if on_terminal(kwargs.get("file")):
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    keep = {k: kwargs[k] for k in ("total", "desc", "unit", "initial", "file") if k in kwargs}
    return StageLines(iterable, **keep)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' progress bars ("Loading weights") off inside the block, restored after it."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def first_line(error: BaseException) -> str:
    """An exception's first non-empty message line (its type name when it has none): libraries' multi-line
    messages shortened for a one-line error that names the file or row."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
