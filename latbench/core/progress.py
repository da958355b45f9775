"""Progress of long work: one callback type for every layer, one set of bars for the CLI.

Library code reports progress as `progress(phase, done, total, detail=None)` calls and never
draws anything itself; `phase_progress()` turns those calls into rich bars on stderr (one bar per
phase, so --json stdout stays clean), started on the first call so a command that fails before
doing any work prints nothing but its error.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TextIO


class ProgressFn(Protocol):
    def __call__(self, phase: str, done: int, total: int, detail: str | None = None) -> None: ...


def no_progress(phase: str, done: int, total: int, detail: str | None = None) -> None:
    """A ProgressFn that shows nothing."""


#: Seconds between progress lines when stderr is not a terminal (CI logs, nohup, notebooks).
PLAIN_EVERY_S = 5.0


def plain_progress(stream: TextIO, every_s: float = PLAIN_EVERY_S,
                   clock: Callable[[], float] = time.monotonic) -> ProgressFn:
    """A ProgressFn writing one line per phase every `every_s` seconds, and when a phase completes:
    a bar redrawn in place means nothing in a log file."""
    last: dict[str, float] = {}

    def update(phase: str, done: int, total: int, detail: str | None = None) -> None:
        now = clock()
        finished = total > 0 and done >= total
        state = last.get(phase)  # None: nothing written yet; inf: its completion was written
        if finished and state == math.inf:
            return
        if not finished and state is not None and state != math.inf and now - state < every_s:
            return
        last[phase] = math.inf if finished else now
        stream.write(f"latbench: {phase} {done}/{total}" + (f" {detail}" if detail else "") + "\n")
        stream.flush()

    return update


@contextlib.contextmanager
def phase_progress(enabled: bool = True) -> Iterator[ProgressFn]:
    """Yields a ProgressFn drawing one rich bar per phase name on a terminal, a line every few
    seconds otherwise (a no-op when not enabled)."""
    if not enabled:
        yield no_progress
        return
    if not sys.stderr.isatty():
        yield plain_progress(sys.stderr)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[detail]}"), console=console, transient=False)
    tasks: dict[str, int] = {}

    def update(phase: str, done: int, total: int, detail: str | None = None) -> None:
        if not tasks:
            bar.start()
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total, detail="")
        bar.update(tasks[phase], completed=done, total=total, detail=detail or "")

    try:
        yield update
    finally:
        if tasks:
            bar.stop()
