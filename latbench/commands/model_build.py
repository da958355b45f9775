"""`latbench model build`: search a table for a subnet that meets a target and write its arch file.

The written file is a normal arch file (`latbench model info|export|profile FILE`); the command also
prints the subnet's per-block latency report from the same table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latbench.commands._output import add_json_flag, console, print_json


def register_build(msub: argparse._SubParsersAction) -> None:
    """Add `build` to the `latbench model` subcommands."""
    from latbench.commands.search import add_search_args

    b = msub.add_parser("build", help="search a latency table for a subnet meeting a target; write its arch file")
    add_search_args(b, targets=("latency", "params", "mes"))
    b.add_argument("--out", required=True, metavar="FILE", help="arch file to write (.yaml or .json)")
    b.add_argument("--name", default=None, help="name stored in the arch file (default: the file's stem)")
    add_json_flag(b)
    b.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from latbench.commands.search import print_result, search_from_args
    from latbench.errors import UsageError
    from latbench.report import latency_report
    from latbench.space import Arch

    out = Path(args.out)
    if out.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise UsageError(f"--out {out}: an arch file must end in .yaml, .yml or .json")
    result, table = search_from_args(args)
    final = result.final.arch
    arch = Arch(final.stages, final.resolution, args.name or out.stem)
    arch.save(out)
    report = latency_report(arch, table, result.mes)
    if args.json:
        print_json({"out": str(out), "arch": arch.to_dict(), "latency_report": report.to_dict(),
                    "accuracy": result.final.accuracy, "oracle": result.oracle,
                    "search": {k: v for k, v in result.to_dict().items() if k != "trajectory"}})
        return 0
    print_result(result)
    report.print()
    console().print(f"wrote {out}; next: `latbench model info {out}`, `latbench export {out}`", highlight=False)
    return 0
