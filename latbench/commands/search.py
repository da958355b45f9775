"""`latbench search`: Algorithm 1 of EfficientFormerV2 over a latency table and an accuracy oracle."""

from __future__ import annotations

import argparse

from latbench.commands import _config
from latbench.commands._output import (
    add_json_flag,
    add_progress_flag,
    console,
    print_json,
    print_table,
    shows_progress,
)
from latbench.commands.mes import add_mes_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="fine-grained joint search (depth, width, expansion) to a target")
    add_search_args(p, targets=("latency", "params", "mes"))
    p.add_argument("--out", default="search-result", metavar="DIR",
                   help="trajectory, Pareto-set arch files and report (default search-result)")
    add_json_flag(p)
    add_progress_flag(p)
    p.set_defaults(func=run)


def add_search_args(p: argparse.ArgumentParser, targets: tuple[str, ...]) -> None:
    p.add_argument("--lut", default=None, metavar="TABLE",
                   help="latency table: directory or name under tables/ (default: `table` in latbench.toml)")
    p.add_argument("--space", default=None, metavar="FILE",
                   help="search space (default: the table's own space, else the shipped one)")
    p.add_argument("--accuracy", required=True, metavar="ORACLE",
                   help="'proxy' (a labelled demo proxy), pkg.module:function (called with an Arch, returns top-1 %%), "
                        "or a CSV/YAML of measured accuracies keyed by arch digest or name")
    t = p.add_mutually_exclusive_group(required=True)
    if "latency" in targets:
        t.add_argument("--target-latency", default=None, metavar="MS", help="stop at latency <= MS")
    if "params" in targets:
        t.add_argument("--target-params", default=None, metavar="N", help="stop at params <= N (e.g. 5M)")
    if "mes" in targets:
        t.add_argument("--target-mes", default=None, metavar="X", help="stop at MES >= X")
    p.add_argument("--seed", type=int, default=0, help="breaks exact ties between actions")
    p.add_argument("--max-steps", type=int, default=None, help="give up after this many steps")
    add_mes_flags(p)


def search_from_args(args: argparse.Namespace, out: str | None = None):
    """Run the search the parsed args describe (through the API). Returns (result, table)."""
    from latbench import api

    table = api.load_table(_config.table_arg(args.lut))
    result = api.run_search(table, args.accuracy, target_latency=getattr(args, "target_latency", None),
                        target_params=getattr(args, "target_params", None),
                        target_mes=getattr(args, "target_mes", None), space=args.space, seed=args.seed,
                        max_steps=args.max_steps, mes_config=args.mes_config, latency_unit=args.latency_unit,
                        size_unit=args.size_unit, alpha_latency=args.alpha_latency, alpha_size=args.alpha_size,
                        out=out, progress=shows_progress(args))
    return result, table


def print_result(result) -> None:
    rows = [(s.step, s.action or "start", s.params, s.latency_ms, s.mes, s.accuracy, s.ratio,
             "yes" if s.pareto else "") for s in result.steps]
    if len(rows) > 25:  # the full trajectory is in the output files
        rows = rows[:10] + [("...",) + ("",) * 7] + rows[-10:]
    acc_col = "proxy top-1" if result.oracle["is_proxy"] else "top-1"
    print_table(f"search trajectory ({result.target.describe()})",
                ["step", "action", "params", "latency ms", "MES", acc_col, "drop/gain", "Pareto"], rows)
    f = result.final
    con = console()
    con.print(f"final {f.arch.name}: {f.arch.compact()}; {f.params:,} params, {f.latency_ms:.4g} ms, "
              f"MES {f.mes:.4g}, {acc_col} {f.accuracy:.2f}", highlight=False)
    con.print(result.mes.describe(), highlight=False)
    con.print(f"accuracy: {result.oracle['label']}", highlight=False)
    for n in result.notes:
        con.print(f"[yellow]note:[/] {n}", highlight=False)


def run(args: argparse.Namespace) -> int:
    result, _ = search_from_args(args, out=args.out)
    files = result.files
    if args.json:
        d = result.to_dict()
        d["out"] = args.out
        d["files"] = sorted(files)
        print_json(d)
        return 0
    print_result(result)
    console().print(f"wrote {len(files)} files to {args.out} (final.yaml, pareto/, trajectory.csv, report.md, ...)",
                    highlight=False)
    return 0
