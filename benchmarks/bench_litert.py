"""LiteRT benchmark: the default space converted to .tflite cold, then a table built and validated on `litert`.

1. Converts every block of the default space at 224 (plus MobileNetV2-1.0 whole, the MES unit)
   with litert-torch into an empty export cache, in `--jobs` worker processes: wall time, time per
   kind, failures, how many graphs XNNPACK takes whole, the worst parity error.
2. Builds the default-space table on the `litert` device (XNNPACK, one thread) from that cache and
   validates it on N random subnets plus S0-L in two separated passes, printing the figures
   benchmarks/bench_lut.py prints (goals as for the CPU table: >= 95 % within +-5 %, 100 % within
   +-10 %, Kendall tau >= 0.95, ahead of the plain-sum and MACs-proportional baselines).

    .venv/bin/python benchmarks/bench_litert.py [--samples 30] [--jobs 2] [--keep DIR] [--core 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def convert_space(jobs: int) -> None:
    from latbench.blocks.candidates import resolve_candidate
    from latbench.blocks.configs import space_blocks
    from latbench.export import export_items
    from latbench.space import SearchSpace

    items = space_blocks(SearchSpace.default(), 224) + [resolve_candidate("mobilenetv2_100").blocks()[0]]
    t0 = time.perf_counter()
    report = export_items(items, "tflite", None, jobs=jobs, progress=True)
    wall = time.perf_counter() - t0
    records = list(report)
    failed = [r for r in records if not r.ok]
    whole = [r for r in records if r.ok and (r.validation.get("xnnpack") or {}).get("fully_delegated")]
    worst = max((r.validation["parity"]["max_abs_diff"] for r in records if r.ok), default=float("nan"))
    print(f"cold conversion: {len(records)} artifacts in {wall:.0f} s wall ({jobs} workers); "
          f"{len(failed)} failed; {len(whole)}/{len(records) - len(failed)} fully delegated to XNNPACK; "
          f"worst |tflite - torch| {worst:.2g}")
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.ok:
            by_kind[r.kind].append(r.timings.get("convert", 0.0))
    for kind, secs in by_kind.items():
        print(f"  {kind:9s} n={len(secs):3d}  convert median {statistics.median(secs):5.1f} s  max {max(secs):5.1f} s")
    for r in failed:
        print(f"  FAILED {r.key}: {r.error}")
    for r in records:
        x = (r.validation or {}).get("xnnpack") or {}
        if r.ok and not x.get("fully_delegated"):
            print(f"  split {r.key}: {x.get('partitions')} partition(s), left out {x.get('undelegated_ops')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--core", type=int, default=0, help="pin the table build to this core (-1: no pinning)")
    ap.add_argument("--keep", default=None, help="keep the table and the export cache under this directory")
    ap.add_argument("--skip-validate", action="store_true")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-litert-"))
    os.environ.setdefault("LATBENCH_CACHE", str(root / "export-cache"))  # cold unless kept from a run before
    from bench_lut import build, report_build, validate

    convert_space(args.jobs)
    res, *_, opts = build(root / "litert", None if args.core < 0 else args.core, device="litert")
    report_build("litert build", res)
    if not args.skip_validate:
        validate(res.table, args.samples, args.seed, opts, "validate on litert", root / "validation", device="litert")
    print(json.dumps({"tables": str(root)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
