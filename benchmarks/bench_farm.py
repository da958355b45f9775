"""The device farm: scaling with devices, scheduling overhead, and the fault cases (prints figures).

A local multi-node Ray cluster (Ray's cluster utilities: a head and two raylets standing for two device
hosts, all num_cpus=0) serves scripted devices the way `latbench agent` does. Every measurement on a
timed device costs a fixed time (`--cost`, default 0.1 s: 20 timed runs of 5 ms). A build is one
MeasuringSession over `--entries` artifacts x 3 rounds, pooled (anchors read on every device, the pool
check on), journalled to an SQLite file.

1. Scaling: N = 1, 2, 4 devices over the two hosts; measuring wall time and speed-up over N = 1.
   Goal: speed-up >= 0.8 x N.
2. Scheduling overhead: the same build on devices that cost nothing; the farm's wall time per
   measurement (dispatch, Ray round trip, journal commit), with 1 and with 4 devices. Goal: <= 5 ms.
3. Faults, each checked for lost and duplicated journal rows (goal: zero): a device lost mid-build,
   an agent's host killed mid-build (SIGKILL of its raylet), the driver SIGKILLed mid-build and resumed
   (re-measured rows counted too).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_farm.py [--entries 32] [--cost 0.1]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "tests" / "fakes"
for p in (ROOT, FAKES):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from latbench.measuring.farm.names import NAMESPACE, apply_ray_environment, farm_id, host_resources  # noqa: E402

apply_ray_environment(loopback=True)  # before ray is imported: a test cluster on loopback only

SCRIPTED = {"device_kind": "scripted", "device_model": "script"}
ROUNDS = 3


def artifacts(tmp: Path, n: int) -> list:
    """`n` artifact files (scripted devices time them by name, they never load them)."""
    from latbench.measuring.session import ArtifactItem

    out = []
    for i in range(n):
        f = tmp / f"entry{i:03d}.onnx"
        f.write_bytes(os.urandom(2048))
        out.append(ArtifactItem.of(f))
    return out


def build(selectors: list[str], items: list, anchor, journal_path: Path, progress=None) -> dict:
    """One pooled build over the farm devices matching `selectors`; returns timings and the farm report."""
    from latbench.measuring.consensus import ConsensusRule
    from latbench.measuring.farm.cluster import open_cluster_farm
    from latbench.measuring.farm.dispatcher import PoolCheck
    from latbench.measuring.journal import Journal
    from latbench.measuring.measurement import SamplingPolicy
    from latbench.measuring.session import MeasuringPlan, MeasuringSession, Target
    from latbench.measuring.timebase import session_factors

    rule = ConsensusRule()
    policy = SamplingPolicy.fixed(20, 2)
    plan = MeasuringPlan(rounds=ROUNDS, min_separation_s=0.0, anchor_every=12,
                         policies={"block": policy, "anchor": policy, "model": policy})
    with open_cluster_farm(selectors, pool=PoolCheck(rule), suspect_timeout_s=20) as farm, \
            Journal(journal_path) as journal:
        session = MeasuringSession(farm, plan, journal=journal, export_jobs=1, progress=progress,
                                   time_base=lambda j, s: session_factors(j, rule, current=s))
        res = session.run([Target(i.key, i, "block") for i in items], [Target(anchor.key, anchor, "anchor")])
        return {"timings": res.timings, "report": farm.report(), "measured": len(res.measured)}


def rows(journal_path: Path) -> list[tuple]:
    db = sqlite3.connect(journal_path)
    try:
        return db.execute("SELECT key, round, device, measured_at FROM measurements ORDER BY key, round").fetchall()
    finally:
        db.close()


def lost_and_duplicated(journal_path: Path, items: list) -> tuple[int, int]:
    got = [(k, r) for k, r, _, _ in rows(journal_path)]
    want = {(i.key, r) for i in items for r in range(ROUNDS)}
    return len(want - set(got)), len(got) - len(set(got))


def serve(cluster, host: str, devices: dict[str, dict]) -> object:
    """A host as `latbench agent` makes it: a raylet advertising its devices, one actor per device."""
    from farm_devices import scripted

    from latbench.measuring.farm.cluster import serve_devices

    node = cluster.add_node(num_cpus=0, resources=host_resources({farm_id(d, host): SCRIPTED for d in devices}))
    cluster.wait_for_nodes()
    serve_devices(list(devices), {d: scripted(d, **o) for d, o in devices.items()}, host,
                  {d: SCRIPTED for d in devices}, node_id=node.node_id)
    return node


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=32)
    ap.add_argument("--cost", type=float, default=0.1, help="seconds per measurement on a timed device")
    ap.add_argument("--driver", nargs=2, metavar=("ADDRESS", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        return driver(*args.driver, args.entries)
    import ray
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-farm-"))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(FAKES), os.environ.get("PYTHONPATH")) if p)
    os.environ["LATBENCH_FARM_CACHE"] = str(tmp / "cache-{node}")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 500, "object_manager_pull_timeout_ms": 1000}})
    try:
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING")
        timed = {"sleep_s": args.cost}
        serve(cluster, "hostA", {"scripted:T1": timed, "scripted:T3": timed, "scripted:Z1": {}, "scripted:Z3": {},
                                 "scripted:L1": {**timed, "lost_after": 12}})
        serve(cluster, "hostB", {"scripted:T2": timed, "scripted:T4": timed, "scripted:Z2": {}, "scripted:Z4": {}})
        items = artifacts(tmp, args.entries)
        from latbench.measuring.session import ArtifactItem

        anchor_file = tmp / "anchor.onnx"
        anchor_file.write_bytes(os.urandom(2048))
        anchor = ArtifactItem.of(anchor_file)
        jobs = args.entries * ROUNDS
        print(f"# device farm benchmark: {args.entries} entries x {ROUNDS} rounds = {jobs} (key, round) jobs, "
              f"{args.cost * 1000:.0f} ms per timed measurement, 2 hosts; machine: {os.cpu_count()} cores, "
              "shared with other work")
        print("\n## scaling (pooled build, anchors on every device)\n")
        print("| N | devices | hosts | measuring wall s | speed-up | speed-up / N | measurements (jobs + anchors) |")
        print("|---|---|---|---|---|---|---|")
        base = None
        for n, sel in ((1, ["scripted:T1@hostA"]), (2, ["scripted:T1@hostA", "scripted:T2@hostB"]),
                       (4, ["scripted:T[1-4]@host*"])):
            out = build(sel, items, anchor, tmp / f"scale{n}.sqlite")
            wall = out["timings"]["measure_wall_s"]
            base = base or wall
            devs = out["report"]["devices"]
            total = sum(d["jobs"] + d["anchors"] for d in devs.values())
            hosts = len({d["host"] for d in devs.values()})
            print(f"| {n} | {len(devs)} | {hosts} | {wall:.2f} | {base / wall:.2f} | {base / wall / n:.2f} | {total} |")
        print("\n## scheduling overhead (devices that cost nothing)\n")
        print("| devices | measurements | measuring wall s | ms per measurement |")
        print("|---|---|---|---|")
        for sel in (["scripted:Z1@hostA"], ["scripted:Z[1-4]@host*"]):
            out = build(sel, items, anchor, tmp / f"zero{len(sel)}-{time.time_ns()}.sqlite")
            devs = out["report"]["devices"]
            total = sum(d["jobs"] + d["anchors"] for d in devs.values())
            wall = out["timings"]["measure_wall_s"]
            print(f"| {len(devs)} | {total} | {wall:.3f} | {1000 * wall / total:.2f} |")
        print("\n## fault cases\n")
        print("| case | outcome | lost rows | duplicated rows | re-measured rows |")
        print("|---|---|---|---|---|")
        path = tmp / "lost.sqlite"
        out = build(["scripted:T1@hostA", "scripted:T2@hostB", "scripted:L1@hostA"], items, anchor, path)
        lost, dup = lost_and_duplicated(path, items)
        print(f"| device lost mid-build (L1 unplugged after 12 measurements) | L1: {out['report']['devices']['scripted:L1@hostA']['gone']}; "
              f"{out['report']['devices']['scripted:L1@hostA']['requeued']} job(s) reassigned | {lost} | {dup} | 0 |")
        host_c = serve(cluster, "hostC", {"scripted:K1": timed, "scripted:K2": timed})
        killed = []

        def kill_after(phase, done, total, detail=None):
            if phase.startswith("device ") and not killed and done >= 6:
                cluster.remove_node(host_c, allow_graceful=False)
                killed.append(time.monotonic())

        path = tmp / "agent.sqlite"
        out = build(["scripted:T1@hostA", "scripted:T2@hostB", "scripted:K*@hostC"], items, anchor, path, kill_after)
        lost, dup = lost_and_duplicated(path, items)
        gone = {d: v["gone"] for d, v in out["report"]["devices"].items() if v["gone"]}
        requeued = sum(v["requeued"] for v in out["report"]["devices"].values())
        print(f"| agent host killed mid-build (SIGKILL of hostC's raylet, 2 devices) | gone: {', '.join(sorted(gone))}; "
              f"{requeued} in-flight job(s) reassigned | {lost} | {dup} | 0 |")
        print(driver_case(cluster.address, tmp, items, args.entries))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


def driver_case(address: str, tmp: Path, items: list, entries: int) -> str:
    """A driver SIGKILLed mid-build, then a new driver on the same journal."""
    env = dict(os.environ)
    cmd = [sys.executable, __file__, "--entries", str(entries), "--driver", address, str(tmp)]
    path = tmp / "driver.sqlite"
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while first.poll() is None:
        try:
            if len(rows(path)) >= 20:
                break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {(k, r): t for k, r, _, t in rows(path)}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = {(k, r): t for k, r, _, t in rows(path)}
    remeasured = sum(1 for k, t in before.items() if after.get(k) != t)
    lost, dup = lost_and_duplicated(path, items)
    return (f"| driver SIGKILLed after {len(before)} rows, then resumed | resumed run measured "
            f"{len(after) - len(before)} rows | {lost} | {dup} | {remeasured} |")


def driver(address: str, tmp: str, entries: int) -> int:
    """The driver of the killed-driver case (a child process): the same artifacts, the same journal."""
    import ray

    from latbench.measuring.session import ArtifactItem

    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING")
    tmp_path = Path(tmp)
    items = [ArtifactItem.of(tmp_path / f"entry{i:03d}.onnx") for i in range(entries)]
    anchor = ArtifactItem.of(tmp_path / "anchor.onnx")
    build(["scripted:T1@hostA", "scripted:T2@hostB"], items, anchor, tmp_path / "driver.sqlite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
