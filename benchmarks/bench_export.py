"""Benchmark `latbench export` on the whole default space: cold and warm wall time, configurations
per second, and where the time goes (build, trace, convert, validate) per format.

    .venv/bin/python benchmarks/bench_export.py [--jobs N] [--formats onnx,coreml] [--out DIR]
                                                [--compare-exporters]

Cold = empty output directory; warm = the same command again (everything cached). Shares are of
the summed per-artifact worker time, so they do not depend on the number of workers.
`--compare-exporters` also times the TorchScript and dynamo ONNX exporters on a few blocks in
this process (one thread; the first dynamo call pays a one-off warm-up, reported separately).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from latbench.blocks.configs import space_blocks
from latbench.export import default_jobs, export_items, parse_formats
from latbench.space import SearchSpace

PHASES = ("build", "trace", "convert", "validate")
COMPARE_BLOCKS = ("ffn-r224-s1-c32-e4", "mhsa-r224-s3-c96", "attndown-r224-s3-c144-o288", "head-r224-c176")


def bench_space(formats: tuple[str, ...], jobs: int, out: Path) -> None:
    blocks = space_blocks(SearchSpace.default(), 224)
    n = len(blocks) * len(formats)
    print(f"default space: {len(blocks)} unique blocks x {len(formats)} formats = {n} artifacts, {jobs} workers")

    t0 = time.perf_counter()
    cold = export_items(blocks, formats, out, jobs=jobs, progress=sys.stderr.isatty())
    cold_wall = time.perf_counter() - t0
    if cold.failures:
        print(f"  {len(cold.failures)} FAILED, e.g. {cold.failures[0].key}: {cold.failures[0].error}")
    t0 = time.perf_counter()
    warm = export_items(blocks, formats, out, jobs=jobs, progress=False)
    warm_wall = time.perf_counter() - t0
    assert len(warm.cached) == n - len(warm.failures), "warm run re-exported something"

    print(f"  cold: {cold_wall:7.1f} s wall  {n / cold_wall:6.2f} configs/s  ({len(cold.exported)} exported)")
    print(f"  warm: {warm_wall:7.2f} s wall  {n / warm_wall:6.0f} configs/s  ({len(warm.cached)} cached)")

    per_fmt: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for rec in cold:
        for phase in PHASES:
            per_fmt[rec.format][phase] += rec.timings.get(phase, 0.0)
        per_fmt[rec.format]["total"] += rec.export_seconds
    print("  worker time by phase (share of the format's summed export seconds):")
    for fmt, t in per_fmt.items():
        total = t["total"] or 1.0
        shares = "  ".join(f"{p} {100 * t[p] / total:4.1f}%" for p in PHASES)
        print(f"    {fmt:7s} {t['total']:7.1f} s = {t['total'] / len(blocks):.2f} s/config  {shares}")
    all_total = sum(t["total"] for t in per_fmt.values()) or 1.0
    shares = "  ".join(f"{p} {100 * sum(t[p] for t in per_fmt.values()) / all_total:4.1f}%" for p in PHASES)
    print(f"    {'all':7s} {all_total:7.1f} s                        {shares}")


def compare_exporters(tmp: Path) -> None:
    import warnings

    import torch

    from latbench.export.common import captured_output, prepared_module, quiet_libraries, seeded_input

    quiet_libraries()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    blocks = {b.key: b for b in space_blocks(SearchSpace.default(), 224)}
    print("ONNX exporter, seconds per export (1 thread, steady state):")
    for dynamo in (False, True):  # warm-up call, reported once
        b = blocks["stem-r224-c32"]
        m, x = prepared_module(b), seeded_input(b.input_shape, 0)
        t0 = time.perf_counter()
        with captured_output():
            torch.onnx.export(m, (x,), str(tmp / "w.onnx"), dynamo=dynamo, opset_version=18 if dynamo else 17)
        print(f"  first call ({'dynamo' if dynamo else 'torchscript'}): {time.perf_counter() - t0:.2f} s")
    for key in COMPARE_BLOCKS:
        b = blocks[key]
        m, x = prepared_module(b), seeded_input(b.input_shape, 0)
        times = {}
        for dynamo in (False, True):
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                with captured_output():
                    torch.onnx.export(m, (x,), str(tmp / "c.onnx"), dynamo=dynamo, opset_version=18 if dynamo else 17)
                runs.append(time.perf_counter() - t0)
            times[dynamo] = sorted(runs)[1]
        print(f"  {key:30s} torchscript {times[False]:.3f} s   dynamo {times[True]:.3f} s   "
              f"x{times[True] / times[False]:.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=default_jobs())
    ap.add_argument("--formats", default="onnx,coreml")
    ap.add_argument("--out", default=None, help="output directory (default: a temporary one, removed)")
    ap.add_argument("--compare-exporters", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        out = Path(args.out) if args.out else tmp / "exports"
        if args.out and out.exists() and any(out.iterdir()):
            print(f"{out} is not empty: the cold run would not be cold", file=sys.stderr)
            return 2
        bench_space(parse_formats(args.formats), args.jobs, out)
        if args.compare_exporters:
            compare_exporters(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
