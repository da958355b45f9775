"""iPhones through coremltools' remote-device harness, driven by `xcrun devicectl` from a Mac.

coremltools (>= 8.3) ships coremltools.models.ml_program.experimental: Device.get_devices() /
get_connected_devices(DeviceType.IPHONE) list devices; Device.prepare_for_model_debugging()
builds and launches a model-runner app on the phone and returns a Device with a session;
MLModelBenchmarker(model, device) then loads and predicts on the phone. Its timings are taken
on the device (load_duration / last_predict_duration), in milliseconds.

Samples: benchmark_predict in batches of `batch` predictions until the caller's SamplingPolicy
stops it (fixed runs, or the median's CI target, the time cap or max runs), after the policy's
warm-up predictions (at least one), whose first is the first-inference time. session_ms is the median of `load_iterations` loads.
Per-op times come from benchmark_operation_execution and are estimates (whole-model time x
MLComputePlan cost weight), which every such Measurement says in its warnings.

Needs a macOS host with Xcode; elsewhere discovery reports the device kind as unavailable.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_runners.base import DeviceInfo, Prepared, Runner
from device_runners.coreml_common import (
    ESTIMATED_OPS_WARNING,
    check_compute_units,
    get_api,
    host_os,
    ops_from_execution_info,
    readable_model,
    run_async,
    spec_precision,
)
from device_runners.ort_common import artifact_info
from latbench.core.errors import DeviceError, DeviceLost, UsageError
from latbench.core.text import first_line
from latbench.measuring.measurement import Measurement, SamplingPolicy


def devicectl_hardware(udid: str, timeout: float = 30.0) -> dict[str, Any]:
    """hardwareProperties of one device from `xcrun devicectl list devices` ({} if unavailable).

    The harness's Device carries no hardware model, so it is read here for provenance.
    """
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "devices.json"
            subprocess.run(
                ["xcrun", "devicectl", "list", "devices", "--json-output", str(out)],
                capture_output=True,
                timeout=timeout,
                check=True,
            )
            data = json.loads(out.read_text())
        for dev in data.get("result", {}).get("devices", []):
            hw = dev.get("hardwareProperties", {})
            if hw.get("udid") == udid:
                return hw
    except Exception:
        pass
    return {}


def _unavailable(reason: str) -> list[DeviceInfo]:
    return [DeviceInfo("iphone", "iphone", False, reason, {})]


def _linux_reason(system: str) -> str:
    return f"iPhone benchmarking needs a macOS host with Xcode (xcrun devicectl); this host is {system}"


class IPhoneRunner(Runner):
    #: int8: W8A8 ML Programs (quantized activations, int8 weights) run on Core ML as they are.
    precisions = ("fp32", "fp16", "int8")

    kind = "iphone"
    artifact_format = "coreml"
    table_option_fields = ("compute_units",)

    def __init__(
        self,
        device: Any,
        *,
        api: Any,
        compute_units: str = "ALL",
        load_iterations: int = 3,
        batch: int = 50,
        profile_runs: int = 20,
        hardware: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.api = api
        self.device = device
        self.udid = device.udid
        self.device_id = f"iphone:{device.udid}"
        self.compute_units = check_compute_units(compute_units)
        if min(load_iterations, batch, profile_runs) < 1:
            raise UsageError("iteration counts must be >= 1")
        self.load_iterations = load_iterations
        self.batch = batch
        self.profile_runs = profile_runs
        self.hardware = hardware or {}
        self._loop = asyncio.new_event_loop()

    @classmethod
    def discover(cls, *, coreml_api: Any = None, host_os_name: str | None = None, **_: Any) -> list[DeviceInfo]:
        system = host_os(host_os_name)
        if system != "Darwin":
            return _unavailable(_linux_reason(system))
        try:
            api = get_api(coreml_api)
            devices = [d for d in api.Device.get_devices() if d.type == api.DeviceType.IPHONE]
        except Exception as e:
            return _unavailable(f"coremltools remote-device harness failed: {first_line(e)}")
        if not devices:
            return _unavailable("no iPhone found by xcrun devicectl (connect it and enable Developer Mode)")
        infos = []
        for d in devices:
            reason = _device_problem(api, d)
            infos.append(DeviceInfo(f"iphone:{d.udid}", "iphone", reason is None, reason, _device_provenance(d)))
        return infos

    @classmethod
    def open(
        cls,
        device_id: str = "iphone",
        *,
        coreml_api: Any = None,
        host_os_name: str | None = None,
        credentials: Any = None,
        working_directory: str | Path | None = None,
        hardware_lookup: Callable[[str], dict[str, Any]] = devicectl_hardware,
        **options: Any,
    ) -> IPhoneRunner:
        system = host_os(host_os_name)
        if system != "Darwin":
            raise DeviceError(f"{device_id} unavailable: {_linux_reason(system)}")
        compute_units = check_compute_units(options.get("compute_units", "ALL"))
        api = get_api(coreml_api)
        udid = device_id.split(":", 1)[1] if ":" in device_id else None
        try:
            phones = [d for d in api.Device.get_devices() if d.type == api.DeviceType.IPHONE]
        except Exception as e:
            raise DeviceError(f"coremltools remote-device harness failed: {first_line(e)}") from e
        matches = [d for d in phones if udid is None or udid in (d.udid, d.identifier)]
        if not matches:
            raise DeviceError(f"{device_id} is not connected (run `latbench devices`)")
        if len(matches) > 1:
            raise UsageError(f"several iPhones connected; pick one of {', '.join('iphone:' + d.udid for d in matches)}")
        device = matches[0]
        problem = _device_problem(api, device)
        if problem:
            raise DeviceError(f"iphone:{device.udid} unavailable: {problem}")
        loop = asyncio.new_event_loop()
        try:
            ready = loop.run_until_complete(
                device.prepare_for_model_debugging(
                    credentials=credentials,
                    working_directory=Path(working_directory) if working_directory else None,
                )
            )
        except Exception as e:
            raise DeviceError(f"could not start the model runner app on iphone:{device.udid}: {first_line(e)}") from e
        finally:
            loop.close()
        options["compute_units"] = compute_units
        return cls(ready, api=api, hardware=hardware_lookup(device.udid), **options)

    # -- helpers ------------------------------------------------------------------------------
    def _connected(self) -> bool:
        try:
            return any(
                d.udid == self.udid and d.state == self.api.DeviceState.CONNECTED for d in self.api.Device.get_devices()
            )
        except Exception:
            return True  # cannot tell; report the original failure instead

    def _call(self, what: str, label: str, coro_fn: Callable[[], Any]) -> Any:
        try:
            return run_async(self._loop, coro_fn())
        except Exception as e:
            if not self._connected():
                raise DeviceLost(f"iphone:{self.udid} disconnected during {what}", unmeasured=[label]) from e
            raise DeviceError(f"Core ML {what} failed on iphone:{self.udid}: {first_line(e)}") from e

    def describe(self) -> dict[str, Any]:
        return {
            **_device_provenance(self.device),
            "device_model": self.hardware.get("marketingName") or self.hardware.get("productType"),
            "product_type": self.hardware.get("productType"),
            "soc": self.hardware.get("cpuType", {}).get("name") if isinstance(self.hardware.get("cpuType"), dict) else None,
            "runtime": "coreml",
            "runtime_version": f"coremltools {getattr(self.api, '__version__', 'unknown')}",
            "compute_units": self.compute_units,
            "threads": None,
            "core_mask": None,
            "governor": None,
            "thermal_state": None,  # the harness exposes no thermal state
        }

    # -- artifacts ----------------------------------------------------------------------------
    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared:
        model, specs = readable_model(self.api, artifact, self.compute_units)
        info = artifact_info(specs, spec_precision(model))
        bench = self.api.MLModelBenchmarker(model=model, device=self.device)
        loads = self._call("load", label, lambda: bench.benchmark_load(iterations=self.load_iterations))
        return Prepared(label, content_hash, artifact, bench, info, session_ms=statistics.median(loads.samples))

    def measure(self, prepared: Prepared, policy: SamplingPolicy | None = None, *, profile: bool = False) -> Measurement:
        policy = policy or SamplingPolicy()
        bench = prepared.handle
        label = prepared.label
        warmup = max(policy.warmup_runs, 1)
        warm = self._call("predict", label, lambda: bench.benchmark_predict(iterations=warmup))
        first_ms = warm.samples[0] if warm.samples else None
        samples: list[float] = []
        start = time.perf_counter()
        while True:
            n = self.batch if policy.runs is None else min(self.batch, policy.runs - len(samples))
            batch = self._call("predict", label, lambda n=n: bench.benchmark_predict(iterations=n))
            samples.extend(float(s) for s in batch.samples)
            stopped_by = policy.stop_reason(samples, time.perf_counter() - start)
            if stopped_by:
                break
        warnings = [w for w in [policy.ci_warning(samples, stopped_by)] if w]
        per_op = []
        if profile:
            infos = self._call(
                "per-op profile", label, lambda: bench.benchmark_operation_execution(iterations=self.profile_runs)
            )
            per_op = ops_from_execution_info(infos)
            warnings.append(ESTIMATED_OPS_WARNING)
        provenance = self.provenance_for(
            prepared, {"warmup_runs": warmup, "timed_runs": len(samples), "stopped_by": stopped_by,
                       "timed_wall_s": round(time.perf_counter() - start, 6), "timing": "on-device"}
        )
        return Measurement(
            label=label,
            samples_ms=samples,
            provenance=provenance,
            per_op=per_op,
            session_ms=prepared.session_ms,
            first_inference_ms=first_ms,
            warnings=warnings,
        )

    def close(self) -> None:
        super().close()
        if not self._loop.is_closed():
            self._loop.close()


def _device_problem(api: Any, device: Any) -> str | None:
    if device.state != api.DeviceState.CONNECTED:
        return f"device state is '{getattr(device.state, 'value', device.state)}' (connect it and unlock it)"
    mode = str(device.developer_mode_state or "").lower()
    if mode and mode != "enabled":
        return f"Developer Mode is {mode} (Settings > Privacy & Security > Developer Mode)"
    return None


def _device_provenance(device: Any) -> dict[str, Any]:
    return {
        "device_kind": "iphone",
        "device_name": device.name,
        "udid": device.udid,
        "os": f"iOS {device.os_version}" if device.os_version else None,
        "os_build": device.os_build_number or None,
        "developer_mode": device.developer_mode_state or None,
    }


RUNNER = IPhoneRunner
