"""Device ids, open_runner errors, discovery robustness and the `latbench devices` command."""

from __future__ import annotations

import argparse
import json
import socket

import pytest

import device_runners
from device_runners import discover_devices, open_runner
from device_runners.cpu import CpuRunner
from latbench.commands import devices as devices_cmd
from latbench.core.errors import DeviceError, UsageError


@pytest.fixture
def no_adb_server(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    return port


def run_devices(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    devices_cmd.register(sub)
    args = parser.parse_args(["devices", *argv])
    return args.func(args)


def test_default_device_is_the_cpu():
    with open_runner() as runner:
        assert isinstance(runner, CpuRunner) and runner.device_id == "cpu"


def test_unknown_device_lists_the_known_ones(no_adb_server):
    with pytest.raises(UsageError) as err:
        open_runner("nokia:3310")
    msg = str(err.value)
    assert "unknown device 'nokia:3310'" in msg and "cpu" in msg and "android (unavailable)" in msg
    assert "\n" not in msg


def test_bad_option_is_a_usage_error():
    with pytest.raises(UsageError, match="option 'warp_speed' does not apply to cpu devices"):
        open_runner("cpu", warp_speed=9)


def test_unavailable_device_is_a_one_line_device_error(no_adb_server):
    with pytest.raises(DeviceError) as err:
        open_runner("android:ABC123")
    assert "no adb server" in str(err.value) and "\n" not in str(err.value)


def test_a_broken_kind_does_not_hide_the_others(monkeypatch):
    def boom(cls, **_):
        raise RuntimeError("driver exploded\nwith a traceback")

    monkeypatch.setattr(CpuRunner, "discover", classmethod(boom))
    infos = {d.kind: d for d in discover_devices()}
    assert not infos["cpu"].available and infos["cpu"].reason == "discovery failed: driver exploded"
    assert {"android", "iphone", "mac"} <= set(infos)


def test_every_kind_is_registered_once():
    kinds = [cls.kind for cls in device_runners.runner_classes()]
    assert sorted(kinds) == ["aihub", "android", "cpu", "iphone", "litert", "mac"]


def test_devices_json_lists_every_kind_with_availability(capsys, no_adb_server):
    assert run_devices("--json") == 0
    rows = json.loads(capsys.readouterr().out)
    by_id = {r["id"]: r for r in rows}
    assert set(rows[0]) == {"id", "kind", "available", "reason", "provenance"}
    assert by_id["cpu"]["available"] and by_id["cpu"]["provenance"]["runtime"] == "onnxruntime"
    assert not by_id["android"]["available"] and str(no_adb_server) in by_id["android"]["reason"]
    assert {r["kind"] for r in rows} == {"cpu", "litert", "android", "iphone", "mac", "aihub"}
    # tests/conftest.py points the AI Hub client at a config that does not exist
    reason = by_id["aihub"]["reason"]
    assert not by_id["aihub"]["available"] and ("no AI Hub API token configured" in reason or "not installed" in reason)


def test_devices_table_shows_phone_from_the_adb_server(capsys, monkeypatch, adb_server, make_phone):
    adbd = make_phone()
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(adb_server.port))
    assert run_devices() == 0
    out = capsys.readouterr().out
    assert "android:127.0.0.1" in out and "Pixel" in out and "cpu" in out
    assert run_devices("--json") == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[f"android:{adbd.serial}"]["available"]


# -- a table's recorded configuration opens the device again as it was --------------------------
@pytest.mark.parametrize("device_id, options", [
    ("cpu", {"threads": 2}),
    ("cpu", {"core_mask": "1"}),
    ("litert", {"threads": 2, "xnnpack": "off"}),
    ("litert", {"core_mask": "1"}),
])
def test_a_runners_provenance_reopens_it_as_it_was(device_id, options, own_core):
    from latbench.tables.table import PROVENANCE_KEYS, device_diff

    if "core_mask" in options:  # pinned to a core this process may run on
        options = {**options, "core_mask": own_core[1]}

    with open_runner(device_id, **options) as first:
        recorded = first.describe()
    back = type(first).table_options(recorded)
    with open_runner(device_id, **back) as again:
        assert device_diff(recorded, again.describe()) == []
    with open_runner(device_id) as plain:  # the defaults are another configuration: the options mattered
        assert device_diff(recorded, plain.describe(), PROVENANCE_KEYS)


def test_recorded_options_of_the_kinds_that_cannot_run_here():
    from device_runners.aihub import AIHubRunner
    from device_runners.android import AndroidRunner
    from device_runners.iphone import IPhoneRunner
    from device_runners.mac import MacRunner

    base = {"threads": 4, "core_mask": "f0", "xnnpack": False}
    assert AndroidRunner.table_options({**base, "runtime": "litert benchmark_model"}) == {
        "threads": 4, "core_mask": "f0", "runtime": "litert", "xnnpack": False}
    # onnxruntime_perf_test takes no XNNPACK setting: a recorded one is not given back
    assert AndroidRunner.table_options({**base, "runtime": "onnxruntime_perf_test"}) == {
        "threads": 4, "core_mask": "f0", "runtime": "onnxruntime"}
    assert AndroidRunner.table_options({"threads": None, "runtime": "something else"}) == {}
    for cls, units in ((MacRunner, "CPU_AND_NE"), (IPhoneRunner, "ALL"), (AIHubRunner, "npu")):
        assert cls.table_options({**base, "compute_units": units, "threads": None}) == {"compute_units": units}
