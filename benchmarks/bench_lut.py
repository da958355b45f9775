"""Lookup-table benchmark on the emulated CPU backend (prints figures; asserts nothing).

1. Builds the default-space table from a cold export cache: total wall time vs the time spent
   inside timed runs (goal: total <= 1.5x timed runs).
2. Rebuilds with nothing new (goal: <= 10 s).
3. Validates the table on N random subnets plus S0-L, end to end, against the plain-sum and
   MACs-proportional baselines measured in the same run (goals: >= 95 % within +-5 %, all
   within +-10 %, Kendall tau >= 0.9, better than the plain sum).

    .venv/bin/python benchmarks/bench_lut.py [--samples 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", default=None, help="build the table here (kept) instead of a temp dir")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-lut-")
    os.environ["LATBENCH_CACHE"] = str(Path(tmp) / "export-cache")  # cold export cache
    from device_runners import open_runner
    from latbench.blocks import space_blocks
    from latbench.lut import BuildSettings, TableBuilder, calibration_candidates
    from latbench.space import SearchSpace
    from latbench.validate import validate_table, validation_candidates

    space = SearchSpace.default()
    out = Path(args.keep or Path(tmp) / "table")
    settings = BuildSettings()
    configs = space_blocks(space, 224)
    calib = calibration_candidates(space, 224, settings.calibration_models, settings.seed)
    with open_runner("cpu") as runner:
        res = TableBuilder(runner, out, settings).build(configs, space=space, resolution=224, calibration=calib)
        t = res.timings
        print(f"build: {len(res.table.blocks)} blocks + {len(calib)} calibration models, "
              f"{len(res.measured)} measurements")
        print(f"  total wall {t['total_s']:.1f} s; inside timed runs {t['timed_runs_s']:.1f} s "
              f"-> ratio {t['total_s'] / t['timed_runs_s']:.2f} (goal <= 1.5)")
        print(f"  export {t['export_s']:.1f} s, prepare {t['prepare_s']:.1f} s, "
              f"measure wall {t['measure_wall_s']:.1f} s "
              f"(export+prepare+bookkeeping {100 * (t['total_s'] - t['timed_runs_s']) / t['total_s']:.0f} % of total)")
        t0 = time.perf_counter()
        res2 = TableBuilder(runner, out, settings).build(configs, space=space, resolution=224, calibration=calib)
        print(f"rebuild with nothing new: {time.perf_counter() - t0:.1f} s, {len(res2.measured)} measured "
              f"(goal <= 10 s)")
        cands = validation_candidates(space, 224, args.samples, args.seed)
        v = validate_table(res2.table, runner, cands, seed=args.seed, show_export_progress=False)
    print(f"validate: {v.figures['n']} models ({args.samples} random subnets + S0-L), {v.seconds:.0f} s")
    for name, f in [("latbench", v.figures)] + list(v.baselines.items()):
        print(f"  {name:18s} mean |err| {f['mean_abs_pct_error']:5.2f} %  bias {f['bias_pct']:+5.2f} %  "
              f"within 5 % {f['within_5pct']:.0%}  within 10 % {f['within_10pct']:.0%}  "
              f"Kendall tau {f['kendall_tau']:.3f}")
    for r in v.rows:
        print(f"    {r['name']:22s} measured {r['measured_ms']:7.3f} ms  estimate {r['latency_ms']:7.3f} "
              f"({r['error_pct']:+5.1f} %)  plain sum {r['plain_sum_ms']:7.3f} ({r['plain_sum_error_pct']:+5.1f} %)")
    for w in v.warnings:
        print(f"  warning: {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
