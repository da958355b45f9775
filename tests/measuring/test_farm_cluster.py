"""The device farm across hosts: a local multi-node Ray cluster (Ray's own cluster utilities: a head
and one raylet per simulated host, all with num_cpus=0), whose hosts serve devices the way
`latbench agent` does (serve_devices: named, detached actors on the host's node, asking for the
resources the host advertises): fake phones behind the real adb server, the host CPU, and scripted
devices with a fixed cost per measurement.

Covered: listing (`devices --cluster`), a pooled build on phones of two hosts with every artifact
shipped once per host, a device lost and an agent (its node) killed mid-build, a driver SIGKILLed
and resumed, with zero lost or duplicated journal rows in every case."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _support import REPO

from latbench.measuring.farm.names import apply_ray_environment, farm_id, host_resources

apply_ray_environment(loopback=True)  # before anything imports ray

ray = pytest.importorskip("ray", reason="the device farm needs the 'cluster' extra")

from fake_adbd import AdbServer, FakeAdbd, FakeDevice  # noqa: E402
from farm_devices import scripted  # noqa: E402

from latbench.commands._farm import runner_opener  # noqa: E402
from latbench.measuring.farm.cache import HostCache  # noqa: E402
from latbench.measuring.farm.cluster import open_cluster_farm, serve_devices  # noqa: E402
from latbench.measuring.farm.names import NAMESPACE  # noqa: E402
from latbench.measuring.journal import Journal  # noqa: E402
from latbench.measuring.session import MeasuringPlan, MeasuringSession, Target  # noqa: E402

FAKES = Path(__file__).resolve().parents[1] / "fakes"
SCRIPTED = {"device_kind": "scripted", "device_model": "script"}
PHONE = {"device_kind": "android", "device_model": "Pixel 7"}
TINY = {"name": "tiny", "resolutions": [224], "stages": [
    {"widths": [32], "depth": [1, 1], "expansions": [4], "attention": False},
    {"widths": [48], "depth": [1, 1], "expansions": [4], "attention": False},
    {"widths": [96], "depth": [1, 1], "expansions": [4], "attention": False},
    {"widths": [176], "depth": [1, 1], "expansions": [4], "attention": False}]}
BUILD = ["--runs", "3", "--rounds", "2", "--max-rounds", "2", "--jobs", "1", "--calibrate", "0", "--no-reference"]


class Farm:
    """The test cluster: hosts (name -> Ray node), their device openers and provenance, the adb server."""

    def __init__(self, tmp: Path) -> None:
        from ray.cluster_utils import Cluster

        self.tmp = tmp
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False,
            # A killed host is declared dead after 3 missed checks 0.5 s apart (default ~13 s); a pull
            # from a host that just died is retried after 1 s (default 10 s).
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                               "health_check_initial_delay_ms": 500, "object_manager_pull_timeout_ms": 1000}})
        self.address = self.cluster.address
        self.nodes: dict[str, object] = {}
        self.adb = AdbServer(tmp / "adb").start()
        self.phones: list[FakeAdbd] = []

    def phone(self, name: str) -> tuple[str, object, dict]:
        adbd = FakeAdbd(FakeDevice(self.tmp / name, serial=name)).start()
        adbd.device.install_perf_test()
        self.adb.connect(adbd.serial)
        self.phones.append(adbd)
        did = f"android:{adbd.serial}"
        return did, runner_opener(did, {"adb_port": self.adb.port}), PHONE

    def add_host(self, host: str, devices: list[tuple[str, object, dict]]) -> dict[str, object]:
        """A host as `latbench agent` makes it: a raylet advertising its devices, one actor per device."""
        provs = {did: prov for did, _, prov in devices}
        node = self.cluster.add_node(num_cpus=0, resources=host_resources(
            {farm_id(did, host): prov for did, prov in provs.items()}))
        self.cluster.wait_for_nodes()
        self.nodes[host] = node
        return serve_devices([d for d, _, _ in devices], {d: o for d, o, _ in devices}, host, provs,
                             node_id=node.node_id)

    def kill_host(self, host: str) -> None:
        """The agent's host dies (SIGKILL of its raylet and actors)."""
        self.cluster.remove_node(self.nodes.pop(host), allow_graceful=False)

    def close(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()
        for adbd in self.phones:
            adbd.stop()
        self.adb.stop()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("farm")
    # Ray's processes inherit this environment: the fakes importable, a cache per simulated host.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(FAKES), os.environ.get("PYTHONPATH")) if p)
    os.environ["LATBENCH_FARM_CACHE"] = str(tmp / "cache-{node}")
    f = Farm(tmp)
    try:
        ray.init(address=f.address, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING")
        f.add_host("hostA", [f.phone("PHONEA"), ("cpu", runner_opener("cpu", {}), {"device_kind": "cpu"}),
                             ("scripted:S1", scripted("scripted:S1", sleep_s=0.1), SCRIPTED),
                             ("scripted:S2", scripted("scripted:S2", sleep_s=0.1), SCRIPTED)])
        f.add_host("hostB", [f.phone("PHONEB"), ("scripted:S3", scripted("scripted:S3", sleep_s=0.1), SCRIPTED)])
        yield f
    finally:
        f.close()


@pytest.fixture
def tiny_space(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def journal_rows(path: Path) -> list[tuple[str, int, str, float]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT key, round, device, measured_at FROM measurements ORDER BY key, round").fetchall()
    finally:
        db.close()


def assert_each_round_once(rows, rounds: int) -> None:
    per: dict[str, list[int]] = {}
    for k, r, *_ in rows:
        per.setdefault(k, []).append(r)
    assert per and all(r == list(range(rounds)) for r in per.values()), per


def test_devices_of_every_host_are_listed_with_provenance_and_state(farm, run_cli_json):
    devices = {d["id"]: d for d in run_cli_json("devices", "--cluster", farm.address)}
    assert {"cpu@hostA", "scripted:S1@hostA", "scripted:S2@hostA", "scripted:S3@hostB"} <= set(devices)
    phones = [d for d in devices.values() if d["provenance"].get("device_model") == "Pixel 7"]
    assert sorted(d["host"] for d in phones) == ["hostA", "hostB"]
    assert devices["cpu@hostA"]["provenance"]["runtime"] == "onnxruntime"
    assert all(d["state"] == "idle" for d in devices.values())
    assert ray.cluster_resources()["latbench-device:android:Pixel_7"] == 2  # advertised by model, per host


def test_phones_of_two_hosts_build_one_table_and_artifacts_cross_once_per_host(farm, run_cli_json, tiny_space,
                                                                              tmp_path):
    args = ["lut", "build", "--space", str(tiny_space), "--cluster", farm.address, "--device",
            "model:android:Pixel_7", "--pool-tolerance", "0.5", *BUILD]  # two fake phones share two cores
    [s] = run_cli_json(*args, "--out", str(tmp_path / "t1"))
    rows = journal_rows(tmp_path / "t1" / "journal.sqlite")
    assert_each_round_once(rows, 2)
    assert {d.rsplit("@", 1)[1] for _, _, d, _ in rows} == {"hostA", "hostB"}
    meta = json.loads((tmp_path / "t1" / "meta.json").read_text())
    assert {meta["devices"][d]["host"] for d in meta["devices"]} == {"hostA", "hostB"}
    # Each host received each artifact once; a second table of the same blocks ships nothing.
    shipped = {h: HostCache(farm.tmp / f"cache-{farm.nodes[h].node_id[:16]}").shipped() for h in ("hostA", "hostB")}
    for v in shipped.values():  # every artifact (the entries' and the anchors'), once
        assert len(v) == len(set(v)) >= s["blocks"]
    assert set(shipped["hostA"]) == set(shipped["hostB"])
    # (What crosses to a host is fixed before any round is measured: one round of each entry will do.)
    run_cli_json(*args, "--rounds", "1", "--max-rounds", "1", "--out", str(tmp_path / "t2"))
    assert {d.rsplit("@", 1)[1] for _, _, d, _ in journal_rows(tmp_path / "t2" / "journal.sqlite")} == {"hostA", "hostB"}
    again = {h: HostCache(farm.tmp / f"cache-{farm.nodes[h].node_id[:16]}").shipped() for h in shipped}
    assert again == shipped


def session(dispatcher, journal, progress=None):
    from latbench.blocks.configs import AttnConfig, FFNConfig
    from latbench.measuring.consensus import ConsensusRule
    from latbench.measuring.timebase import session_factors

    rule = ConsensusRule()
    blocks = [FFNConfig(224, 3, 96, e) for e in (2, 3, 4)] + [FFNConfig(224, 4, 176, e) for e in (2, 3, 4)]
    s = MeasuringSession(dispatcher, MeasuringPlan(rounds=3, min_separation_s=0.0, anchor_every=4), journal=journal,
                         export_jobs=1, progress=progress, time_base=lambda j, ss: session_factors(j, rule, current=ss))
    return s.run([Target.of(b, "block") for b in blocks], [Target.of(AttnConfig(224, 3, 96), "anchor")])


def test_a_lost_device_and_a_killed_agent_cost_only_their_in_flight_work(farm, tmp_path):
    from latbench.measuring.consensus import ConsensusRule
    from latbench.measuring.farm.dispatcher import PoolCheck

    farm.add_host("hostC", [("scripted:C1", scripted("scripted:C1", sleep_s=0.1), SCRIPTED),
                            ("scripted:C2", scripted("scripted:C2", sleep_s=0.1), SCRIPTED)])
    farm.add_host("hostD", [("scripted:L", scripted("scripted:L", sleep_s=0.1, lost_after=7), SCRIPTED)])
    seen = []
    node_id = farm.nodes["hostC"].node_id

    def progress(phase, done, total, detail=None):
        if phase.startswith("device ") and "gone" not in (detail or ""):
            seen.append(phase)
            if len(seen) == 3:
                farm.kill_host("hostC")  # its agent dies mid-build, with a measurement in flight
                # A killed raylet's worker processes answer direct calls for a moment; this short build
                # could end before that shows. Wait (in the driver loop) until the cluster knows it.
                wait_dead(node_id)

    path = tmp_path / "journal.sqlite"
    with open_cluster_farm(["scripted:S1@hostA", "scripted:S3@hostB", "scripted:*@hostC", "scripted:L@hostD"],
                           pool=PoolCheck(ConsensusRule()), suspect_timeout_s=20) as f:
        session(f, Journal(path), progress)
        report = f.report()["devices"]
    rows = journal_rows(path)
    assert_each_round_once(rows, 3)
    assert report["scripted:L@hostD"]["gone"].startswith("device lost")
    for d in ("scripted:C1@hostC", "scripted:C2@hostC"):  # dropped, or unanswered when the build ended
        assert report[d]["gone"] or report[d]["unreachable"], report
    assert not any(report[d]["gone"] or report[d]["unreachable"] for d in ("scripted:S1@hostA", "scripted:S3@hostB"))
    by = {d: sum(1 for *_, dev, _ in rows if dev == d) for d in report}
    assert all(by[d] == report[d]["jobs"] for d in report)  # every result a device returned was journalled
    assert by["scripted:S1@hostA"] + by["scripted:S3@hostB"] > 0 and sum(by.values()) == 18


def wait_dead(node_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            return
        time.sleep(0.1)
    raise AssertionError(f"node {node_id} still alive {timeout_s} s after it was killed")


def test_a_killed_driver_resumes_from_the_journal_without_remeasuring(farm, tiny_space, tmp_path):
    out = tmp_path / "t"
    env = {**os.environ, "PYTHONPATH": os.environ["PYTHONPATH"]}
    cmd = [sys.executable, "-m", "latbench", "lut", "build", "--space", str(tiny_space), "--cluster", farm.address,
           "--device", "scripted:S1@hostA", "--device", "scripted:S2@hostA", "--device", "scripted:S3@hostB",
           "--out", str(out), "--json", *BUILD]
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            if len(journal_rows(out / "journal.sqlite")) >= 6:
                break
        except sqlite3.OperationalError:  # the journal is not there (or not set up) yet
            pass
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = journal_rows(out / "journal.sqlite")
    assert 6 <= len(before)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [s] = json.loads(done.stdout)
    after = journal_rows(out / "journal.sqlite")
    assert_each_round_once(after, 2)
    assert set(before) <= set(after)  # nothing the killed driver journalled was measured again
    assert s["measured_now"] == len(after) - len(before)
