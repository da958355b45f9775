"""AndroidRunner against the real adb server and a fake adbd running the real model with onnxruntime."""

from __future__ import annotations

import socket

import pytest
from fake_adbd import Misbehaviour
from fake_perf_test import PerfTestBehaviour

from device_runners import DeviceLost, discover_devices, open_runner
from device_runners.android import AndroidRunner, check_remote_path, parse_cpu_list, parse_getprop, shell_join
from latbench.core.errors import DeviceError, UsageError
from latbench.measuring.measurement import SamplingPolicy
from latbench.measuring.session import Job, LocalDispatcher

# Few, short invocations keep the suite fast; the numbers are still real onnxruntime timings.
QUICK = {"min_invocations": 2, "max_invocations": 3, "runs_per_invocation": 8, "backoff_s": 0.05}


def open_phone(adb_server, adbd, **kw) -> AndroidRunner:
    return open_runner(f"android:{adbd.serial}", adb_port=adb_server.port, **{**QUICK, **kw})


def perf_commands(adbd) -> list[list[str]]:
    return [c for c in adbd.device.commands if c[0].endswith("onnxruntime_perf_test")]


def test_discovery_reports_the_phone_with_provenance(adb_server, make_phone):
    adbd = make_phone()
    found = {d.id: d for d in discover_devices(adb_port=adb_server.port)}
    info = found[f"android:{adbd.serial}"]
    assert info.available and info.reason is None
    assert info.provenance["device_model"] == "Pixel 7"
    assert info.provenance["soc"] == "Google Tensor G2"
    assert info.provenance["os"] == "Android 14"
    assert info.provenance["os_build"].startswith("google/fakephone")
    assert found["cpu"].available


def test_discovery_without_adb_server_is_unavailable_not_a_crash():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    infos = [d for d in discover_devices(adb_port=port) if d.kind == "android"]
    assert len(infos) == 1 and not infos[0].available
    assert f"127.0.0.1:{port}" in infos[0].reason and "\n" not in infos[0].reason
    with pytest.raises(DeviceError, match="no adb server"):
        open_runner("android:emulator-5554", adb_port=port)


def test_measure_end_to_end_with_pinning_threads_and_raw_samples(adb_server, make_phone, models):
    adbd = make_phone()
    with open_phone(adb_server, adbd, threads=2) as runner:
        prepared = runner.prepare(models["small"])
        m = runner.measure(prepared, SamplingPolicy.fixed(12, 2))
    assert m.n == 12 and all(s > 0 for s in m.samples_ms)
    assert m.provenance["sampling"]["sample_source"] == "result_file"
    assert m.provenance["sampling"]["invocations"] == 2
    # auto core mask = the cores with the highest max frequency (6 and 7 on the fake phone)
    assert m.provenance["core_mask"] == "c0" and m.provenance["cores"] == [6, 7]
    assert adbd.device.taskset_masks == ["c0", "c0"]
    assert m.provenance["governor"] == {"cpu6": "performance", "cpu7": "performance"}
    assert m.provenance["thermal_state"] == "none" and not m.throttled
    cmds = perf_commands(adbd)
    assert len(cmds) == 2
    for argv in cmds:
        assert argv[argv.index("-x") + 1] == "2" and argv[argv.index("-r") + 1] == str(2 + 6)
        assert argv[argv.index("-m") + 1] == "times" and "-I" in argv and argv[argv.index("-e") + 1] == "cpu"
        assert argv[-2] == f"/data/local/tmp/latbench/{prepared.content_hash}.onnx"
    assert len(m.extra["invocations"]) == 2 and m.extra["invocations"][0]["p50_ms"] > 0
    assert m.session_ms > 0 and m.first_inference_ms is not None
    # result files are cleaned up on the device
    assert not list((adbd.device.root / "latbench").glob("res_*"))


def test_push_happens_once_per_content_hash(adb_server, make_phone, models):
    adbd = make_phone()
    with open_phone(adb_server, adbd) as r1:
        r1.prepare(models["small"])
        r1.prepare(models["small"])
    with open_phone(adb_server, adbd) as r2:  # a new session finds the file already there
        prepared = r2.prepare(models["small"])
    assert adbd.device.pushes == [prepared.handle]
    # a partial file (a push cut short) is pushed again
    (adbd.device.root / "latbench" / f"{prepared.content_hash}.onnx").write_bytes(b"trunc")
    with open_phone(adb_server, adbd) as r3:
        r3.prepare(models["small"])
    assert adbd.device.pushes == [prepared.handle, prepared.handle]


def test_missing_benchmark_binary_is_explained_or_pushed(adb_server, make_phone, tmp_path):
    adbd = make_phone(install_perf_test=False)
    with pytest.raises(DeviceError, match="onnxruntime_perf_test not found at /data/local/tmp/onnxruntime_perf_test"):
        open_phone(adb_server, adbd)
    local = tmp_path / "onnxruntime_perf_test"
    from fake_perf_test import MAGIC

    local.write_bytes(MAGIC)
    with open_phone(adb_server, adbd, perf_test_local=local):
        pass
    binary = adbd.device.root / "onnxruntime_perf_test"
    assert binary.read_bytes() == MAGIC and binary.stat().st_mode & 0o111


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (PerfTestBehaviour(exit_code=255), "exited with status 255.*Run failed:simulated failure"),
        (PerfTestBehaviour(garbage=True), "unrecognised onnxruntime_perf_test output"),
        (PerfTestBehaviour(truncated=True), "unrecognised onnxruntime_perf_test output"),
    ],
)
def test_benchmark_failures_are_one_line_device_errors(adb_server, make_phone, models, behaviour, message):
    adbd = make_phone(Misbehaviour(perf=behaviour))
    with open_phone(adb_server, adbd) as runner:
        prepared = runner.prepare(models["small"])
        with pytest.raises(DeviceError, match=message) as err:
            runner.measure(prepared, SamplingPolicy.fixed(4, 1))
    assert "\n" not in str(err.value)
    assert not isinstance(err.value, DeviceLost)


def test_hung_benchmark_times_out(adb_server, make_phone, models):
    adbd = make_phone(Misbehaviour(perf=PerfTestBehaviour(hang_s=60)))
    with open_phone(adb_server, adbd, command_timeout=1.0) as runner:
        prepared = runner.prepare(models["small"])
        with pytest.raises(DeviceError, match="timed out after 1s"):  # the message proves the timeout fired
            runner.measure(prepared, SamplingPolicy.fixed(4, 1))


def test_unresponsive_device_times_out_on_quick_commands(adb_server, make_phone):
    adbd = make_phone(Misbehaviour(hang=True))
    with pytest.raises(DeviceError, match=r"`getprop` on android:.* timed out after 0.5s"):
        open_phone(adb_server, adbd, quick_timeout=0.5)


def test_transient_adb_failure_is_retried(adb_server, make_phone, models):
    adbd = make_phone()
    with open_phone(adb_server, adbd) as runner:
        prepared = runner.prepare(models["small"])
        adbd.device.misbehaviour.refuse_next = 2
        m = runner.measure(prepared, SamplingPolicy.fixed(4, 1))
    assert m.n == 4 and adbd.device.misbehaviour.refuse_next == 0


def test_unplug_mid_run_raises_device_lost_and_keeps_finished_results(adb_server, make_phone, models):
    adbd = make_phone()
    committed = []

    def commit(result):
        committed.append(result.key)
        # After the first artifact is done, the cable goes a few commands into the next one.
        adbd.device.misbehaviour.unplug_after_commands = adbd.device.shell_count + 3

    with open_phone(adb_server, adbd, retries=1) as runner:
        dispatcher = LocalDispatcher(runner)
        dispatcher.prepared = {name: runner.prepare(models[name], label=name) for name in ("small", "medium", "fp16")}
        jobs = [Job(name, 0, "block", SamplingPolicy.fixed(4, 1)) for name in ("small", "medium", "fp16")]
        with pytest.raises(DeviceLost) as lost:
            dispatcher.execute(jobs, [], 12, lambda res, is_anchor: commit(res.job))
    assert len(committed) == 1
    assert sorted(committed + lost.value.unmeasured) == ["fp16", "medium", "small"]
    assert isinstance(lost.value, DeviceError) and "disconnected" in str(lost.value)


def test_fallback_to_per_invocation_samples_without_result_file(adb_server, make_phone, models):
    adbd = make_phone(Misbehaviour(perf=PerfTestBehaviour(write_result_file=False)))
    with open_phone(adb_server, adbd) as runner:
        m = runner.measure(runner.prepare(models["small"]), SamplingPolicy.fixed(6, 1))
    assert m.provenance["sampling"]["sample_source"] == "per_invocation_p50"
    assert m.n == 2  # one per invocation
    assert m.samples_ms == [inv["p50_ms"] for inv in m.extra["invocations"]]
    assert any("per-run times unavailable" in w for w in m.warnings)


@pytest.mark.parametrize("variant", ["legacy", "newest"])
def test_other_perf_test_versions(adb_server, make_phone, models, variant):
    adbd = make_phone(Misbehaviour(perf=PerfTestBehaviour(variant=variant)))
    with open_phone(adb_server, adbd) as runner:
        m = runner.measure(runner.prepare(models["small"]), SamplingPolicy.fixed(6, 1))
    assert m.provenance["sampling"]["sample_source"] == "result_file" and m.n == 6
    inv = m.extra["invocations"][0]
    assert inv["average_ms"] > 0 and inv["p50_ms"] > 0


def test_shell_v1_device_and_throttling_flag(adb_server, make_phone, models):
    adbd = make_phone(Misbehaviour(shell_v2=False, thermal_status=2))
    with open_phone(adb_server, adbd) as runner:
        prepared = runner.prepare(models["small"])
        m = runner.measure(prepared, SamplingPolicy.fixed(4, 1))
        assert m.throttled and m.provenance["thermal_state"] == "moderate"
        adbd.device.misbehaviour.perf.exit_code = 3  # exit codes survive the v1 `; echo X4EXIT:$?` path
        with pytest.raises(DeviceError, match="status 3"):
            runner.measure(prepared, SamplingPolicy.fixed(4, 1))


def test_profile_pulls_and_parses_the_device_profile(adb_server, make_phone, models):
    adbd = make_phone()
    with open_phone(adb_server, adbd, profile_runs=5) as runner:
        m = runner.measure(runner.prepare(models["medium"]), SamplingPolicy.fixed(4, 1), profile=True)
    assert {"Conv", "GlobalAveragePool"} <= {op.op_type for op in m.per_op}
    assert any("-p" in argv for argv in perf_commands(adbd))
    assert not list((adbd.device.root / "latbench").glob("prof_*.json"))  # removed after the pull


def test_bare_serial_opens_the_android_runner(adb_server, make_phone):
    adbd = make_phone()
    with open_runner(adbd.serial, adb_port=adb_server.port, **QUICK) as runner:
        assert isinstance(runner, AndroidRunner) and runner.device_id == f"android:{adbd.serial}"


def test_explicit_core_mask_and_bad_inputs(adb_server, make_phone, models):
    adbd = make_phone()
    with open_phone(adb_server, adbd, core_mask="30") as runner:
        assert runner.cores == [4, 5]
        with pytest.raises(UsageError, match="content hash"):
            runner.prepare(models["small"], content_hash="x; rm -rf /")
    with pytest.raises(UsageError, match="hexadecimal"):
        open_phone(adb_server, adbd, core_mask="f0; reboot")
    # More threads than the cores given: they would take turns on a core (device_runners.base).
    with pytest.raises(UsageError, match="--threads 4 on 2 pinned cores"):
        open_phone(adb_server, adbd, core_mask="30", threads=4)
    with pytest.raises(UsageError, match="invalid device path"):
        open_phone(adb_server, adbd, remote_dir="/data/local/tmp/$(reboot)")
    with pytest.raises(UsageError, match="invalid adb serial"):
        open_runner("android:bad serial;reboot", adb_port=adb_server.port)


def test_quoting_and_parsing_helpers():
    assert shell_join(["echo", "a b", "$(x)", "it's"]) == "echo 'a b' '$(x)' 'it'\"'\"'s'"
    assert check_remote_path("/data/local/tmp/x.onnx") == "/data/local/tmp/x.onnx"
    for bad in ("relative/x", "/data/../etc", "/data/a b", "/data/`x`"):
        with pytest.raises(UsageError):
            check_remote_path(bad)
    assert parse_cpu_list("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9]
    assert parse_cpu_list("garbage") == []
    assert parse_getprop("[ro.a]: [x y]\n[ro.b]: []\nnoise\n") == {"ro.a": "x y", "ro.b": ""}


def test_a_phone_reporting_throttling_is_left_to_cool_before_it_is_measured(adb_server, make_phone, models):
    """Android's thermal status reaches the measuring session (AndroidRunner.throttling): the
    session idles the phone until it reports no throttling, and journals the pause."""
    from latbench.measuring.consensus import ConsensusRule
    from latbench.measuring.noise import HeatRule
    from latbench.measuring.session import ArtifactItem, MeasuringPlan, MeasuringSession, Target

    adbd = make_phone(Misbehaviour(thermal_status=2))
    with open_phone(adb_server, adbd) as runner:
        assert runner.throttling() is True
        slept = []

        def cooling(seconds: float) -> None:  # the phone cools while it idles
            slept.append(seconds)
            adbd.device.misbehaviour.thermal_status = 0

        runner.idle = cooling
        block, anchor = ArtifactItem.of(models["small"]), ArtifactItem.of(models["medium"])
        fixed = SamplingPolicy.fixed(4, 1)
        plan = MeasuringPlan(rounds=2, consensus=ConsensusRule.for_rounds(2, 2), min_separation_s=0.0,
                             policies={"block": fixed, "anchor": fixed}, heat=HeatRule(step_s=0.01, max_pause_s=0.05))
        res = MeasuringSession(runner, plan, export_jobs=1).run([Target(block.key, block, "block")],
                                                                [Target(anchor.key, anchor, "anchor")])
        assert runner.throttling() is False
    [pause] = res.report["pauses"]
    assert slept and pause["throttling"] is False  # resumed once the phone said it was cool
    blocks = res.rows[block.key]
    assert len(blocks) == 2 and not any(r.measurement.throttled for r in blocks)  # measured cool


def test_int8_onnx_is_measured_and_its_precision_recorded(adb_server, make_phone, int8_models):
    AndroidRunner.check_precision("int8")  # accepted up front, by sessions too
    adbd = make_phone()
    with open_phone(adb_server, adbd) as runner:
        m = runner.measure(runner.prepare(int8_models["onnx"]), SamplingPolicy.fixed(8, 1))
    assert m.n == 8 and all(s > 0 for s in m.samples_ms)  # the fake ran the QDQ graph in onnxruntime
    assert m.provenance["precision"] == "int8" and m.provenance["input_dtype"] == "float32"
