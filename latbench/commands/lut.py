"""`latbench lut build|show|diff|estimate|validate`."""

from __future__ import annotations

import argparse
import math
from typing import Any

from latbench.blocks.candidates import resolve_candidates
from latbench.commands import _config
from latbench.commands._farm import (
    add_cluster_flag,
)
from latbench.commands._output import (
    add_json_flag,
    add_progress_flag,
    console,
    print_json,
    print_table,
    shows_progress,
)
from latbench.commands._runner import (
    add_device_flag,
    add_runner_flags,
    device_list,
    device_options,
)
from latbench.commands._types import positive_int, positive_seconds
from latbench.core.fileio import writable_file
from latbench.measuring.noise import NoiseProfile
from latbench.tables.overhead import WEIGHTS
from latbench.tables.table import LatencyTable, find_table

DEFAULT_SPACE = "__default__"


def register(sub: argparse._SubParsersAction) -> None:
    lut = sub.add_parser("lut", help="latency lookup tables: build, show, diff, estimate, validate")
    lsub = lut.add_subparsers(dest="lut_command", metavar="SUBCOMMAND", parser_class=type(lut))
    lsub.required = True

    b = lsub.add_parser("build", help="measure every block a space (or model) needs on a device")
    add_device_flag(b, multiple=True)
    add_cluster_flag(b, "measure")
    b.add_argument("--separate-tables", action="store_true",
                   help="several devices: build one table per device instead of pooling them into one")
    b.add_argument("--pool-tolerance", type=float, default=None, metavar="FRACTION",
                   help="several devices: how much slower than the fastest a device may be and still share "
                        "the table (default 0.05)")
    b.add_argument("--space", nargs="?", const=DEFAULT_SPACE, default=None, metavar="FILE",
                   help="all blocks of a search space (default space if FILE is omitted)")
    b.add_argument("--model", action="append", default=[], metavar="NAME", help="only the blocks NAME needs")
    b.add_argument("--arch", action="append", default=[], metavar="FILE", help="only the blocks an arch file needs")
    b.add_argument("--resolution", type=positive_int, action="append", default=None, help="resolution(s) (default: the space's)")
    b.add_argument("--out", default=None, help="table directory (default tables/<device>/<space>-r<resolution>)")
    b.add_argument("--jobs", type=int, default=2, help="export worker processes")
    b.add_argument("--force", action="store_true", help="re-measure everything")
    b.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds per entry; entries whose rounds disagree get more, up to --max-rounds")
    b.add_argument("--max-rounds", type=int, default=8, help="bound on the rounds of an entry (default 8), in rounds of full length: where the "
                        "device's rules take the best of many short rounds, five short count as one")
    b.add_argument("--runs", type=int, default=None, help="fixed timed runs per measurement (default adaptive)")
    b.add_argument("--time-cap", type=positive_seconds, default=1.5, metavar="S",
                   help="adaptive sampling: at most S seconds per block measurement (default 1.5)")
    b.add_argument("--precision", default="2%", metavar="P",
                   help="precision each entry is held to where the device allows it (default 2%%); the rules "
                        "(tolerance, rounds, spacing) follow from the device's measured noise")
    b.add_argument("--budget", default=None, metavar="DURATION",
                   help="stop starting new rounds after this much measuring (e.g. 10m, 90s); the build states the "
                        "precision it reached")
    b.add_argument("--dtype", choices=_dtypes(), default=None,
                   help="precision of the artifacts measured (default: the device's, fp32 on cpu); int8 is "
                        "quantized in the device's format (QDQ ONNX, full-integer TFLite, W8A8 Core ML) and gets its "
                        "own default directory (...-r224-int8)")
    b.add_argument("--fixed-rules", action="store_true",
                   help="use the consensus rule as given (--max-rounds, 2%% tolerance) instead of rules derived "
                        "from the device's noise")
    b.add_argument("--no-cool-down", action="store_true",
                   help="never pause for a hot device (default: pause while it throttles or its anchors slow down)")
    b.add_argument("--no-reference", action="store_true",
                   help="with --space: skip measuring MobileNetV2-1.0 whole (the MES latency unit)")
    b.add_argument("--calibrate", type=int, default=8, metavar="N",
                   help="whole models measured end to end to fit the overhead model (space builds; 0: none)")
    b.add_argument("--upgrade", nargs="?", const=0, type=positive_int, default=None, metavar="N",
                   help="an adapted table (--out DIR): measure its predicted entries, all of them or the N least "
                        "certain, and refit the rest; all of them: with a full build's calibration models "
                        "(device: the table's unless --device)")
    b.add_argument("--detach", action="store_true",
                   help="remote devices (aihub): submit the jobs and return; run the build again to collect them")
    add_runner_flags(b)
    add_json_flag(b)
    add_progress_flag(b)
    b.set_defaults(func=run_build)

    a = lsub.add_parser("adapt", help="a table for a new device from measured tables of other devices and a few "
                                      "measurements on it")
    a.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="fully measured tables of one space and resolution (directories or names under tables/)")
    add_device_flag(a, what="the target device id", multiple=True)
    add_cluster_flag(a, "measure")
    a.add_argument("--pool-tolerance", type=float, default=None, metavar="FRACTION",
                   help="several devices: how much slower than the fastest a device may be and still share "
                        "the table (default 0.05)")
    a.add_argument("--budget", type=int, default=None, metavar="N",
                   help="measurements on the target: blocks and whole models (default 20; below one block per "
                        "kind, the kinds carrying most of a typical model's latency are measured first)")
    a.add_argument("--calibrate", type=int, default=None, metavar="N",
                   help="whole models measured within the budget to calibrate the table (default: 3, fewer "
                        "where the budget would leave under 2 blocks; from 3 on, the last is the "
                        "attention-free twin of one of the others)")
    a.add_argument("--out", required=True, help="the adapted table's directory (rerun the same command to resume)")
    a.add_argument("--jobs", type=int, default=2, help="export worker processes")
    a.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measured entry")
    a.add_argument("--max-rounds", type=int, default=8, help="bound on the rounds of an entry (default 8), in rounds of full length: where the "
                        "device's rules take the best of many short rounds, five short count as one")
    a.add_argument("--runs", type=int, default=None, help="fixed timed runs per measurement (default adaptive)")
    a.add_argument("--time-cap", type=positive_seconds, default=1.5, metavar="S",
                   help="adaptive sampling: at most S seconds per block measurement (default 1.5)")
    a.add_argument("--precision", default="2%", metavar="P", help="precision each measured entry is held to (default 2%%)")
    a.add_argument("--seed", type=int, default=0, help="seed of the calibration models drawn")
    a.add_argument("--dtype", choices=_dtypes(), default=None,
                   help="precision of the artifacts measured on the target (default: int8 when the sources are "
                        "int8 tables, else the device's); fp32 sources may adapt to an fp16 target")
    a.add_argument("--detach", action="store_true",
                   help="remote devices (aihub): submit the jobs and return; run the adapt again to collect them")
    add_runner_flags(a)
    add_json_flag(a)
    add_progress_flag(a)
    a.set_defaults(func=run_adapt)

    s = lsub.add_parser("show", help="summarise a table")
    s.add_argument("table", nargs="?", help="latency table: its directory, or a name under tables/ (e.g. cpu/efficientformerv2-r224); default: `table` in latbench.toml")
    add_json_flag(s)
    s.set_defaults(func=run_show)

    d = lsub.add_parser("diff", help="per-key latency ratios B/A and their median per block kind (compare devices, runtime "
                             "versions, or an fp32 and an int8 table)")
    d.add_argument("a", help="the first table (directory or name), e.g. tables/cpu/efficientformerv2-r224")
    d.add_argument("b", help="the second table, e.g. tables/android_R5CT/efficientformerv2-r224")
    add_json_flag(d)
    d.set_defaults(func=run_diff)

    e = lsub.add_parser("estimate", help="estimated latency of models from a table")
    e.add_argument("table", help="latency table: its directory, or a name under tables/ (e.g. cpu/efficientformerv2-r224)")
    e.add_argument("targets", nargs="+", metavar="MODEL|ARCH_FILE",
                   help="registered model names (e.g. efficientformerv2_s1) or arch .yaml/.json files")
    e.add_argument("--resolution", type=positive_int, default=None,
                   help="resolve named models at this input resolution (default: each model's own)")
    e.add_argument("--strict", action="store_true", help="error (not warn) when the table is stale for its device")
    add_json_flag(e)
    e.set_defaults(func=run_estimate)

    v = lsub.add_parser("validate", help="compare estimates with end-to-end measurements on the device")
    v.add_argument("table", nargs="?", help="latency table: its directory, or a name under tables/ (e.g. cpu/efficientformerv2-r224); default: `table` in latbench.toml")
    v.add_argument("--device", default=None, metavar="ID", help="device id (default: the table's)")
    v.add_argument("--samples", type=int, default=12, help="random subnets (plus S0-L)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--rounds", type=int, default=3, help="interleaved rounds per pass (more until they agree)")
    v.add_argument("--passes", type=int, default=2,
                   help="separated passes over all models (>= 2): their spread is the noise floor; a model "
                        "whose fastest pass no other confirms within 10 %% gets up to 2 extra passes")
    v.add_argument("--no-named", action="store_true", help="skip S0-L")
    v.add_argument("--jobs", type=int, default=2)
    v.add_argument("--out", default=None, help="also write the JSON result to this file")
    v.add_argument("--keep-journal", default=None, metavar="DIR",
                   help="keep every raw measurement of the validation (one journal per pass) in DIR")
    v.add_argument("--strict", action="store_true")
    add_runner_flags(v)
    add_json_flag(v)
    add_progress_flag(v)
    v.set_defaults(func=run_validate)

    r = lsub.add_parser("repair", help="rederive a damaged table's CSVs and meta.json from its journal")
    r.add_argument("table", help="table directory holding journal.sqlite, e.g. tables/cpu/efficientformerv2-r224")
    add_json_flag(r)
    r.set_defaults(func=run_repair)

    c = lsub.add_parser("check", help="re-measure entries and report (or --fix) those that moved beyond the noise")
    c.add_argument("table", nargs="?", help="latency table: its directory, or a name under tables/ (e.g. cpu/efficientformerv2-r224); default: `table` in latbench.toml")
    c.add_argument("--device", default=None, metavar="ID", help="device id (default: the table's)")
    c.add_argument("--sample", dest="sample", type=int, default=None, help=argparse.SUPPRESS)  # the old name
    c.add_argument("--samples", dest="sample", type=int, default=None, metavar="N",
                   help="check N entries drawn at random, flagged entries first (default: all)")
    c.add_argument("--key", action="append", default=[], metavar="KEY", help="check this entry (repeatable)")
    c.add_argument("--rounds", type=int, default=3, help="rounds per entry (more until they agree)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--fix", action="store_true",
                   help="record the new rounds of moved and flagged entries in the journal and rederive the table")
    add_runner_flags(c)
    add_json_flag(c)
    add_progress_flag(c)
    c.set_defaults(func=run_check)


def _dtypes() -> tuple[str, ...]:
    from latbench.export.common import PRECISIONS

    return PRECISIONS


# -- build ------------------------------------------------------------------------------------------
def run_build(args: argparse.Namespace) -> int:
    from latbench import api

    extra = {"detach": True} if args.detach else {}
    if args.upgrade is None and args.space is None and not args.model and not args.arch and args.out \
            and _adapted(args.out):
        args.upgrade = 0  # `lut build --out ADAPTED`: measure what the adapted table predicts, all of it
    if args.upgrade is not None:
        return run_upgrade(args, extra)
    results = api.build_tables(
        args.device, cluster=args.cluster, separate_tables=args.separate_tables, pool_tolerance=args.pool_tolerance,
        space=None if args.space is None else (True if args.space == DEFAULT_SPACE else args.space),
        models=args.model, archs=args.arch, resolutions=args.resolution, out=args.out, calibrate=args.calibrate,
        reference=not args.no_reference, rounds=args.rounds, max_rounds=args.max_rounds, runs=args.runs,
        jobs=args.jobs, time_cap=args.time_cap, force=args.force, progress=shows_progress(args),
        device_options=lambda device_id: device_options(device_id, args, **extra),
        precision=None if args.fixed_rules else args.precision, budget=args.budget,
        cool_down=not args.no_cool_down, dtype=args.dtype)
    report_builds(results, args.json)
    return 0


def _adapted(out: str) -> bool:
    """Whether `out` holds an adapted table (its meta.json records the adaptation)."""
    import json
    from pathlib import Path

    try:
        return bool(json.loads((Path(out) / "meta.json").read_text()).get("adapt"))
    except (OSError, ValueError, AttributeError):
        return False


def run_upgrade(args: argparse.Namespace, extra: dict[str, Any]) -> int:
    """`lut build --upgrade [N] --out DIR`: measure an adapted table's predicted entries."""
    from latbench import api
    from latbench.core.errors import UsageError

    if args.out is None:
        raise UsageError("--upgrade names the adapted table with --out DIR")
    if args.device and len(args.device) > 1 or args.cluster is not None:
        raise UsageError("--upgrade measures on one device: give at most one --device, no --cluster")
    table = api.load_table(args.out)
    device = args.device[0] if args.device else _config.default_device(table.meta.get("device_id"))
    result = api.upgrade_table(table, device, count=args.upgrade or None, rounds=args.rounds,
                               max_rounds=args.max_rounds, runs=args.runs, jobs=args.jobs, time_cap=args.time_cap,
                               precision=None if args.fixed_rules else args.precision, progress=shows_progress(args),
                               **device_options(device, args, configured=False, **extra))
    report_builds([result], args.json)
    return 0


# -- adapt ------------------------------------------------------------------------------------------
def run_adapt(args: argparse.Namespace) -> int:
    from latbench import api

    devices = device_list(args)
    extra = {"detach": True} if args.detach else {}
    result = api.adapt_table(args.sources, devices, out=args.out, budget=args.budget, calibrate=args.calibrate,
                             rounds=args.rounds, max_rounds=args.max_rounds, runs=args.runs, jobs=args.jobs,
                             time_cap=args.time_cap, precision=args.precision, seed=args.seed, dtype=args.dtype,
                             cluster=args.cluster, pool_tolerance=args.pool_tolerance, progress=shows_progress(args),
                             **device_options(devices[0], args, **extra))
    summary = build_summary(result)
    adapted = result.table.meta.get("adapt") or {}
    predicted = result.table.predicted()
    summary["adapt"] = {"sources": adapted.get("sources"), "budget": adapted.get("budget"),
                        "selected": adapted.get("selected"), "calibration": adapted.get("calibration"),
                        "measured": adapted.get("measured"), "predicted": adapted.get("predicted"),
                        "unmeasured_kinds": adapted.get("unmeasured_kinds") or [],
                        "median_uncertainty_pct": _median(list(predicted.values())),
                        "max_uncertainty_pct": max(predicted.values()) if predicted else None,
                        "transfer_model": adapted.get("transfer_model")}
    if args.json:
        print_json(summary)
        return 0
    report_builds([result], False)
    a = summary["adapt"]
    console().print(f"adapted from {', '.join(s['path'] for s in a['sources'] or [])}: {a['measured']} entries "
                    f"measured (budget {a['budget']}, {len(a['calibration'] or [])} whole models among them), "
                    f"{a['predicted']} predicted", highlight=False)
    if a["unmeasured_kinds"]:
        console().print(f"kinds not measured (budget below one entry per kind; predicted from the pooled ratio): "
                        f"{', '.join(a['unmeasured_kinds'])}", highlight=False)
    if predicted:
        console().print(f"predicted entries: median uncertainty +-{a['median_uncertainty_pct']:.1f} %, largest "
                        f"+-{a['max_uncertainty_pct']:.1f} %; measure them with `latbench lut build --upgrade [N] "
                        f"--out {result.table.path}`", highlight=False)
    return 0


def _median(values: list[float]) -> float | None:
    finite = sorted(v for v in values if v == v)
    return finite[len(finite) // 2] if finite else None


#: Flagged entries a build's report names one per line; the rest are counted.
SHOWN_FLAGGED = 12


def report_builds(results: list, as_json: bool) -> None:
    """What a build did, as JSON or on the console."""
    summary = [build_summary(res) for res in results]
    if as_json:
        print_json(summary)
    else:
        for s in summary:
            console().print(
                f"[bold]{s['table']}[/]: {s['blocks']} blocks, measured {s['measured_now']} (key, round) pairs now, "
                f"{s['reused']} blocks reused; total {s['timings'].get('total_s', 0):.1f} s "
                f"(timed runs {s['timings'].get('timed_runs_s', 0):.1f} s, export {s['timings'].get('export_s', 0):.1f} s)"
            )
            ov = s["overhead"]
            if ov.get("calibrated"):
                console().print(f"overhead model: {describe_scales(ov)}, fitted on {', '.join(ov['calibrated_on'])}",
                                highlight=False)
            else:
                console().print("[yellow]warning:[/] the table is uncalibrated (no whole model measured end to end)",
                                highlight=False)
            if s.get("noise_profile"):
                console().print(NoiseProfile.from_dict(s["noise_profile"]).summary(), highlight=False)
            rules = s.get("rules") or {}
            if rules.get("why"):
                console().print(f"rules: {rules['why']}; tolerance {rules['achievable']:.1%}, up to "
                                f"{rules['consensus']['max_rounds']} rounds, extra rounds >= "
                                f"{rules['min_separation_s']:.0f} s apart", highlight=False)
            for pause in s.get("pauses") or []:
                console().print(f"[yellow]cool-down:[/] paused {pause['seconds']:.0f} s (anchor "
                                f"{pause['trigger_ratio'] - 1:+.0%}{', throttling' if pause['throttling'] else ''}); "
                                f"resumed at {pause['after_ratio'] - 1:+.0%}", highlight=False)
            level = s.get("level_check")
            if level:
                found = ("[yellow]the anchors read faster[/]: what was measured before was measured again"
                         if level["faster"] else "the anchors held their level")
                console().print(f"level check: measuring took {level['from_s']:.0f} s, anchors read until "
                                f"{level['to_s']:.0f} s (level span {level['span_s']:g} s, $LATBENCH_LEVEL_SPAN_S); "
                                f"{found}", highlight=False)
            budget = s.get("budget")
            if budget and budget.get("stopped"):
                console().print(f"[yellow]budget:[/] stopped after {budget['used_s']:.0f} s of "
                                f"{budget['budget_s']:.0f} s: {budget['agreed']} of {budget['entries']} entries met "
                                f"the {budget['precision']:.1%} rule; run the build again to go on", highlight=False)
            c = s["consensus"]
            console().print(f"consensus: {c['agreed']} of {s['blocks']} entries agreed within "
                            f"{c['tolerance']:.1%}; {c['extra_rounds']} extra round(s) measured", highlight=False)
            if s["pending"]:
                console().print(f"[yellow]pending:[/] {len(s['pending'])} measurement(s) left running on "
                                f"{s['device']}; run the same build again to collect them", highlight=False)
            flagged = list(s["flagged"].items())
            for key, flags in flagged[:SHOWN_FLAGGED]:
                console().print(f"[yellow]flagged:[/] {key} ({flags})", highlight=False)
            if len(flagged) > SHOWN_FLAGGED:
                console().print(f"[yellow]flagged:[/] ... and {len(flagged) - SHOWN_FLAGGED} more "
                                f"(all in `latbench lut show {s['table']}` or --json)", highlight=False)


def build_summary(res) -> dict[str, Any]:
    t = res.table
    rule = t.meta.get("consensus") or {}
    rounds = t.blocks["rounds"].astype(int) if len(t.blocks) else []
    return {"table": str(t.path), "blocks": int(len(t.blocks)), "measured_now": len(res.measured),
            "reused": res.reused, "timings": res.timings, "overhead": t.overhead,
            "device": t.meta.get("device_id"),
            "consensus": {"agreed": int(t.blocks["consensus"].astype(bool).sum()) if len(t.blocks) else 0,
                          "tolerance": rule.get("tolerance"), "rule": rule.get("rule"),
                          "extra_rounds": int(sum(max(0, n - rule.get("min_rounds", 3)) for n in rounds))},
            "flagged": t.flagged(),
            "pending": list(res.session.report.get("pending", [])) if res.session is not None else [],
            "noise_profile": t.meta.get("noise_profile"), "rules": t.meta.get("measuring_rules"),
            "pauses": list(res.session.report.get("pauses", [])) if res.session is not None else [],
            "level_check": res.session.report.get("level_check") if res.session is not None else None,
            "budget": res.session.report.get("budget") if res.session is not None else None}


# -- show / diff ------------------------------------------------------------------------------------
def run_show(args: argparse.Namespace) -> int:
    table = LatencyTable.load(find_table(_config.table_arg(args.table)))
    blocks = table.blocks.sort_values("latency_ms", ascending=False)
    flagged = table.flagged()
    predicted = table.predicted()
    if args.json:
        print_json({"table": str(table.path), "meta": table.meta, "flagged": flagged, "predicted": predicted,
                    "blocks": _records(blocks), "models": _records(table.models)})
        return 0
    dev = table.device
    console().print(f"[bold]{table.path}[/] — {table.meta.get('device_id')} {dev.get('device_model') or ''} "
                    f"{dev.get('soc') or ''}; {dev.get('runtime')} {dev.get('runtime_version')}, "
                    f"threads {dev.get('threads')}; latbench {table.meta.get('latbench_version')}; "
                    f"updated {table.meta.get('updated')}")
    by_kind = blocks.groupby("kind")["latency_ms"].agg(["count", "median", "min", "max"])
    if predicted:  # an adapted table: say per kind how much is predicted, and mark each predicted entry
        kinds = dict(zip(blocks["key"], blocks["kind"]))
        per_kind = {k: sum(1 for key in predicted if kinds[key] == k) for k in by_kind.index}
        print_table("blocks per kind (ms)", ["kind", "count", "predicted", "median", "min", "max"],
                    [(k, int(r["count"]), per_kind[k], r["median"], r["min"], r["max"]) for k, r in by_kind.iterrows()])
    else:
        print_table("blocks per kind (ms)", ["kind", "count", "median", "min", "max"],
                    [(k, int(r["count"]), r["median"], r["min"], r["max"]) for k, r in by_kind.iterrows()])

    def source(key: str) -> str:
        return f"PREDICTED +-{predicted[key]:.1f}%" if key in predicted else "measured"

    print_table("slowest blocks", ["key", "latency ms", "source", "agreement", "p5", "p95", "n"],
                [(r["key"], r["latency_ms"], source(r["key"]), r["agreement"], r["p5_ms"], r["p95_ms"], r["n"])
                 for r in blocks.head(10).to_dict("records")])
    if predicted:
        adapted = table.meta.get("adapt") or {}
        least = sorted(predicted, key=lambda k: -predicted[k])[:10]
        print_table(f"predicted entries ({len(predicted)} of {len(table.blocks)}): from "
                    f"{', '.join(s.get('path', '?') for s in adapted.get('sources') or [])}, not measured; "
                    "least certain first", ["key", "latency ms", "uncertainty %"],
                    [(k, table.latency_ms()[k], predicted[k]) for k in least])
        console().print(f"measure them with `latbench lut build --upgrade [N] --out {table.path}` "
                        "(all, or the N least certain)", highlight=False)
    rule = table.meta.get("consensus") or {}
    agreed = int(table.blocks["consensus"].astype(bool).sum())
    console().print(f"consensus: {agreed} of {len(table.blocks)} entries agreed ({rule.get('rule', 'no rule')})",
                    highlight=False)
    if flagged:
        rows = blocks[blocks["key"].isin(flagged)].to_dict("records")
        print_table(f"flagged entries ({len(flagged)}): doubtful, carried as warnings into estimates",
                    ["key", "latency ms", "flags", "agreement", "round spread", "trend ratio"],
                    [(r["key"], r["latency_ms"], r["flags"], r["agreement"], r["round_spread"], r["trend_ratio"])
                     for r in rows])
    ov = table.overhead
    if ov.get("calibrated"):
        console().print(f"overhead model: {ov.get('method', 'empty models')}; {describe_scales(ov)}, "
                        f"fitted on {', '.join(ov.get('calibrated_on') or [])}", highlight=False)
    else:
        console().print("[yellow]warning:[/] the table is uncalibrated: no whole model was measured end to end",
                        highlight=False)
    return 0


def describe_scales(overhead: dict[str, Any]) -> str:
    scales = dict(overhead.get("scales") or {"rest": overhead.get("scale", 1.0)})
    weights = scales.pop(WEIGHTS, 0.0)
    return ", ".join([f"{g} x{v:.4f}" for g, v in scales.items()]
                     + ([f"cold weights +{weights:.4g} ms per million parameters"] if weights else []))


#: Columns of counts and sizes: pandas reads them as floats when a row leaves them blank.
WHOLE_NUMBER_COLUMNS = {"resolution", "stage", "width", "expansion", "width_in", "width_out", "channels",
                        "map_height", "map_width", "num_classes", "params", "macs", "rounds", "n"}


def _records(df) -> list[dict[str, Any]]:
    out = []
    for r in df.to_dict("records"):
        row = {}
        for k, v in r.items():
            if isinstance(v, float) and math.isnan(v):
                v = None
            elif k in WHOLE_NUMBER_COLUMNS and isinstance(v, float) and v.is_integer():
                v = int(v)
            row[k] = v
        out.append(row)
    return out


def run_diff(args: argparse.Namespace) -> int:
    from latbench import api

    summary = api.diff_tables(args.a, args.b)
    rows, common = summary["rows"], summary["common"]
    if args.json:
        print_json(summary)
        return 0
    label = summary["ratio"]
    print_table(f"{label} ratios ({common} common keys; speedup = A/B)", ["key", "A ms", "B ms", label, "speedup"],
                [(r["key"], r["a_ms"], r["b_ms"], r["ratio"], r["speedup"])
                 for r in sorted(rows, key=lambda r: -r["ratio"])])
    print_table(f"{label} per block kind", ["kind", "blocks", f"median {label}", "min", "max"],
                [(k["kind"], k["count"], k["median_ratio"], k["min_ratio"], k["max_ratio"]) for k in summary["kinds"]])
    console().print(f"median ratio {summary['median_ratio']:.3f}; only in A: {len(summary['only_a'])}, "
                    f"only in B: {len(summary['only_b'])}")
    for d in summary["provenance_diff"]:
        console().print(f"provenance: {d}")
    check = summary["predictions"]
    if check:
        sigma = ("" if check["within_2_sigma"] is None else
                 f", within 1 / 2 stated sigma {check['within_1_sigma']:.0%} / {check['within_2_sigma']:.0%}")
        other = "B" if check["predicted_in"] == "a" else "A"
        console().print(f"predicted entries of {check['predicted_in'].upper()} against {other}'s measurements: "
                        f"{check['count']}, mean |error| {check['mean_abs_error_pct']:.1f} % (median "
                        f"{check['median_abs_error_pct']:.1f} %, max {check['max_abs_error_pct']:.1f} %){sigma}; "
                        f"time bases x{check['time_base']:.3f} apart by {check['time_base_entries']} entries both "
                        "measured, taken out")
        print_table("largest prediction errors", ["key", "error %", "stated sigma %"],
                    [(w["key"], w["error_pct"], w["uncertainty_pct"]) for w in check["worst"]])
    return 0


# -- estimate ---------------------------------------------------------------------------------------
def staleness(table: LatencyTable, strict: bool) -> list[str]:
    """Compare the table with the device it names as that device looks now (if it is reachable)."""
    from device_runners import runner_class

    dev_id = table.meta.get("device_id")
    kind = runner_class(dev_id) if dev_id else None
    if kind is not None and not kind.claims(dev_id):
        kind = None  # not a device id of a kind this latbench knows (a test double, a farm pool)
    found = kind.discover() if kind is not None else []
    current = next((d for d in found if d.id == dev_id and d.available), None)
    if current is None:
        return [f"device {dev_id} is not reachable now; the table's provenance could not be re-checked"]
    diffs = table.check_provenance(current.provenance, strict=strict)
    return [f"table is stale for {dev_id}: {d}" for d in diffs]


def run_estimate(args: argparse.Namespace) -> int:
    from latbench.estimation.estimator import LatencyEstimator

    table = LatencyTable.load(find_table(_config.table_arg(args.table)))
    warnings = staleness(table, args.strict)
    est = LatencyEstimator(table)
    cands = resolve_candidates(args.targets, args.resolution)
    estimates = [est.estimate(c) for c in cands]
    if args.json:
        out = []
        for c, e in zip(cands, estimates):
            d = e.to_dict()
            d["params"] = c.params()
            d["warnings"] = warnings + e.warnings
            out.append(d)
        print_json(out)
        return 0
    for w in dict.fromkeys(warnings + [w for e in estimates for w in e.warnings]):
        console().print(f"[yellow]warning:[/] {w}", highlight=False)
    print_table(f"estimates from {table.path} ({estimates[0].method})",
                ["model", "latency ms (fast)", "typical ms", "plain sum ms", "blocks"],
                [(e.name, e.latency_ms, "n/a" if e.typical_ms is None else e.typical_ms, e.plain_sum_ms,
                  sum(b.count for b in e.blocks)) for e in estimates])
    for e in estimates:
        print_table(f"{e.name}: per block", ["key", "count", "block ms", "overhead ms", "total ms"],
                    [(b.key, b.count, b.block_ms, b.overhead_ms, b.total_ms)
                     for b in sorted(e.blocks, key=lambda b: -b.total_ms)])
    return 0


# -- validate ---------------------------------------------------------------------------------------
def run_validate(args: argparse.Namespace) -> int:
    from latbench import api
    from latbench.core.fileio import atomic_write_json

    table = api.load_table(_config.table_arg(args.table))
    api.validation_candidates(table, args.samples, args.seed, not args.no_named)  # bad input before any device
    if args.out:
        writable_file(args.out, "--out file")
    device = args.device or _config.default_device(table.meta.get("device_id"))
    result = api.validate_table(table, device, samples=args.samples, named=not args.no_named, passes=args.passes,
                                rounds=args.rounds, seed=args.seed, jobs=args.jobs, progress=shows_progress(args),
                                strict=args.strict, journal_dir=args.keep_journal,
                                **device_options(device, args, configured=False))
    out = result.to_dict()
    if args.out:
        atomic_write_json(args.out, out)
    if args.json:
        print_json(out)
        return 0
    print_validation(result)
    return 0


def print_validation(result) -> None:
    extra = result.noise.get("extra_passes") or 0
    print_table(f"end-to-end (mean of the passes agreeing with the fastest, of {result.noise.get('passes')}"
                f"{f' + {extra} extra' if extra else ''}) vs estimate ({result.table})",
                ["model", "measured ms", "pass noise %", "latbench ms", "err %", "plain sum ms", "err %",
                 "MACs-prop ms"],
                [(r["name"], r["measured_ms"], r["pass_noise_pct"], r["latency_ms"], r["error_pct"],
                  r["plain_sum_ms"], r["plain_sum_error_pct"], r["macs_ms"]) for r in result.rows])
    rows = [("latbench (fast state)", result.figures)]
    if result.figures.get("typical"):
        rows.append(("latbench (typical)", result.figures["typical"]))
    rows += list(result.baselines.items())
    print_table("accuracy against the end-to-end latency",
                ["method", "mean |err| %", "bias %", "within 5%", "within 10%", "Kendall tau"],
                [(name, f["mean_abs_pct_error"], f["bias_pct"], f"{f['within_5pct']:.0%}",
                  f"{f['within_10pct']:.0%}", f["kendall_tau"]) for name, f in rows])
    n = result.noise
    console().print(f"noise floor (pass to pass): median {n['median_pct']:.2f} %, max {n['max_pct']:.2f} %; "
                    f"{n['within_noise']:.0%} of the models' estimation errors are within their own pass-to-pass "
                    "spread", highlight=False)
    factors = ", ".join("-" if f is None else f"x{f:.3f}" for f in n.get("time_base_factors") or [])
    if n.get("time_base") == "models":
        console().print(f"time base: the table's models {', '.join(n['reference_models'])} measured again ({factors})",
                        highlight=False)
    elif n.get("time_base") == "anchors":
        console().print(f"time base: the table's anchor blocks ({factors})", highlight=False)
    for w in result.warnings:
        console().print(f"[yellow]warning:[/] {w}", highlight=False)


# -- repair ---------------------------------------------------------------------------------------
def run_repair(args: argparse.Namespace) -> int:
    from latbench import api

    table = api.repair_table(args.table)
    summary = {"table": str(table.path), "blocks": int(len(table.blocks)), "models": int(len(table.models)),
               "flagged": table.flagged(), "files": table.meta.get("files")}
    if args.json:
        print_json(summary)
    else:
        console().print(f"rederived {table.path} from its journal: {summary['blocks']} entries, "
                        f"{summary['models']} calibration models, {len(summary['flagged'])} flagged", highlight=False)
    return 0


# -- check ------------------------------------------------------------------------------------------
def run_check(args: argparse.Namespace) -> int:
    from latbench import api

    table = api.load_table(_config.table_arg(args.table))
    device = args.device or _config.default_device(table.meta.get("device_id"))
    result = api.check_table(table, device, samples=args.sample, keys=args.key, seed=args.seed, rounds=args.rounds,
                             fix=args.fix, progress=shows_progress(args), **device_options(device, args, configured=False))
    if args.json:
        print_json(result.to_dict())
        return 0
    print_table(f"re-measured entries of {result.table} (now, on the table's time base)",
                ["key", "stored ms", "now ms", "now/stored", "noise", "moved", "flags"]
                + (["fixed ms"] if result.fixed else []),
                [(r["key"], r["stored_ms"], r["now_ms"], r["ratio"], f"+-{r['noise']:.1%}", "MOVED" if r["moved"] else "",
                  r["flags"] or "") + ((r.get("fixed_ms"),) if result.fixed else ())
                 for r in sorted(result.rows, key=lambda r: -abs(r["ratio"] - 1) if math.isfinite(r["ratio"]) else 0)])
    f = result.time_base_factor
    console().print(f"time base: the device is {'' if f is None else f'{1 / f - 1:+.1%} '}"
                    f"{'(no anchor levels)' if f is None else 'slower than' if f < 1 else 'faster than'} "
                    f"when the table was built; anchors disagree by {result.anchor_disagreement:.1%}",
                    highlight=False)
    console().print(f"{len(result.moved)} of {len(result.rows)} entries moved beyond the noise"
                    + (f"; fixed {len(result.fixed)} (moved or flagged): new rounds recorded, table rederived"
                       if result.fixed else "" if not result.moved else "; run again with --fix to repair them"),
                    highlight=False)
    for w in result.warnings:
        console().print(f"[yellow]warning:[/] {w}", highlight=False)
    return 0
