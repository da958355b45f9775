"""A reproducible on-CPU disturbance: a memory-bandwidth hog that runs in random bursts.

What a shared host does to a latency build (see the measuring notes in the README): slowdowns
that come and go in bursts of seconds, while the measuring thread runs. This hog copies a large
buffer (default 64 MiB, far beyond the last-level cache) back and forth during bursts of
`burst_s` seconds separated by pauses of `pause_s`, both drawn at random from a seeded
generator, pinned to the given cores. Pinned to the core the build uses, it both competes for
that core and evicts the caches, which thread-CPU-time samples do not remove.

    with Disturbance(cores=[0], seed=1, log=Path("bursts.jsonl")):
        ... build a table pinned to core 0 ...

    python benchmarks/disturb.py --cores 0 --seconds 60   # standalone
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path


def hog(cores: list[int] | None, seed: int, mib: int, burst_s: tuple[float, float], pause_s: tuple[float, float],
        log: str | None, seconds: float | None) -> None:
    """The hog's main loop (runs in its own process until killed or `seconds` elapse)."""
    import numpy as np

    if cores:
        os.sched_setaffinity(0, cores)
    rng = random.Random(seed)
    n = mib * (1 << 20) // 8
    a = np.ones(n)
    b = np.empty_like(a)
    out = open(log, "a") if log else None  # noqa: SIM115 (kept open for the life of the process)
    end = time.monotonic() + seconds if seconds else float("inf")
    while time.monotonic() < end:
        time.sleep(rng.uniform(*pause_s))
        start = time.time()
        stop = time.monotonic() + rng.uniform(*burst_s)
        while time.monotonic() < stop:
            np.copyto(b, a)
            np.copyto(a, b)
        if out:
            out.write(json.dumps({"start": start, "end": time.time()}) + "\n")
            out.flush()


class Disturbance:
    """Run the hog in a child process for the duration of a `with` block."""

    def __init__(self, cores: list[int] | None = None, *, seed: int = 0, mib: int = 64,
                 burst_s: tuple[float, float] = (0.5, 3.0), pause_s: tuple[float, float] = (0.5, 4.0),
                 log: Path | None = None) -> None:
        self.args = [sys.executable, str(Path(__file__).resolve()), "--seed", str(seed), "--mib", str(mib),
                     "--burst", f"{burst_s[0]},{burst_s[1]}", "--pause", f"{pause_s[0]},{pause_s[1]}"]
        if cores:
            self.args += ["--cores", ",".join(map(str, cores))]
        if log:
            self.args += ["--log", str(log)]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Disturbance:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bursts(log: Path) -> list[tuple[float, float]]:
    """(start, end) wall times of the bursts a hog logged."""
    if not log.exists():
        return []
    return [(d["start"], d["end"]) for d in map(json.loads, log.read_text().splitlines()) if d]


def _pair(text: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in text.split(","))
    return lo, hi


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default=None, help="comma-separated cores to pin the hog to")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--burst", type=_pair, default=(0.5, 3.0), help="burst length range, s (lo,hi)")
    ap.add_argument("--pause", type=_pair, default=(0.5, 4.0), help="pause length range, s (lo,hi)")
    ap.add_argument("--log", default=None)
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until killed)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cores = [int(c) for c in args.cores.split(",")] if args.cores else None
    hog(cores, args.seed, args.mib, args.burst, args.pause, args.log, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
