"""This Mac, through Core ML: coremltools MLModel(...).predict timed in-process.

Core ML prediction exists only on macOS; elsewhere discovery lists `mac` as unavailable with the
reason. Loading the model is session_ms, the first predict is first_inference_ms, then the shared
adaptive sampling loop (warm-up by count and time, stop at ~1 % median CI or the time cap) times
predict() with perf_counter_ns. Per-op times (profile=True) come from MLModelBenchmarker and are
compute-plan estimates, as for the iPhone.
"""

from __future__ import annotations

import asyncio
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from device_runners.base import DeviceInfo, Prepared, Runner, sample_latencies
from device_runners.coreml_common import (
    ESTIMATED_OPS_WARNING,
    check_compute_units,
    get_api,
    host_os,
    ops_from_execution_info,
    readable_model,
    spec_inputs,
    spec_precision,
)
from device_runners.ort_common import artifact_info, random_feeds
from latbench.core.errors import DeviceError, UsageError
from latbench.core.text import first_line
from latbench.measuring.measurement import Measurement, SamplingPolicy


def _linux_reason(system: str) -> str:
    return f"Core ML prediction needs macOS (this host is {system})"


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except Exception:
        return None


class MacRunner(Runner):
    #: int8: W8A8 ML Programs (quantized activations, int8 weights) run on Core ML as they are.
    precisions = ("fp32", "fp16", "int8")

    kind = "mac"
    artifact_format = "coreml"
    table_option_fields = ("compute_units",)

    def __init__(
        self,
        *,
        api: Any,
        compute_units: str = "ALL",
        seed: int = 0,
        profile_runs: int = 20,
    ) -> None:
        super().__init__()
        self.api = api
        self.device_id = "mac"
        self.compute_units = check_compute_units(compute_units)
        self.seed = seed
        self.profile_runs = profile_runs

    @classmethod
    def discover(cls, *, coreml_api: Any = None, host_os_name: str | None = None, **_: Any) -> list[DeviceInfo]:
        system = host_os(host_os_name)
        if system != "Darwin":
            return [DeviceInfo("mac", "mac", False, _linux_reason(system), {})]
        try:
            api = get_api(coreml_api)
        except Exception as e:
            return [DeviceInfo("mac", "mac", False, f"coremltools unusable: {first_line(e)}", {})]
        return [DeviceInfo("mac", "mac", True, None, _provenance(api))]

    @classmethod
    def open(
        cls, device_id: str = "mac", *, coreml_api: Any = None, host_os_name: str | None = None, **options: Any
    ) -> MacRunner:
        if device_id != "mac":
            raise UsageError(f"unknown Mac device '{device_id}' (this Mac is 'mac')")
        system = host_os(host_os_name)
        if system != "Darwin":
            raise DeviceError(f"mac unavailable: {_linux_reason(system)}")
        try:
            api = get_api(coreml_api)
        except Exception as e:
            raise DeviceError(f"mac unavailable: coremltools unusable: {first_line(e)}") from e
        return cls(api=api, **options)

    def describe(self) -> dict[str, Any]:
        return {
            **_provenance(self.api),
            "compute_units": self.compute_units,
            "threads": None,
            "core_mask": None,
            "governor": None,
            "thermal_state": None,
        }

    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared:
        readable_model(self.api, artifact, self.compute_units)  # an unreadable file is the user's to fix
        t0 = time.perf_counter_ns()
        try:
            model = self.api.MLModel(str(artifact), compute_units=getattr(self.api.ComputeUnit, self.compute_units))
        except Exception as e:
            raise DeviceError(f"Core ML could not load {artifact.name}: {first_line(e)}") from e
        session_ms = (time.perf_counter_ns() - t0) / 1e6
        specs = spec_inputs(model)
        feeds = random_feeds(specs, self.seed)
        t0 = time.perf_counter_ns()
        self._predict(model, feeds)
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        return Prepared(label, content_hash, artifact, (model, feeds), artifact_info(specs, spec_precision(model)),
                        session_ms, first_ms)

    def renew(self, prepared: Prepared) -> Prepared:
        fresh = self._prepare(prepared.artifact, prepared.content_hash, prepared.label)
        self._prepared[prepared.content_hash] = fresh
        return fresh

    @staticmethod
    def _predict(model: Any, feeds: dict) -> None:
        try:
            model.predict(feeds)
        except Exception as e:
            raise DeviceError(f"Core ML prediction failed: {first_line(e)}") from e

    def measure(self, prepared: Prepared, policy: SamplingPolicy | None = None, *, profile: bool = False) -> Measurement:
        model, feeds = prepared.handle
        samples, info, warnings = sample_latencies(lambda: self._predict(model, feeds), policy or SamplingPolicy())
        per_op = []
        if profile:
            bench = self.api.MLModelBenchmarker(model=model, device=None)
            loop = asyncio.new_event_loop()
            try:
                infos = loop.run_until_complete(
                    bench.benchmark_operation_execution(inputs=feeds, iterations=self.profile_runs)
                )
            except Exception as e:
                raise DeviceError(f"Core ML per-op profile failed: {first_line(e)}") from e
            finally:
                loop.close()
            per_op = ops_from_execution_info(infos)
            warnings.append(ESTIMATED_OPS_WARNING)
        return self.result(prepared, samples, info, per_op, warnings)


def _provenance(api: Any) -> dict[str, Any]:
    return {
        "device_kind": "mac",
        "device_model": _sysctl("hw.model"),
        "soc": _sysctl("machdep.cpu.brand_string"),
        "os": f"macOS {platform.mac_ver()[0]}" if platform.mac_ver()[0] else None,
        "os_build": _sysctl("kern.osversion"),
        "runtime": "coreml",
        "runtime_version": f"coremltools {getattr(api, '__version__', 'unknown')}",
    }


RUNNER = MacRunner
