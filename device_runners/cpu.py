"""The emulated CPU backend (device id `cpu`): onnxruntime's CPU execution provider on this host.

Settings fixed for repeatability: `threads` intra-op threads (default 1), one inter-op thread,
sequential execution, optional pinning to cores via os.sched_setaffinity (Linux pins the
calling thread, which is where a one-thread session computes). Session creation and the first
inference are timed once at prepare time and reported apart from the steady-state samples.
Per-op profiling runs in a separate session so profiler overhead never reaches the samples.

Clock: with one thread (the default) samples are the measuring thread's CPU time
(`clock="auto"` -> "thread_cpu"): on a shared, busy host the thread may wait for a core mid-run,
which wall time would count and CPU time does not (cache or frequency effects remain). With more
threads, or `clock="wall"`, samples are wall time (perf_counter_ns). Every measurement records
the clock, and the share of wall time the thread was on a CPU, warning below 90 %.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from device_runners.base import (
    DeviceInfo,
    Prepared,
    Runner,
    check_threads_fit,
    mask_hex,
    parse_core_mask,
    sample_latencies,
)
from device_runners.ort_common import artifact_info, parse_ort_profile, random_feeds, session_inputs
from latbench.core.errors import DeviceError, UsageError
from latbench.core.text import first_line
from latbench.export.inspect import onnx_inputs, onnx_precision
from latbench.measuring.measurement import Measurement, SamplingPolicy


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def host_cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or None


def host_governors(cores: Iterable[int]) -> dict[str, str] | None:
    found = {}
    for c in cores:
        g = _read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")
        if g:
            found[f"cpu{c}"] = g
    return found or None


def host_max_temp_c() -> float | None:
    temps = []
    base = Path("/sys/class/thermal")
    for zone in sorted(base.glob("thermal_zone*")) if base.exists() else []:
        raw = _read(str(zone / "temp"))
        if raw and raw.lstrip("-").isdigit():
            temps.append(int(raw) / 1000.0)
    return max(temps) if temps else None


def _available_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def resolve_clock(threads: int, clock: str) -> str:
    """The sample clock of an in-process runner: "auto" is the thread's CPU time with one thread
    (all work runs on the calling thread, so its CPU time is the uncontended latency and ignores
    time the shared host gives other processes) and wall time with more (only wall time sees the
    work of the other threads). UsageError for a bad thread count or clock."""
    if threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    if clock not in ("auto", "wall", "thread_cpu"):
        raise UsageError(f"clock must be 'auto', 'wall' or 'thread_cpu', got {clock!r}")
    if clock == "auto":
        return "thread_cpu" if threads == 1 else "wall"
    if clock == "thread_cpu" and threads != 1:
        raise UsageError("clock 'thread_cpu' times the calling thread only; it needs threads=1")
    return clock


def check_cores(core_mask: str | int | Iterable[int] | None) -> list[int] | None:
    """The cores of `core_mask` if this host has them all and can pin (UsageError otherwise)."""
    cores = parse_core_mask(core_mask)
    if cores is not None:
        missing = sorted(set(cores) - set(_available_cores()))
        if missing:
            raise UsageError(f"cores {missing} are not available on this host (available: {_available_cores()})")
        if not hasattr(os, "sched_setaffinity"):
            raise UsageError("core pinning needs os.sched_setaffinity (Linux)")
    return cores


@contextlib.contextmanager
def pinned(cores: list[int] | None) -> Iterator[None]:
    """Run the calling thread (and threads or processes it starts meanwhile) on `cores`."""
    if cores is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def host_state(cores: list[int] | None) -> dict[str, Any]:
    """Pinning, governors and temperature of this host now (what describe() adds to the static part)."""
    used = cores if cores is not None else _available_cores()
    return {
        "core_mask": None if cores is None else mask_hex(cores),
        "cores": used,
        "governor": host_governors(used),
        "thermal_state": None,  # Linux hosts expose temperatures, not a throttling status
        "max_temp_c": host_max_temp_c(),
    }


def host_provenance() -> dict[str, Any]:
    """The host's fixed facts: model, CPU, OS, Python, cores."""
    return {
        "device_model": _read("/sys/devices/virtual/dmi/id/product_name"),
        "soc": host_cpu_model(),
        "os": platform.platform(),
        "os_build": platform.release(),
        "python": sys.version.split()[0],
        "logical_cores": len(_available_cores()),
    }


class CpuRunner(Runner):
    kind = "cpu"
    artifact_format = "onnx"
    precisions = ("fp32", "fp16", "int8")  # int8: QDQ graphs on onnxruntime's CPU kernels (MLAS)

    def __init__(
        self,
        *,
        threads: int = 1,
        core_mask: str | int | Iterable[int] | None = None,
        seed: int = 0,
        profile_runs: int = 20,
        clock: str = "auto",
    ) -> None:
        super().__init__()
        import onnxruntime  # noqa: F401  (fail early, as a DeviceError, if it is missing)

        self.sample_clock = resolve_clock(threads, clock)  # not `clock`: a device's time is Runner.now()
        self.device_id = "cpu"
        self.threads = threads
        self.cores = check_cores(core_mask)
        check_threads_fit(threads, self.cores)
        self.seed = seed
        self.profile_runs = profile_runs

    @classmethod
    def discover(cls, **_: Any) -> list[DeviceInfo]:
        try:
            import onnxruntime

            return [DeviceInfo("cpu", "cpu", True, None, _static_provenance(onnxruntime.__version__))]
        except Exception as e:  # discovery never raises
            return [DeviceInfo("cpu", "cpu", False, f"onnxruntime unusable: {first_line(e)}", {})]

    @classmethod
    def open(cls, device_id: str = "cpu", **options: Any) -> CpuRunner:
        if device_id != "cpu":
            raise UsageError(f"unknown CPU device '{device_id}' (the host CPU is 'cpu')")
        return cls(**options)

    def describe(self) -> dict[str, Any]:
        import onnxruntime

        return {
            **_static_provenance(onnxruntime.__version__),
            "threads": self.threads,
            "inter_op_threads": 1,
            "execution_mode": "sequential",
            "clock": self.sample_clock,
            **host_state(self.cores),
        }

    def _session(self, path: Path, profile_prefix: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        try:
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise DeviceError(f"onnxruntime could not load {path.name}: {first_line(e)}") from e

    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared:
        onnx_inputs(artifact)  # a file that is not a readable ONNX model is the user's to fix
        t0 = time.perf_counter_ns()
        with pinned(self.cores):  # intra-op pool threads inherit the mask when they are created
            session = self._session(artifact)
        session_ms = (time.perf_counter_ns() - t0) / 1e6
        specs = session_inputs(session)
        feeds = random_feeds(specs, self.seed)
        t0 = time.perf_counter_ns()
        self._run(session, feeds)
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        info = artifact_info(specs, onnx_precision(artifact))
        return Prepared(label, content_hash, artifact, (session, feeds), info, session_ms, first_ms)

    def renew(self, prepared: Prepared) -> Prepared:
        fresh = self._prepare(prepared.artifact, prepared.content_hash, prepared.label)
        self._prepared[prepared.content_hash] = fresh  # the old session is released
        return fresh

    @staticmethod
    def _run(session, feeds) -> None:
        try:
            session.run(None, feeds)
        except Exception as e:
            raise DeviceError(f"onnxruntime inference failed: {first_line(e)}") from e

    def measure(self, prepared: Prepared, policy: SamplingPolicy | None = None, *, profile: bool = False) -> Measurement:
        policy = policy or SamplingPolicy()
        session, feeds = prepared.handle
        with pinned(self.cores):
            samples, info, warnings = sample_latencies(
                lambda: self._run(session, feeds),
                policy,
                # One intra-op thread computes on this thread, so its CPU time is the work done.
                cpu_clock=time.thread_time_ns if self.threads == 1 else None,
                sample_clock=time.thread_time_ns if self.sample_clock == "thread_cpu" else None,
            )
            per_op = self._profile(prepared, policy.warmup_runs) if profile else []
        return self.result(prepared, samples, info, per_op, warnings)

    def _profile(self, prepared: Prepared, warmup: int):
        _, feeds = prepared.handle
        warm = max(1, min(warmup, 5))
        with tempfile.TemporaryDirectory(prefix="latbench-prof-") as tmp:
            session = self._session(prepared.artifact, profile_prefix=str(Path(tmp) / "prof"))
            for _ in range(warm + self.profile_runs):
                self._run(session, feeds)
            path = Path(session.end_profiling())
            try:
                return parse_ort_profile(path, skip_runs=warm)
            except ValueError as e:
                raise DeviceError(f"could not parse the onnxruntime profile: {e}") from e

    def close(self) -> None:
        super().close()


def _static_provenance(ort_version: str) -> dict[str, Any]:
    return {
        "device_kind": "cpu",
        **host_provenance(),
        "runtime": "onnxruntime",
        "runtime_version": ort_version,
        "execution_provider": "CPUExecutionProvider",
    }


RUNNER = CpuRunner
