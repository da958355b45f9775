"""`latbench lut build` with several --device: fake phones behind the real adb server (each running
the real model with onnxruntime), one Ray actor per phone on a private local Ray instance."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from _support import REPO
from phone_fixtures import adb_server, make_phone  # noqa: F401 - fixtures

from latbench.measuring.farm.names import apply_ray_environment

apply_ray_environment(loopback=True)  # before anything imports ray

TINY = {
    "name": "tiny",
    "resolutions": [224],
    "stages": [
        {"widths": [32], "depth": [1, 1], "expansions": [4], "attention": False},
        {"widths": [48], "depth": [1, 1], "expansions": [4], "attention": False},
        {"widths": [96], "depth": [1, 1], "expansions": [4], "attention": False},
        {"widths": [176], "depth": [1, 1], "expansions": [4], "attention": False},
    ],
}
FAST = ["--runs", "3", "--rounds", "2", "--max-rounds", "2", "--jobs", "1", "--calibrate", "0", "--no-reference"]
#: Both fake phones run their models on this host's two shared cores, so their speeds differ far more
#: than two real phones' do (9 % seen): the refusal itself is tested on scripted devices (measuring/test_farm.py).
SHARED_HOST_TOLERANCE = ["--pool-tolerance", "0.5"]


@pytest.fixture
def tiny_space(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def rows(table):
    db = sqlite3.connect(table / "journal.sqlite")
    try:
        return db.execute("SELECT key, round, device FROM measurements ORDER BY key, round").fetchall()
    finally:
        db.close()


def test_two_phones_build_one_pooled_table(run_cli_json, adb_server, make_phone, tiny_space, tmp_path):  # noqa: F811
    pytest.importorskip("ray")
    phones = [f"android:{make_phone(serial=f'FARM{i}').serial}" for i in range(2)]
    out = tmp_path / "pooled"
    [s] = run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--adb-port",
                       str(adb_server.port), *[a for p in phones for a in ("--device", p)], *FAST, *SHARED_HOST_TOLERANCE)
    journal = rows(out)
    rounds: dict[str, list[int]] = {}
    for k, r, _ in journal:
        rounds.setdefault(k, []).append(r)
    assert len(rounds) == s["blocks"] and len(journal) == s["measured_now"]
    assert all(r == list(range(len(r))) and len(r) >= 2 for r in rounds.values())  # each round once, none lost
    assert {d for *_, d in journal} == set(phones)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["device_id"] == "android:Pixel_7" and meta["device"]["device_model"] == "Pixel 7"
    assert set(meta["devices"]) == set(phones)
    for d in phones:
        assert meta["devices"][d]["rounds"] > 0 and 0.5 < meta["devices"][d]["relative_speed"] <= 1.0
    assert max(meta["devices"][d]["relative_speed"] for d in phones) == 1.0
    assert meta["pool"]["tolerance"] == 0.5


def test_separate_tables_build_one_table_per_phone(run_cli_json, adb_server, make_phone, tiny_space,  # noqa: F811
                                                   tmp_path):
    pytest.importorskip("ray")
    phones = [f"android:{make_phone(serial=f'SEP{i}').serial}" for i in range(2)]
    out = tmp_path / "sep"
    summaries = run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--separate-tables",
                             "--adb-port", str(adb_server.port), *[a for p in phones for a in ("--device", p)],
                             *FAST[:2], "--rounds", "1", "--max-rounds", "1", *FAST[6:])
    assert sorted(s["device"] for s in summaries) == sorted(phones)
    for s in summaries:
        journal = rows(tmp_path / s["table"])
        assert {d for *_, d in journal} == {s["device"]} and len(journal) == s["measured_now"] == s["blocks"]


@pytest.mark.parametrize("args", [["--device", "cpu", "--device", "android:X"], ["--cluster", "127.0.0.1:1"]])
def test_without_ray_the_farm_is_a_one_line_error_naming_the_extra(args, tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"  # as if the cluster extra were not installed
            "from latbench.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "lut", "build", "--model", "mobilenetv2_100", "--out",
                        str(tmp_path / "t"), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "pip install 'latbench[cluster]'" in p.stderr and p.stderr.strip().count("\n") == 0
    assert not (tmp_path / "t").exists()


def test_separate_tables_needs_several_devices(run_cli, tmp_path):
    code, _, err = run_cli("lut", "build", "--model", "mobilenetv2_100", "--out", str(tmp_path / "t"),
                           "--separate-tables")
    assert code == 2 and "--separate-tables needs several --device" in err


def test_agent_joins_a_cluster_serves_its_device_and_leaves_on_sigterm(tmp_path):
    """The real `latbench agent` (its own `ray start` node) joining a real head, as on a farm: every
    process is a child here, so none of this test process's loopback-only Ray settings apply."""
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    ray_cli = str(Path(sys.executable).with_name("ray"))
    short_dir = tempfile.mkdtemp(prefix="lbray-")  # Ray's sockets live under it: AF_UNIX paths are short
    head = subprocess.Popen([ray_cli, "start", "--head", "--port", "0", "--num-cpus", "0", "--include-dashboard",
                             "false", "--disable-usage-stats", "--block", "--temp-dir", short_dir],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    agent = None
    try:
        address = wait_for_line(head, r"--address='([^']+)'")
        agent = subprocess.Popen([sys.executable, "-m", "latbench", "agent", "--cluster", address, "--device", "cpu",
                                  "--host", "lab-1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        wait_for_line(agent, r"agent of lab-1 joined")

        def listed():
            p = subprocess.run([sys.executable, "-m", "latbench", "devices", "--cluster", address, "--json"],
                               env=env, capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
            return {d["id"]: d for d in json.loads(p.stdout)}

        [(fid, dev)] = listed().items()
        assert fid == "cpu@lab-1" and dev["state"] == "idle" and dev["provenance"]["device_kind"] == "cpu"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=120) == 0 and "agent of lab-1 stopped" in agent.stdout.read()
        assert listed() == {}  # its device left the farm with it
    finally:
        for p in (agent, head):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=120)
        shutil.rmtree(short_dir, ignore_errors=True)


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout_s: float = 120) -> str:
    """The first match of `pattern` in a child's output (its group 1, or the line)."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if not line:
            raise AssertionError(f"process ended before printing {pattern!r}: {''.join(seen)[-600:]}")
        m = re.search(pattern, line)
        if m:
            return m.group(1) if m.groups() else line
    raise AssertionError(f"no {pattern!r} within {timeout_s} s")


def test_agent_needs_an_address(run_cli, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, _, err = run_cli("agent", "--device", "cpu")
    assert code == 2 and "--cluster HOST:PORT" in err and err.count("\n") == 1
