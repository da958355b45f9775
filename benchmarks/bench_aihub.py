"""A table built and validated end to end on the fake AI Hub (prints figures; asserts nothing).

The REAL qai-hub client talks to tests/fakes/fake_aihub.py on a loopback port (pointed at it
through $QAIHUB_CLIENT_INI, polling made fast through the client's own settings); every job of
the fake really runs the uploaded ONNX model with onnxruntime on this machine. So this shows the
whole path -- upload once per content hash, waves submitted without waiting, results committed
as they finish, a killed build re-attaching, `--detach`, validation -- on a "phone" that is this
host's CPU. It says nothing about a real Snapdragon: that needs a real token (see the README's
AI Hub section).

1. `lut build --device aihub:...` of a small space (every block kind, MobileNetV2 whole as the
   MES unit, N calibration models): wall time, jobs and uploads, rounds per entry, consensus.
2. The same build again: nothing submitted.
3. `lut validate` on random subnets of the space, two passes: estimate errors against
   end-to-end jobs of whole subnets.
4. A second build into another directory, killed after K results and run again: jobs submitted
   twice (goal: 0) and measurements taken again (goal: 0).
5. The token: occurrences in the table directories and in the captured output (goal: 0).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_aihub.py [--runs 20] [--rounds 3] [--samples 6]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fakes"))

DEVICE = "aihub:Samsung Galaxy S24 (Family)"
SPACE = {
    "name": "bench-aihub",
    "resolutions": [224],
    "stages": [
        {"widths": [32], "depth": [1, 2], "expansions": [4], "attention": False},
        {"widths": [48], "depth": [1, 2], "expansions": [4], "attention": False},
        {"widths": [96], "depth": [2, 3], "expansions": [3, 4], "attention": True},
        {"widths": [176], "depth": [2, 2], "expansions": [4], "attention": True},
    ],
}


def cli(*args: str) -> tuple[int, str, str, float]:
    """`latbench ARGS` in this process (so the fake and the fast client settings apply)."""
    from latbench import cli as latbench_cli

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = latbench_cli.main(list(args))
        except KeyboardInterrupt:
            code = 130
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t0


def job_rounds(hub, job_ids=None) -> Counter:
    """(key, round) -> jobs the service got for it (anchors excluded), among `job_ids` (default all)."""
    out: Counter = Counter()
    for job_id in hub.job_ids() if job_ids is None else job_ids:
        parts = hub._jobs[job_id].name.split("/")
        if parts[2] != "anchor":
            out[(parts[2], parts[3])] += 1
    return out


def main() -> int:
    import yaml
    from fake_aihub import FakeAIHub, fast_client_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="profiler iterations per job")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calibrate", type=int, default=2)
    ap.add_argument("--samples", type=int, default=6, help="random subnets validated")
    ap.add_argument("--kill-after", type=int, default=10, help="results before the killed build dies")
    ap.add_argument("--keep", default=None, help="keep the tables under this directory")
    args = ap.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench-aihub-"))
    tmp.mkdir(parents=True, exist_ok=True)
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    common = ["--space", str(space), "--runs", str(args.runs), "--rounds", str(args.rounds), "--jobs", "1",
              "--calibrate", str(args.calibrate), "--json"]
    captured: list[str] = []
    with fast_client_settings(), FakeAIHub() as hub:
        os.environ["QAIHUB_CLIENT_INI"] = str(hub.write_client_ini(tmp / "client.ini"))

        # 1. build
        out = tmp / "table"
        code, stdout, stderr, wall = cli("lut", "build", "--device", DEVICE, "--out", str(out), *common)
        captured += [stdout, stderr]
        if code:
            print(stderr.strip().splitlines()[-1])
            return code
        [s] = json.loads(stdout)
        jobs = len(hub.job_ids())
        uploads = sum(1 for m, p in hub.requests if m == "POST" and p == "/api/v1/models/")
        per_round = job_rounds(hub)
        print(f"1. build: {s['blocks']} entries in {wall:.1f} s wall; {jobs} jobs "
              f"({sum(per_round.values())} rounds, {jobs - sum(per_round.values())} anchors), {uploads} uploads; "
              f"rounds per entry: {dict(sorted(Counter(Counter(k for k, _ in per_round).values()).items()))}; "
              f"consensus {s['consensus']['agreed']}/{s['blocks']}; flagged {len(s['flagged'])}")

        # 2. nothing new
        code, stdout, stderr, wall = cli("lut", "build", "--device", DEVICE, "--out", str(out), *common)
        captured += [stdout, stderr]
        print(f"2. rebuild: {json.loads(stdout)[0]['measured_now']} measured, "
              f"{len(hub.job_ids()) - jobs} jobs submitted, {wall:.1f} s")

        # 3. validate
        n0 = len(hub.job_ids())
        code, stdout, stderr, wall = cli("lut", "validate", str(out), "--samples", str(args.samples), "--no-named",
                                         "--rounds", "2", "--passes", "2", "--jobs", "1", "--json",
                                         "--out", str(tmp / "validate.json"))
        captured += [stdout, stderr]
        if code:
            print("3. validate failed:", stderr.strip().splitlines()[-1])
        else:
            v = json.loads(stdout)
            print(f"3. validate: {v['n']} subnets, {len(hub.job_ids()) - n0} jobs, {wall:.1f} s; "
                  f"mean |error| {v['mean_abs_pct_error']:.1f} %, max {v['max_abs_pct_error']:.1f} %, "
                  f"bias {v['bias_pct']:+.1f} %, "
                  f"within 5 % {v['within_5pct']:.0%}, within 10 % {v['within_10pct']:.0%}, "
                  f"Kendall tau {v['kendall_tau']:.2f}; pass-to-pass noise median {v['noise']['median_pct']:.1f} %; "
                  + ", ".join(f"{k}: mean {b['mean_abs_pct_error']:.1f} %" for k, b in v["baselines"].items()))

        # 4. killed and resumed
        from latbench.measuring.session import MeasuringSession

        killed = tmp / "killed"
        real_commit = MeasuringSession._commit
        count = [0]

        def dying_commit(self, res, is_anchor):
            real_commit(self, res, is_anchor)
            count[0] += 1
            if count[0] == args.kill_after:
                raise KeyboardInterrupt

        before_jobs = set(hub.job_ids())
        MeasuringSession._commit = dying_commit
        try:
            code, stdout, stderr, _ = cli("lut", "build", "--device", DEVICE, "--out", str(killed), *common)
        finally:
            MeasuringSession._commit = real_commit
        captured += [stdout, stderr]
        db = sqlite3.connect(killed / "journal.sqlite")
        first = dict(db.execute("SELECT key || '#' || round, measured_at FROM measurements"))
        open_jobs = db.execute("SELECT COUNT(*) FROM aihub_jobs WHERE state = 'submitted'").fetchone()[0]
        db.close()
        code, stdout, stderr, wall = cli("lut", "build", "--device", DEVICE, "--out", str(killed), *common)
        captured += [stdout, stderr]
        db = sqlite3.connect(killed / "journal.sqlite")
        after = dict(db.execute("SELECT key || '#' || round, measured_at FROM measurements"))
        db.close()
        new_jobs = [j for j in hub.job_ids() if j not in before_jobs]
        rounds = job_rounds(hub, new_jobs)
        print(f"4. killed after {len(first)} results with {open_jobs} jobs outstanding; resumed in {wall:.1f} s "
              f"(exit {code}): rounds submitted twice {sum(1 for n in rounds.values() if n > 1)}, "
              f"results re-measured {sum(1 for k in first if after.get(k) != first[k])}, "
              f"entries {len({k.rsplit('#', 1)[0] for k in after})}")

        # 5. the token
        leaks = sum(f.read_bytes().count(hub.token.encode()) for d in (out, killed) for f in d.rglob("*") if f.is_file())
        leaks += sum(text.count(hub.token) for text in captured)
        print(f"5. token occurrences in the tables and the output: {leaks}")
    print(f"tables in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
