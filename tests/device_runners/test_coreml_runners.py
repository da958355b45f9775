"""iPhone and Mac runners: unavailable on Linux, and the real runner code against a fake coremltools API."""

from __future__ import annotations

import platform

import fake_coreml_device as fake
import pytest

from device_runners import discover_devices, open_runner
from device_runners.coreml_common import ESTIMATED_OPS_WARNING
from device_runners.iphone import IPhoneRunner
from device_runners.mac import MacRunner
from latbench.core.errors import DeviceError, DeviceLost, UsageError
from latbench.measuring.measurement import SamplingPolicy

UDID = "00008101-000A1B2C3D4E001E"
HW = {"marketingName": "iPhone 12", "productType": "iPhone13,2", "cpuType": {"name": "arm64e"}}


@pytest.fixture
def world():
    return fake.reset([fake.make_iphone(UDID)])


@pytest.fixture
def mlpackage(tmp_path):
    return fake.write_fake_model(tmp_path / "tiny.mlpackage", latency_ms=1.5)


def open_iphone(**kw) -> IPhoneRunner:
    return open_runner(
        f"iphone:{UDID}", coreml_api=fake, host_os_name="Darwin", hardware_lookup=lambda udid: HW, **kw
    )


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the non-macOS behaviour")
def test_on_linux_both_are_unavailable_with_a_reason_and_never_crash():
    found = {d.id: d for d in discover_devices()}
    assert not found["iphone"].available and "macOS" in found["iphone"].reason
    assert found["mac"].reason == f"Core ML prediction needs macOS (this host is {platform.system()})"
    with pytest.raises(DeviceError, match=r"^mac unavailable: Core ML prediction needs macOS"):
        open_runner("mac")
    with pytest.raises(DeviceError, match="needs a macOS host"):
        open_runner(f"iphone:{UDID}")


def test_iphone_discovery_through_the_harness(world):
    fake.WORLD.devices.append(fake.make_iphone("OTHER-UDID", developer_mode_state="disabled"))
    infos = {d.id: d for d in IPhoneRunner.discover(coreml_api=fake, host_os_name="Darwin")}
    ok = infos[f"iphone:{UDID}"]
    assert ok.available and ok.provenance["os"] == "iOS 17.5.1" and ok.provenance["device_name"] == "Test iPhone"
    assert not infos["iphone:OTHER-UDID"].available and "Developer Mode is disabled" in infos["iphone:OTHER-UDID"].reason
    fake.reset(devicectl_error="The 'devicectl' command is required.")
    (info,) = IPhoneRunner.discover(coreml_api=fake, host_os_name="Darwin")
    assert not info.available and "devicectl" in info.reason


def test_iphone_measure_uses_on_device_samples_and_records_provenance(world, mlpackage):
    with open_iphone(compute_units="CPU_AND_NE", batch=20) as runner:
        assert fake.WORLD.launched == [UDID]  # the model-runner app was started once
        prepared = runner.prepare(mlpackage)
        m = runner.measure(prepared, SamplingPolicy(warmup_runs=3, min_runs=20, max_runs=100))
    assert 20 <= m.n <= 100 and all(s > 0 for s in m.samples_ms)
    assert m.session_ms > 0 and m.first_inference_ms > m.median  # first predict pays for specialisation
    p = m.provenance
    assert p["device_model"] == "iPhone 12" and p["product_type"] == "iPhone13,2"
    assert p["os"] == "iOS 17.5.1" and p["compute_units"] == "CPU_AND_NE"
    assert p["runtime"] == "coreml" and "9.0-fake" in p["runtime_version"]
    assert p["input_shape"] == [1, 3, 32, 32] and p["precision"] == "fp32"


def test_iphone_fixed_runs_and_compute_units_choice(world, mlpackage):
    medians = {}
    for cu in ("CPU_ONLY", "ALL"):
        with open_iphone(compute_units=cu, batch=10) as runner:
            m = runner.measure(runner.prepare(mlpackage), SamplingPolicy.fixed(25, 1))
        assert m.n == 25
        medians[cu] = m.median
    assert medians["ALL"] < medians["CPU_ONLY"]  # the simulated Neural Engine is faster
    with pytest.raises(UsageError, match="compute units"):
        open_iphone(compute_units="GPU_ONLY")


def test_iphone_per_op_estimates_are_labelled(world, mlpackage):
    with open_iphone(batch=10, profile_runs=5) as runner:
        m = runner.measure(runner.prepare(mlpackage), SamplingPolicy.fixed(10, 1), profile=True)
    assert [op.op_type for op in m.per_op] == ["conv", "reduce_mean", "relu"]
    assert m.per_op[0].node_name == "conv_0"
    assert ESTIMATED_OPS_WARNING in m.warnings


def test_iphone_disconnect_mid_run_is_device_lost(world, mlpackage):
    with open_iphone(batch=10) as runner:
        prepared = runner.prepare(mlpackage)
        fake.WORLD.disconnect_after_predicts = fake.WORLD.predict_calls + 15
        with pytest.raises(DeviceLost) as lost:
            runner.measure(prepared, SamplingPolicy.fixed(40, 1))
    assert lost.value.unmeasured == ["tiny"] and "disconnected" in str(lost.value)


def test_iphone_load_failure_and_unavailable_phone(world, mlpackage, tmp_path):
    fake.WORLD.load_error = "Failed to compile the model: unsupported op"
    with open_iphone() as runner:
        with pytest.raises(DeviceError, match="Core ML load failed on iphone:.*unsupported op") as err:
            runner.prepare(mlpackage)
        assert not isinstance(err.value, DeviceLost)
        (tmp_path / "empty.mlpackage").mkdir()
        with pytest.raises(UsageError, match="not a readable Core ML model"):
            runner.prepare(tmp_path / "empty.mlpackage")
    fake.reset([fake.make_iphone(UDID, state=fake.DeviceState.DISCONNECTED)])
    with pytest.raises(DeviceError, match="device state is 'disconnected'"):
        open_iphone()
    fake.reset([])
    with pytest.raises(DeviceError, match="not connected"):
        open_iphone()


def test_mac_runner_times_predict_locally(world, mlpackage):
    with open_runner("mac", coreml_api=fake, host_os_name="Darwin", compute_units="CPU_ONLY") as runner:
        prepared = runner.prepare(mlpackage)
        m = runner.measure(prepared, SamplingPolicy.fixed(20, 2), profile=True)
        assert runner.describe()["compute_units"] == "CPU_ONLY"
    assert m.n == 20 and m.session_ms is not None and m.first_inference_ms is not None
    # predict() really spends the simulated 1.5 ms, so host timing sees at least that
    assert m.median >= 1.4
    assert {op.op_type for op in m.per_op} == {"conv", "relu", "reduce_mean"}
    assert ESTIMATED_OPS_WARNING in m.warnings
    (info,) = MacRunner.discover(coreml_api=fake, host_os_name="Darwin")
    assert info.available and info.provenance["runtime"] == "coreml"


def test_coreml_runners_reject_onnx_artifacts(world, models):
    with open_runner("mac", coreml_api=fake, host_os_name="Darwin") as runner:
        with pytest.raises(UsageError, match="coreml"):
            runner.prepare(models["small"])


def test_coreml_runners_measure_w8a8_and_record_int8(world, mlpackage, tmp_path):
    from device_runners.iphone import IPhoneRunner
    from device_runners.mac import MacRunner

    IPhoneRunner.check_precision("int8")
    MacRunner.check_precision("int8")
    w8a8 = fake.write_fake_model(tmp_path / "w8a8.mlpackage", latency_ms=1.0, w8a8=True)
    with open_runner("mac", coreml_api=fake, host_os_name="Darwin", compute_units="CPU_ONLY") as runner:
        m = runner.measure(runner.prepare(w8a8), SamplingPolicy.fixed(5, 1))
        plain = runner.measure(runner.prepare(mlpackage), SamplingPolicy.fixed(3, 1))
    assert m.n == 5 and m.provenance["precision"] == "int8"
    assert plain.provenance["precision"] == "fp32"  # no quantize op: the inputs' dtype says it
    with open_iphone() as runner:
        m = runner.measure(runner.prepare(w8a8), SamplingPolicy.fixed(5, 1))
    assert m.n == 5 and m.provenance["precision"] == "int8"
