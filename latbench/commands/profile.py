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
from latbench.commands._runner import add_device_flag, add_runner_flags, device_options
from latbench.commands._types import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from latbench.export.common import PRECISIONS

    p = sub.add_parser("profile", help="measure a model on a device with a per-op and per-block breakdown")
    p.add_argument("target", metavar="MODEL|ARCH_FILE|FILE.onnx|FILE.mlpackage|FILE.tflite",
                   help="a registered model (e.g. efficientformerv2_s0), an arch file, or an exported artifact")
    add_device_flag(p)
    p.add_argument("--runs", type=int, default=None, help="timed runs (default: adaptive, until the median is within ~1%%)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="measurement rounds (more until they agree; default 3)")
    p.add_argument("--resolution", type=positive_int, default=None)
    p.add_argument("--out", default=None, help="write profile.json, CSVs and breakdown.png here")
    p.add_argument("--dtype", choices=PRECISIONS, default=None,
                   help="precision a model is exported in (default: the device's, fp32 on cpu); int8: quantized ONNX, TFLite or Core ML")
    add_runner_flags(p)
    add_json_flag(p)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latbench import api

    result = api.profile(args.target, args.device, runs=args.runs, rounds=args.rounds, warmup=args.warmup,
                         resolution=args.resolution, progress=shows_progress(args), out=args.out, dtype=args.dtype,
                         **device_options(args.device, args))
    files = getattr(result, "files", None) or []
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
