"""The `latbench` command. Each command group lives in latbench/commands/<name>.py and exposes
`register(subparsers)`; this file only wires them together and turns errors into one-line messages."""

from __future__ import annotations

import argparse
import importlib
import signal
import sqlite3
import sys
import threading

from latbench import __version__
from latbench.core.errors import LatbenchError
from latbench.core.text import first_line

# Command modules, in help order; each must exist (a renamed one fails loudly, in tests first).
COMMAND_MODULES = ["model", "space", "export", "devices", "profile", "lut", "mes", "search", "demo", "agent"]


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus error over several lines; users get one line and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="latbench", description="Measured on-device latency for mobile vision models.")
    parser.add_argument("--version", action="version", version=f"latbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"latbench.commands.{name}").register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds like Ctrl-C: export workers and devices
    are stopped by the same handlers, and finished work is already in the journal."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        return _main(argv)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()  # reads latbench.toml defaults, which can be wrong
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a one-line argparse error: already printed
            return int(exc.code or 0)
        return int(args.func(args) or 0)
    except LatbenchError as exc:
        print(f"latbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `latbench ... | head`
        return 0
    except sqlite3.Error as exc:  # a journal that broke after it was opened (disk full, cut by another process)
        print(f"latbench: error: a table journal failed ({first_line(exc)}); re-run to resume, or "
              f"`latbench lut repair TABLE` once the journal is whole", file=sys.stderr)
        return 1
    except OSError as exc:  # a path that cannot be read or written, a full disk: one line, exit 1
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"latbench: error: {exc.strerror or first_line(exc)}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        what, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"latbench: {what}; finished work is kept, re-run to resume", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
