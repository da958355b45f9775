"""Start-up time of the commands that only read tables (prints figures; asserts nothing).

Each command runs `--repeat` times in a fresh process; the median and minimum wall times are
printed, and the heavy modules each imported (from `python -X importtime`). Goal: `latbench
--help`, `lut show`, `lut estimate` and `mes report` (without --measure) well under a second.

    .venv/bin/python benchmarks/bench_cli.py [--repeat 7] [--table DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEAVY = ("torch", "onnx", "onnxruntime", "coremltools", "matplotlib", "pandas", "scipy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--table", default=None, help="a table to read (default: a synthetic one)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    table = args.table
    if table is None:
        from latbench.tables.synthetic import synthetic_table

        t = synthetic_table()
        t.meta["device"] = {"device_kind": "synthetic"}
        table = str(t.save(tmp / "table"))
    commands = [["--help"], ["lut", "show", table], ["lut", "estimate", table, "efficientformerv2_s0"],
                ["mes", "report", "--lut", table, "efficientformerv2_s0", "mobilenetv2_100", "--out", str(tmp / "r")]]
    for cmd in commands:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "latbench", *cmd], capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        probe = subprocess.run([sys.executable, "-X", "importtime", "-m", "latbench", *cmd], capture_output=True,
                               text=True)
        mods = {ln.rsplit("|", 1)[1].strip().split(".")[0] for ln in probe.stderr.splitlines() if "|" in ln}
        label = " ".join(c if not c.startswith(str(tmp)) else Path(c).name for c in cmd)
        print(f"latbench {label:60s} median {statistics.median(times):.3f} s  min {min(times):.3f} s  "
              f"imports {', '.join(m for m in HEAVY if m in mods) or 'none of ' + '/'.join(HEAVY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
