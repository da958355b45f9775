"""`latbench model build`: search a table for a subnet that meets a target and write its arch file.

The written file is a normal arch file (`latbench model info|export|profile FILE`); the command also
prints the subnet's per-block latency report from the same table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latbench.commands._output import add_json_flag, console, fmt, print_json


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
    from latbench.core.errors import UsageError
    from latbench.core.fileio import writable_file
    from latbench.report.model import latency_report
    from latbench.space import Arch

    out = Path(args.out)
    if out.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise UsageError(f"--out {out}: an arch file must end in .yaml, .yml or .json")
    writable_file(out, "arch file")
    result, table = search_from_args(args)
    final = result.final.arch
    arch = Arch(final.stages, final.resolution, args.name or out.stem)
    arch.save(out)
    report = latency_report(arch, table, result.mes)
    if args.json:
        print_json({"out": str(out), "next": next_steps(out, table), "arch": arch.to_dict(), "latency_report": report.to_dict(),
                    "accuracy": result.final.accuracy, "oracle": result.oracle,
                    "search": {k: v for k, v in result.to_dict().items() if k != "trajectory"}})
        return 0
    print_result(result)
    print_latency_report(report)
    console().print(f"wrote {out}; next: {' or '.join(f'`{c}`' for c in next_steps(out, table))}", highlight=False)
    return 0


def next_steps(arch_file: Path, table) -> list[str]:
    """Commands worth running on the arch file just written (each tested by running it)."""
    stem = arch_file.with_suffix("")
    return [f"latbench model info {arch_file}",
            f"latbench lut estimate {table.label()} {arch_file}",
            f"latbench export --arch {arch_file} --format onnx --out {stem}-export"]


def print_latency_report(report) -> None:
    """The builder's view of one model on the console: ms per block and per stage, MES."""
    from rich.table import Table

    con = console()
    t = Table(title=f"{report.name}: estimated latency per block ({report.table})")
    for col in ("stage", "block", "count", "isolated ms", "overhead ms", "est. ms", "share"):
        t.add_column(col, overflow="fold")
    for b in report.blocks:
        t.add_row(b["group"], b["key"], fmt(b["count"]), fmt(b["block_ms"]), fmt(b["overhead_ms"]),
                  fmt(b["est_ms"]), f"{b['est_ms'] / report.latency_ms:.1%}")
    con.print(t)
    stages = Table(title="per stage")
    stages.add_column("stage")
    stages.add_column("est. ms")
    for g, v in report.per_stage_ms.items():
        stages.add_row(g, fmt(v))
    stages.add_row("total", fmt(report.latency_ms))
    con.print(stages)
    con.print(f"params {report.params:,}; latency {report.latency_ms:.4g} ms ({report.method}); "
              f"MES {report.mes:.4g}", highlight=False)
    con.print(report.mes_line, highlight=False)
