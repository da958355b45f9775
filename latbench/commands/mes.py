"""`latbench mes report`: rank candidates by Mobile Efficiency Score, with accuracy and Pareto flags."""

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
from latbench.commands._runner import add_runner_flags, device_options

DEFAULT_REPORT_DIR = "mes-report"


def register(sub: argparse._SubParsersAction) -> None:
    mes = sub.add_parser("mes", help="Mobile Efficiency Score reports")
    msub = mes.add_subparsers(dest="mes_command", metavar="SUBCOMMAND", parser_class=type(mes))
    msub.required = True
    r = msub.add_parser("report", help="rank candidates by MES with params, MACs, latency, accuracy and Pareto flags")
    r.add_argument("candidates", nargs="+", metavar="CANDIDATE",
                   help="model names (e.g. efficientformerv2_s0), arch files, or a YAML list of them")
    r.add_argument("--lut", default=None, metavar="TABLE",
                   help="latency table: directory or name under tables/ (default: `table` in latbench.toml)")
    r.add_argument("--accuracy", default=None, metavar="FILE",
                   help="top-1 accuracies (CSV/YAML keyed by name or arch digest); published figures of "
                        "S0-L, MobileNetV2 and MobileViT are used (and labelled) otherwise")
    r.add_argument("--measure", default=None, metavar="DEVICE",
                   help="also measure every candidate end to end on DEVICE (e.g. cpu)")
    r.add_argument("--rounds", type=int, default=3, help="measurement rounds with --measure (samples pooled)")
    from latbench.export.common import PRECISIONS

    r.add_argument("--dtype", choices=PRECISIONS, default=None,
                   help="with --measure: the precision models are exported in (default: the table's, so an int8 "
                        "table is compared with int8 models)")
    add_runner_flags(r)
    r.add_argument("--out", default=None, metavar="DIR",
                   help="write the report files here (default mes-report; with --json only when given)")
    add_mes_flags(r, columns=True)
    add_json_flag(r)
    add_progress_flag(r)
    r.set_defaults(func=run_report)


def add_mes_flags(p: argparse.ArgumentParser, columns: bool = False) -> None:
    g = p.add_argument_group("MES constants (printed with every output)")
    g.add_argument("--mes-config", default=None, metavar="FILE", help="YAML with score and metrics (see latbench.efficiency.score)")
    g.add_argument("--latency-unit", default=None, metavar="reference|MS",
                   help="latency unit: 'reference' (MobileNetV2-1.0 on the same table; default) or a fixed "
                        "value such as 1ms (the paper's)")
    g.add_argument("--size-unit", default=None, metavar="N",
                   help="size unit in parameters (default 3M); for an int8 table in MB of the model file (default 3)")
    g.add_argument("--alpha-latency", type=float, default=None, metavar="A", help="latency exponent (default 1.0)")
    g.add_argument("--alpha-size", type=float, default=None, metavar="A", help="size exponent (default 0.5)")
    if columns:  # column metrics exist only for listed candidates, not for subnets a search invents
        g.add_argument("--metrics", default=None, metavar="CSV",
                       help="candidates' extra metric values (name + one column per 'column:NAME' metric)")


def mes_config_from_args(args: argparse.Namespace):
    from latbench.efficiency.score import MESConfig, config_with_overrides

    config = MESConfig.load(args.mes_config) if args.mes_config else MESConfig()
    return config_with_overrides(config, latency_unit=args.latency_unit, size_unit=args.size_unit,
                                 alpha_latency=args.alpha_latency, alpha_size=args.alpha_size)


def resolve_mes(args: argparse.Namespace, table):
    from latbench.efficiency.score import resolve

    return resolve(mes_config_from_args(args), table)


def run_report(args: argparse.Namespace) -> int:
    from latbench import api

    if args.out is None and not args.json:  # --json readers want stdout, not files in the working directory
        args.out = DEFAULT_REPORT_DIR
    table = _config.table_arg(args.lut)
    options = device_options(args.measure, args, configured=False) if args.measure else {}
    report = api.mes_report(table, args.candidates, accuracy=args.accuracy, measure=args.measure,
                            rounds=args.rounds, out=args.out, mes_config=args.mes_config,
                            latency_unit=args.latency_unit, size_unit=args.size_unit,
                            alpha_latency=args.alpha_latency, alpha_size=args.alpha_size, metrics=args.metrics,
                            dtype=args.dtype, progress=shows_progress(args), **options)
    if args.json:
        print_json(report.json_rows())
        return 0
    print_report(report)
    files = getattr(report, "files", {}) or {}
    console().print(f"wrote {', '.join(sorted(p.name for p in files.values()))} to {args.out}", highlight=False)
    return 0


def print_report(report) -> None:
    """The report on the console: the ranked table, its header lines and the accuracy sources."""
    from latbench.report.model import display_frame, header_lines

    df = display_frame(report)
    cols = [c for c in df.columns if c != "accuracy_source" and not (c.endswith("_ms") and c not in
                                                                      ("latency_ms", "measured_ms"))]
    print_table(report.title, cols, df[cols].itertuples(index=False))
    for line in header_lines(report):
        console().print(line, highlight=False)
    sources = sorted({r.accuracy_source for r in report.rows if r.accuracy_source})
    for s in sources:
        console().print(f"accuracy source: {s}", highlight=False)
