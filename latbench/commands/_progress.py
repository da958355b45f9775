"""Progress bars on stderr (so --json stdout stays clean)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def phase_progress(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Yields progress(phase, done, total); one bar per phase name."""
    if not enabled:
        yield lambda phase, done, total: None
        return
    console = Console(stderr=True, force_terminal=None if sys.stderr.isatty() else False)
    # Started on the first update, so a command that fails before any work prints nothing else.
    bar = Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=False)
    tasks: dict[str, int] = {}

    def update(phase: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()
