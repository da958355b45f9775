"""The `latbench` command. Each command group lives in latbench/commands/<name>.py and exposes
`register(subparsers)`; this file only wires them together and turns errors into one-line messages."""

from __future__ import annotations

import argparse
import importlib
import sys

from latbench import __version__
from latbench.core.errors import LatbenchError

# Command modules, in help order. A module that is not present yet is skipped.
COMMAND_MODULES = ["model", "space", "export", "devices", "profile", "lut", "mes", "search", "demo"]


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
        try:
            module = importlib.import_module(f"latbench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"latbench.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LatbenchError as exc:
        print(f"latbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("latbench: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
