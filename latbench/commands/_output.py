"""Shared output helpers: JSON for scripts, rich tables for people."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from latbench.core.fileio import dumps


def print_json(obj: Any) -> None:
    """Strict JSON on stdout: missing values are null, never NaN."""
    sys.stdout.write(dumps(obj) + "\n")


#: Width of output that is not a terminal (a file, a pipe, a notebook): wide enough for any table.
PIPE_WIDTH = 4096


def console() -> Console:
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table whose cells are never split: a key cut in two cannot be copied. On a narrow
    terminal the table grows past the edge rather than folding a cell."""
    cells = [[fmt(v) for v in row] for row in rows]
    table = Table(title=title)
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    for col in columns:
        table.add_column(col, no_wrap=True)
    for row in cells:
        table.add_row(*row)
    out = console()
    needed = sum(widths) + 3 * len(widths) + 1  # cell padding and borders
    if out.width < needed:  # rich would squeeze columns to nothing or cut cells
        out = Console(soft_wrap=True, width=needed)
    out.print(table)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN: a missing value, shown blank (never "nan")
            return ""
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")


def add_progress_flag(parser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (default: bars on a terminal, a line every few seconds otherwise)")


def shows_progress(args) -> bool:
    """Progress goes to stderr unless --no-progress. With --json too (a scripted half-hour
    validation should still log how far it is), except where stderr is stdout (`2>&1`) or that
    cannot be told: there a progress line would break the JSON."""
    if getattr(args, "no_progress", False):
        return False
    return not getattr(args, "json", False) or separate_streams()


def separate_streams() -> bool:
    """Whether stdout and stderr are open on different files or pipes."""
    try:
        out, err = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # replaced streams (capture, notebooks): unknown
        return False
    return (out.st_dev, out.st_ino) != (err.st_dev, err.st_ino)
