"""Progress of long work: one callback type for every layer, one set of bars for the CLI.

Library code reports progress as `progress(phase, done, total, detail=None)` calls and never
draws anything itself; `phase_progress()` turns those calls into rich bars on stderr (one bar per
phase, so --json stdout stays clean), started on the first call so a command that fails before
doing any work prints nothing but its error.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol


class ProgressFn(Protocol):
    def __call__(self, phase: str, done: int, total: int, detail: str | None = None) -> None: ...


def no_progress(phase: str, done: int, total: int, detail: str | None = None) -> None:
    """A ProgressFn that shows nothing."""


@contextlib.contextmanager
def phase_progress(enabled: bool = True) -> Iterator[ProgressFn]:
    """Yields a ProgressFn drawing one rich bar per phase name (a no-op when not enabled)."""
    if not enabled:
        yield no_progress
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

    console = Console(stderr=True, force_terminal=None if sys.stderr.isatty() else False)
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
