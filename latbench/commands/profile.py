"""`latbench profile MODEL|ARCH_FILE|FILE.onnx|FILE.mlpackage|FILE.tflite --device ID`."""

from __future__ import annotations

import argparse

from latbench.commands._output import (
    add_json_flag,
    add_progress_flag,
    console,
    print_json,
    print_table,
    shows_progress,
)
from latbench.commands._runner import add_device_flag, add_runner_flags, open_device
from latbench.commands._types import positive_int
from latbench.core.errors import UsageError
from latbench.core.fileio import writable_dir
from latbench.core.progress import phase_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure a model on a device with a per-op and per-block breakdown")
    p.add_argument("target", metavar="MODEL|ARCH_FILE|FILE.onnx|FILE.mlpackage|FILE.tflite",
                   help="a registered model (e.g. efficientformerv2_s0), an arch file, or an exported artifact")
    add_device_flag(p)
    p.add_argument("--runs", type=int, default=None, help="timed runs (default: adaptive, until the median is within ~1%%)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="measurement rounds (more until they agree; default 3)")
    p.add_argument("--resolution", type=positive_int, default=None)
    p.add_argument("--out", default=None, help="write profile.json, CSVs and breakdown.png here")
    add_runner_flags(p)
    add_json_flag(p)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latbench.measuring.profile import profile
    from latbench.report.profile_files import write_profile

    if args.runs is not None and args.runs < 1:
        raise UsageError(f"--runs must be >= 1, got {args.runs}")
    if args.rounds < 1 or args.warmup < 0:
        raise UsageError("--rounds must be >= 1 and --warmup >= 0")
    if args.out:
        writable_dir(args.out, create=False)
    runner = open_device(args.device, args)
    with runner, phase_progress(shows_progress(args)) as progress:
        result = profile(args.target, runner, runs=args.runs, warmup=args.warmup, resolution=args.resolution,
                         rounds=args.rounds, progress=progress)
    files = write_profile(result, args.out) if args.out else []
    if args.json:
        d = result.to_dict()
        d["files"] = [str(f) for f in files]
        print_json(d)
        return 0
    m = result.measurement
    c = result.consensus
    console().print(f"[bold]{result.target}[/] on {result.device_id}: {result.latency_ms:.3f} ms "
                    f"({'agreed' if c.get('agreed') else 'NO consensus'} {c.get('agreement')} rounds); "
                    f"pooled median {m.median:.3f} ms (p5 {m.p5:.3f}, p95 {m.p95:.3f}, n {m.n}); "
                    f"session {m.session_ms or 0:.1f} ms, first inference {m.first_inference_ms or 0:.2f} ms",
                    highlight=False)
    print_table("per op type (profiled)", ["op type", "ms", "share"],
                [(r["op_type"], r["ms"], f"{r['share']:.1%}") for r in result.per_op_type])
    if result.per_block:
        print_table("per block (profiled)", ["#", "block", "key", "ms", "share"],
                    [(r["index"], r["block"], r["key"], r["ms"], f"{r['share']:.1%}")
                     for r in sorted(result.per_block, key=lambda r: -r["ms"])])
    for w in m.warnings:
        console().print(f"[yellow]warning:[/] {w}", highlight=False)
    if files:
        console().print(f"wrote {', '.join(str(f) for f in files)}")
    return 0
