"""Android phones over adb (adbutils), timed by onnxruntime_perf_test or LiteRT's benchmark_model on the phone.

`runtime="onnxruntime"` (default) measures .onnx files with onnxruntime_perf_test;
`runtime="litert"` measures .tflite files with benchmark_model (see "LiteRT" below).

How a Measurement is built with onnxruntime_perf_test (it prints summaries, so this is spelled out):

* One measure() runs the benchmark binary K times (K >= `min_invocations`, default 3) as
  `taskset MASK onnxruntime_perf_test -m times -r WARMUP+R -x THREADS -e cpu -I -s MODEL RESULT`.
  Each invocation is a fresh process: new session, perf_test's own single warm-up run, then
  WARMUP+R timed runs. Several invocations expose process-to-process variance (memory layout,
  frequency decisions) that one long run would hide.
* The RESULT file perf_test writes holds one line per timed run; those per-run latencies, minus
  the first WARMUP of each invocation, are the samples. If the result file is missing or its
  figures disagree with the printed average by more than 25 %, the samples fall back to one per
  invocation (its printed P50, else its average) and a warning says so.
* The caller's SamplingPolicy decides: with a fixed run count N, R = ceil(N / min_invocations);
  adaptively, invocations continue (up to `max_invocations`) until its stop rule fires (the
  median's CI target, its time cap, or max runs).
* Every invocation's printed figures (average, P50/P90/P95/P99, session creation, first
  inference) are kept in `Measurement.extra["invocations"]`; session_ms and first_inference_ms
  are their medians.
* profile=True runs one more, separate invocation with `-p PREFIX`, pulls the Chrome-trace JSON
  perf_test writes as PREFIX_<timestamp>.json and parses it like the CPU runner does.

LiteRT (`runtime="litert"`): benchmark_model prints no per-run times. Its BenchmarkModel::Run
keeps the runs in a Stat and logs `count= first= curr= min= max= avg= std=` (newer builds add
`p5= median= p95=`) once for the warm-up and once for the timed runs. So one invocation is
`taskset MASK benchmark_model --graph=MODEL --num_threads=T --use_xnnpack=true|false
--num_runs=2 --min_secs=0 --max_secs=... --warmup_runs=W --warmup_min_secs=S`: a fresh process,
W warm-up runs (and S seconds), then exactly two timed runs, which that line gives exactly (its
min and max, or `curr=X(all same)`) -- two real single-run samples per invocation, where a longer
invocation would give only its average. Invocations repeat until the caller's SamplingPolicy
stop rule fires on the pooled samples (fixed runs: ceil(N / 2) invocations), so the statistics
are those of every other runner, and process-to-process variance is in the samples. Each
invocation's init / first-inference / warm-up figures are kept in `extra["invocations"]`.
profile=True runs one more invocation with op profiling written as CSV to a device file
(`--op_profiling_output_mode=csv`), pulls it and keeps the regular runs' Run Order rows (each
op's mean; falling back to tables printed on stdout). The binary is pushed once from
`benchmark_model_local` if the device does not have it (its size identifies it in provenance;
it prints no version, so `runtime_version` is what the caller says).

Every device command is an argument list joined with shlex.quote; serials, device paths, masks
and hashes are validated first. Transient adb failures are retried with exponential backoff;
if the device is gone afterwards, DeviceLost is raised. Every adb call has a timeout.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shlex
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from device_runners.base import DeviceInfo, Prepared, Runner, check_threads_fit, mask_hex, parse_core_mask
from device_runners.benchmark_model_output import (
    BenchmarkModelReport,
    benchmark_args,
    op_times,
    parse_benchmark_model_output,
    parse_op_profiling,
    run_samples,
)
from device_runners.litert import xnnpack_flag
from device_runners.ort_common import artifact_info, parse_ort_profile
from device_runners.perf_test_output import PerfTestReport, parse_perf_test_output, parse_result_file
from latbench.core.errors import DeviceError, DeviceLost, UsageError
from latbench.core.text import first_line
from latbench.export.inspect import file_precision, onnx_inputs, tflite_inputs
from latbench.measuring.measurement import THROTTLING_WARNING, Measurement, SamplingPolicy

DEFAULT_PERF_TEST = "/data/local/tmp/onnxruntime_perf_test"
DEFAULT_BENCHMARK_MODEL = "/data/local/tmp/benchmark_model"
RUNTIMES = ("onnxruntime", "litert")
#: Timed runs per benchmark_model invocation: the most whose single times its output gives exactly.
LITERT_RUNS_PER_INVOCATION = 2
DEFAULT_REMOTE_DIR = "/data/local/tmp/latbench"

_SERIAL_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_REMOTE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/\-]{1,255}$")
_HASH_RE = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
# Android PowerManager thermal status values (dumpsys thermalservice "Thermal Status: N").
THERMAL_STATUS = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical", 5: "emergency", 6: "shutdown"}
#: From this thermal status on (light) the phone throttles its clocks: rounds taken then are not
#: comparable with the others, so a measuring session pauses until it reads below it again.
THROTTLING_FROM = 1

T = TypeVar("T")


def shell_join(args: Sequence[str]) -> str:
    """One shell command line from an argument list; every argument quoted."""
    return " ".join(shlex.quote(str(a)) for a in args)


def check_serial(serial: str) -> str:
    if not _SERIAL_RE.match(serial):
        raise UsageError(f"invalid adb serial {serial!r}")
    return serial


def check_remote_path(path: str) -> str:
    if not _REMOTE_PATH_RE.match(path) or ".." in path.split("/"):
        raise UsageError(f"invalid device path {path!r} (absolute, letters, digits, . _ - / only)")
    return path


def _server_address(host: str | None, port: int | None) -> tuple[str, int]:
    host = host or os.environ.get("ANDROID_ADB_SERVER_HOST", "127.0.0.1")
    if port is None:
        try:
            port = int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037"))
        except ValueError:
            port = 5037
    return host, port


def _server_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _adb_missing_reason(host: str, port: int) -> str:
    try:
        import adbutils

        adbutils.adb_path()
    except Exception:
        return "adb not found (install Android platform-tools, or pip install adbutils which bundles it)"
    return f"no adb server on {host}:{port} (start it with `adb start-server`)"


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` dump lines `[key]: [value]` -> dict."""
    props = {}
    for m in re.finditer(r"^\[([^\]]+)\]:\s*\[(.*)\]\s*$", text, re.MULTILINE):
        props[m.group(1)] = m.group(2)
    return props


def parse_thermal_status(text: str) -> int | None:
    m = re.search(r"Thermal Status:\s*(\d+)", text)
    return int(m.group(1)) if m else None


def parse_cpu_list(text: str) -> list[int]:
    """Kernel cpu list format ("0-3,6,8-9") -> [0, 1, 2, 3, 6, 8, 9]; [] if unparsable."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m:
            return []
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        cpus.extend(range(lo, hi + 1))
    return cpus


def props_provenance(props: dict[str, str]) -> dict[str, Any]:
    soc_model = props.get("ro.soc.model")
    soc = (
        " ".join(x for x in (props.get("ro.soc.manufacturer"), soc_model) if x)
        if soc_model
        else props.get("ro.board.platform") or props.get("ro.hardware")
    )
    release = props.get("ro.build.version.release")
    return {
        "device_kind": "android",
        "device_model": props.get("ro.product.model"),
        "manufacturer": props.get("ro.product.manufacturer"),
        "soc": soc or None,
        "os": f"Android {release}" if release else None,
        "sdk": props.get("ro.build.version.sdk"),
        "os_build": props.get("ro.build.fingerprint"),
        "abi": props.get("ro.product.cpu.abi"),
    }


class AndroidRuntime:
    """What differs between the runtimes an Android device is timed with: the benchmark tool and
    where it lives, the artifact format, how an artifact's inputs are read, the provenance of the
    tool and the measuring loop. The runner holds one and never branches on the runtime."""

    name: str
    artifact_format: str
    tool: str  # the binary, as messages name it
    local_option: str  # the option that pushes a host copy of the binary
    recorded: str  # the tool as provenance names it (`runtime`)

    def __init__(self, path: str) -> None:
        self.path = path
        self.size: int | None = None  # the binary's size on the device, once checked

    def inputs(self, artifact: Path) -> Any:
        raise NotImplementedError

    def describe(self, runner: AndroidRunner) -> dict[str, Any]:
        raise NotImplementedError

    def measure(self, runner: AndroidRunner, prepared: Prepared, policy: SamplingPolicy, *,
                profile: bool) -> Measurement:
        raise NotImplementedError


class OrtPerfTest(AndroidRuntime):
    """onnxruntime_perf_test: per-run times of .onnx models, per-op times from its profile."""

    name, artifact_format, tool, local_option = "onnxruntime", "onnx", "onnxruntime_perf_test", "perf_test_local"
    recorded = "onnxruntime_perf_test"

    def inputs(self, artifact: Path) -> Any:
        return onnx_inputs(artifact)

    def describe(self, runner: AndroidRunner) -> dict[str, Any]:
        return {"runtime": self.recorded, "runtime_version": runner.runtime_version,
                "perf_test_path": self.path, "perf_test_size": self.size, "execution_provider": "cpu"}

    def measure(self, runner: AndroidRunner, prepared: Prepared, policy: SamplingPolicy, *,
                profile: bool) -> Measurement:
        return runner._measure(prepared, policy, profile=profile)


class LiteRTBenchmarkModel(AndroidRuntime):
    """LiteRT's benchmark_model: two timed runs per invocation (see "LiteRT" above), .tflite models."""

    name, artifact_format, tool, local_option = "litert", "tflite", "benchmark_model", "benchmark_model_local"
    recorded = "litert benchmark_model"

    def __init__(self, path: str, xnnpack: bool) -> None:
        super().__init__(path)
        self.xnnpack = xnnpack

    def inputs(self, artifact: Path) -> Any:
        return tflite_inputs(artifact)

    def describe(self, runner: AndroidRunner) -> dict[str, Any]:
        return {"runtime": self.recorded, "runtime_version": runner.runtime_version,
                "benchmark_model_path": self.path, "benchmark_model_size": self.size,
                "execution_provider": "XNNPACK" if self.xnnpack else "builtin", "xnnpack": self.xnnpack}

    def measure(self, runner: AndroidRunner, prepared: Prepared, policy: SamplingPolicy, *,
                profile: bool) -> Measurement:
        return runner._measure_litert(prepared, policy, profile=profile)


class AndroidRunner(Runner):
    kind = "android"
    artifact_format = "onnx"
    # int8: QDQ ONNX on onnxruntime's ARM kernels (perf_test), full-integer .tflite on XNNPACK's or
    # the built-in int8 kernels (benchmark_model); both take the fp32 inputs of the fp32 graph.
    precisions = ("fp32", "fp16", "int8")

    @classmethod
    def table_options(cls, provenance: dict[str, Any]) -> dict[str, Any]:
        # The runtime is recorded by its tool's name; XNNPACK is a LiteRT setting only.
        options = super().table_options(provenance)
        runtime = {t.recorded: t.name for t in (OrtPerfTest, LiteRTBenchmarkModel)}.get(provenance.get("runtime"))
        if runtime is not None:
            options["runtime"] = runtime
        if runtime == "litert" and provenance.get("xnnpack") is not None:
            options["xnnpack"] = provenance["xnnpack"]
        return options

    def __init__(
        self,
        serial: str,
        *,
        adb_host: str | None = None,
        adb_port: int | None = None,
        perf_test_path: str = DEFAULT_PERF_TEST,
        perf_test_local: str | Path | None = None,
        remote_dir: str = DEFAULT_REMOTE_DIR,
        core_mask: str | None = "auto",
        threads: int = 1,
        runs_per_invocation: int = 50,
        min_invocations: int = 3,
        max_invocations: int = 8,
        profile_runs: int = 20,
        command_timeout: float = 600.0,
        quick_timeout: float = 20.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        runtime_version: str | None = None,
        runtime: str = "onnxruntime",
        benchmark_model_path: str = DEFAULT_BENCHMARK_MODEL,
        benchmark_model_local: str | Path | None = None,
        xnnpack: bool | str | None = None,
    ) -> None:
        super().__init__()
        import adbutils

        self.serial = check_serial(serial)
        self.device_id = f"android:{serial}"
        if runtime not in RUNTIMES:
            raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime != "litert" and (xnnpack is not None or benchmark_model_local is not None
                                    or benchmark_model_path != DEFAULT_BENCHMARK_MODEL):
            raise UsageError("XNNPACK and benchmark_model settings apply to android devices with --runtime litert")
        self.runtime = runtime
        self.xnnpack = xnnpack_flag(True if xnnpack is None else xnnpack)
        self.perf_test_path = check_remote_path(perf_test_path)
        self.benchmark_model_path = check_remote_path(benchmark_model_path)
        self.tool: AndroidRuntime = (LiteRTBenchmarkModel(self.benchmark_model_path, self.xnnpack)
                                     if runtime == "litert" else OrtPerfTest(self.perf_test_path))
        self.artifact_format = self.tool.artifact_format
        self.remote_dir = check_remote_path(remote_dir.rstrip("/"))
        if threads < 0:
            raise UsageError(f"threads must be >= 0, got {threads}")
        if core_mask not in (None, "", "none", "auto"):  # a mask given: checked before connecting
            check_threads_fit(threads, parse_core_mask(core_mask))
        if min(runs_per_invocation, min_invocations, max_invocations, profile_runs) < 1:
            raise UsageError("run and invocation counts must be >= 1")
        self.threads = threads
        self.runs_per_invocation = runs_per_invocation
        self.min_invocations = min_invocations
        self.max_invocations = max(max_invocations, min_invocations)
        self.profile_runs = profile_runs
        self.command_timeout = command_timeout
        self.quick_timeout = quick_timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.runtime_version = runtime_version
        self.host, self.port = _server_address(adb_host, adb_port)
        if not _server_reachable(self.host, self.port):
            raise DeviceError(f"android:{serial} unavailable: {_adb_missing_reason(self.host, self.port)}")
        self._adb_errors: tuple[type[BaseException], ...] = (adbutils.AdbError, OSError, EOFError)
        self._timeout_errors: tuple[type[BaseException], ...] = (adbutils.AdbTimeout, TimeoutError)
        # socket_timeout bounds every adb call, sync transfers included (inactivity timeout).
        self.client = adbutils.AdbClient(host=self.host, port=self.port, socket_timeout=quick_timeout)
        self._device = self.client.device(serial)
        state = self._state()
        if state != "device":
            raise DeviceError(f"android:{serial} unavailable: {_state_reason(state)}")
        self._props = self._read_props()
        local = benchmark_model_local if runtime == "litert" else perf_test_local
        self.tool.size = self._ensure_binary(self.tool.path, local, self.tool.tool, self.tool.local_option)
        self._shell(["mkdir", "-p", self.remote_dir], check=True)
        self.cores, self.core_mask = self._resolve_cores(core_mask)

    # -- discovery / opening ------------------------------------------------------------------
    @classmethod
    def discover(
        cls, *, adb_host: str | None = None, adb_port: int | None = None, timeout: float = 5.0, **_: Any
    ) -> list[DeviceInfo]:
        host, port = _server_address(adb_host, adb_port)
        if not _server_reachable(host, port):
            return [DeviceInfo("android", "android", False, _adb_missing_reason(host, port), {})]
        try:
            import adbutils

            client = adbutils.AdbClient(host=host, port=port, socket_timeout=timeout)
            entries = client.list()
        except Exception as e:
            return [DeviceInfo("android", "android", False, f"adb server on {host}:{port} failed: {first_line(e)}", {})]
        if not entries:
            return [DeviceInfo("android", "android", False, "no Android device connected (adb lists none)", {})]
        infos = []
        for entry in entries:
            dev_id = f"android:{entry.serial}"
            if entry.state != "device":
                infos.append(DeviceInfo(dev_id, "android", False, _state_reason(entry.state), {"serial": entry.serial}))
                continue
            try:
                out = client.device(entry.serial).shell2("getprop", timeout=timeout).output
                prov = {**props_provenance(parse_getprop(out)), "serial": entry.serial}
                infos.append(DeviceInfo(dev_id, "android", True, None, prov))
            except Exception as e:
                reason = f"getprop failed: {first_line(e)}"
                infos.append(DeviceInfo(dev_id, "android", False, reason, {"serial": entry.serial}))
        return infos

    @classmethod
    def open(cls, device_id: str = "android", **options: Any) -> AndroidRunner:
        serial = device_id.split(":", 1)[1] if device_id.startswith("android:") else None
        if not serial:
            found = cls.discover(**{k: v for k, v in options.items() if k in ("adb_host", "adb_port")})
            usable = [d for d in found if d.available]
            if not usable:
                raise DeviceError(f"no usable Android device: {found[0].reason if found else 'none found'}")
            if len(usable) > 1:
                ids = ", ".join(d.id for d in usable)
                raise UsageError(f"several Android devices connected ({ids}); pick one with android:SERIAL")
            serial = usable[0].id.split(":", 1)[1]
        return cls(check_serial(serial), **options)

    # -- adb plumbing -------------------------------------------------------------------------
    def _state(self) -> str | None:
        try:
            for entry in self.client.list():
                if entry.serial == self.serial:
                    return entry.state
        except Exception:
            return None
        return "missing"

    def _gone(self) -> bool:
        # A device that dropped may show as missing or offline for a moment; ask twice.
        for attempt in range(2):
            if self._state() == "device":
                return False
            if attempt == 0:
                time.sleep(self.backoff_s)
        return True

    def _call(self, what: str, fn: Callable[[], T], *, timeout: float, retry: bool = True) -> T:
        attempts = self.retries + 1 if retry else 1
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                return fn()
            except self._timeout_errors as e:
                if self._gone():
                    raise DeviceLost(f"android:{self.serial} disconnected during {what}") from e
                raise DeviceError(f"{what} on android:{self.serial} timed out after {timeout:g}s") from e
            except self._adb_errors as e:
                last = e
                if self._gone():
                    raise DeviceLost(f"android:{self.serial} disconnected during {what}") from e
                if attempt + 1 < attempts:
                    time.sleep(self.backoff_s * 2**attempt)
        raise DeviceError(f"{what} on android:{self.serial} failed after {attempts} attempts: {first_line(last or '')}")

    def _shell(
        self, args: Sequence[str], *, timeout: float | None = None, check: bool = False, retry: bool = True
    ) -> tuple[int, str]:
        cmd = shell_join(args)
        timeout = timeout or self.quick_timeout
        r = self._call(f"`{args[0]}`", lambda: self._device.shell2(cmd, timeout=timeout, v2=True), timeout=timeout, retry=retry)
        if check and r.returncode != 0:
            raise DeviceError(f"`{cmd}` failed on android:{self.serial} (exit {r.returncode}): {first_line(r.output)}")
        return r.returncode, r.output

    def _cat(self, path: str) -> str | None:
        rc, out = self._shell(["cat", check_remote_path(path)])
        return out.strip() if rc == 0 else None

    def _stat(self, path: str):
        return self._call("stat", lambda: self._device.sync.stat(path), timeout=self.quick_timeout)

    # -- device facts -------------------------------------------------------------------------
    def _read_props(self) -> dict[str, str]:
        _, out = self._shell(["getprop"])
        return parse_getprop(out)

    def _ensure_binary(self, remote: str, local: str | Path | None, name: str, option: str) -> int:
        """The benchmark binary at `remote`, pushed from `local` if the device lacks it; returns its
        size, which identifies it in provenance (neither tool prints a version)."""
        st = self._stat(remote)
        if st.mode != 0 and st.size > 0:
            return st.size
        if local is None:
            raise DeviceError(f"{name} not found at {remote} on android:{self.serial}; adb push it there or pass {option}")
        if not Path(local).is_file():
            raise UsageError(f"{option}: no such file {local}")
        self._call(
            f"push {name}",
            lambda: self._device.sync.push(Path(local), remote, mode=0o755, check=True),
            timeout=self.quick_timeout,
        )
        return Path(local).stat().st_size

    def _resolve_cores(self, core_mask: str | None) -> tuple[list[int] | None, str | None]:
        if core_mask in (None, "", "none"):
            return None, None
        if core_mask == "auto":
            # The big cores are the ones with the highest maximum frequency.
            cpus = parse_cpu_list(self._cat("/sys/devices/system/cpu/possible") or "")
            freqs = {}
            for c in cpus:
                raw = self._cat(f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq")
                if raw and raw.isdigit():
                    freqs[c] = int(raw)
            if not freqs:
                return None, None
            top = max(freqs.values())
            cores = sorted(c for c, f in freqs.items() if f == top)
            return cores, mask_hex(cores)
        cores = parse_core_mask(core_mask)
        return cores, mask_hex(cores)

    def thermal_status(self) -> int | None:
        rc, out = self._shell(["dumpsys", "thermalservice"])
        return parse_thermal_status(out) if rc == 0 else None

    def throttling(self) -> bool | None:
        status = self.thermal_status()
        return None if status is None else status >= THROTTLING_FROM

    def governors(self) -> dict[str, str] | None:
        found = {}
        for c in self.cores if self.cores is not None else [0]:
            g = self._cat(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")
            if g:
                found[f"cpu{c}"] = g
        return found or None

    def describe(self) -> dict[str, Any]:
        status = self.thermal_status()
        tool = self.tool.describe(self)
        return {
            **props_provenance(self._props),
            "serial": self.serial,
            **tool,
            "threads": self.threads,
            "core_mask": self.core_mask,
            "cores": self.cores,
            "governor": self.governors(),
            "thermal_status": status,
            "thermal_state": THERMAL_STATUS.get(status) if status is not None else None,
        }

    # -- artifacts ----------------------------------------------------------------------------
    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared:
        if not _HASH_RE.match(content_hash):
            raise UsageError(f"content hash must be letters/digits/_/-, got {content_hash!r}")
        # The precision is the graph's (latbench's int8 graphs take fp32 inputs).
        info = artifact_info(self.tool.inputs(artifact), file_precision(artifact))
        remote = f"{self.remote_dir}/{content_hash}{artifact.suffix.lower()}"
        size = artifact.stat().st_size
        st = self._stat(remote)
        if not (st.mode != 0 and st.size == size):  # absent, or a partial push from a lost connection
            self._call(
                "push", lambda: self._device.sync.push(artifact, remote, mode=0o644, check=True), timeout=self.quick_timeout
            )
        return Prepared(label, content_hash, artifact, remote, info)

    def _perf_args(self, model: str, repeats: int, extra: Sequence[str]) -> list[str]:
        args = ["taskset", self.core_mask] if self.core_mask else []
        args += [self.perf_test_path, "-m", "times", "-r", str(repeats), "-x", str(self.threads), "-e", "cpu", "-I"]
        return [*args, *extra, model]

    def _run_perf(self, args: list[str]) -> PerfTestReport:
        rc, out = self._shell(args, timeout=self.command_timeout, retry=False)
        if rc != 0:
            raise DeviceError(
                f"onnxruntime_perf_test exited with status {rc} on android:{self.serial}: {first_line(out or 'no output')}"
            )
        try:
            return parse_perf_test_output(out)
        except ValueError as e:
            raise DeviceError(f"unrecognised onnxruntime_perf_test output on android:{self.serial}: {e}") from e

    def measure(self, prepared: Prepared, policy: SamplingPolicy | None = None, *, profile: bool = False) -> Measurement:
        try:
            return self.tool.measure(self, prepared, policy or SamplingPolicy(), profile=profile)
        except DeviceLost as e:
            raise DeviceLost(str(e), unmeasured=[prepared.label]) from e

    def _measure(self, prepared: Prepared, policy: SamplingPolicy, *, profile: bool) -> Measurement:
        """perf_test invocations until the policy stops them (its stop rule applied after every
        invocation, once `min_invocations` are in; fixed runs are spread over min_invocations)."""
        warmup, runs = policy.warmup_runs, policy.runs
        remote_model: str = prepared.handle
        per_inv = math.ceil(runs / self.min_invocations) if runs is not None else self.runs_per_invocation
        n_inv = self.min_invocations if runs is not None else self.max_invocations
        before = self.describe()
        warnings: list[str] = []
        reports: list[PerfTestReport] = []
        raw: list[float] = []
        raw_ok = True
        token = secrets.token_hex(4)
        start = time.perf_counter()
        stopped_by = "max_invocations"
        for i in range(n_inv):
            result_path = f"{self.remote_dir}/res_{token}_{i}.csv"
            self._shell(["rm", "-f", result_path])  # perf_test appends to an existing result file
            args = self._perf_args(remote_model, warmup + per_inv, ["-s"])
            report = self._run_perf([*args, result_path])
            reports.append(report)
            runs_i = self._read_result(result_path)
            self._shell(["rm", "-f", result_path])
            kept = runs_i[warmup:]
            if raw_ok and kept and _consistent(runs_i, report):
                raw.extend(kept)
            else:
                raw_ok = False
            samples = raw if raw_ok else [r.typical_ms for r in reports]
            if runs is None and i + 1 >= self.min_invocations:
                reason = policy.stop_reason(samples, time.perf_counter() - start)
                if reason:
                    stopped_by = reason
                    break
        if runs is not None:
            stopped_by = "runs"
        if raw_ok:
            samples, source = (raw[:runs] if runs is not None else raw), "result_file"
        else:
            samples, source = [r.typical_ms for r in reports], "per_invocation_p50"
            warnings.append(
                "per-run times unavailable from the perf_test result file; one sample per invocation "
                "(its P50, else its average), warm-up runs included"
            )
        ci_warning = policy.ci_warning(samples, stopped_by, unit=f"samples in {len(reports)} invocations")
        if ci_warning:
            warnings.append(ci_warning)
        per_op = self._profile(remote_model) if profile else []
        sampling = {"warmup_runs": warmup, "runs_per_invocation": per_inv, "invocations": len(reports),
                    "sample_source": source, "stopped_by": stopped_by,
                    "timed_wall_s": round(time.perf_counter() - start, 6)}
        return self._measurement(
            prepared, before, samples, sampling, warnings, per_op,
            session_ms=_median([r.session_creation_ms for r in reports]),
            first_ms=_median([r.first_inference_ms for r in reports]),
            extra={
                "invocations": [r.to_dict() for r in reports],
                "command": shell_join(self._perf_args(remote_model, warmup + per_inv, ["-s"]) + ["RESULT_FILE"]),
            },
        )

    def _measurement(self, prepared: Prepared, before: dict[str, Any], samples: list[float],
                     sampling: dict[str, Any], warnings: list[str], per_op: list, *, session_ms: float | None,
                     first_ms: float | None, extra: dict[str, Any]) -> Measurement:
        """The Measurement of an on-device run: the thermal status after it (a warning if the phone
        throttled at either end) and the provenance as it was when the run started."""
        after_status = self.thermal_status()
        statuses = [s for s in (before["thermal_status"], after_status) if s is not None]
        if statuses and max(statuses) >= 1:
            worst = max(statuses)
            warnings.append(f"{THROTTLING_WARNING}: thermal status {THERMAL_STATUS.get(worst, worst)} during the run")
        provenance = self.provenance_for(prepared, sampling, device=before, thermal_status_after=after_status,
                                         remote_model=prepared.handle)
        return Measurement(label=prepared.label, samples_ms=samples, provenance=provenance, per_op=per_op,
                           session_ms=session_ms, first_inference_ms=first_ms, warnings=warnings, extra=extra)

    def _read_result(self, path: str) -> list[float]:
        if self._stat(path).mode == 0:  # not written (older perf_test, or it failed to open it)
            return []
        text = self._call("pull result", lambda: self._device.sync.read_text(path), timeout=self.quick_timeout)
        return parse_result_file(text)

    def _profile(self, remote_model: str):
        prefix_name = f"prof_{secrets.token_hex(6)}"
        args = self._perf_args(remote_model, self.profile_runs, ["-p", f"{self.remote_dir}/{prefix_name}"])
        self._run_perf(args)
        entries = self._call("list", lambda: self._device.sync.list(self.remote_dir), timeout=self.quick_timeout)
        names = sorted(e.path for e in entries if e.path.startswith(prefix_name + "_") and e.path.endswith(".json"))
        if not names:
            raise DeviceError(f"onnxruntime_perf_test wrote no profile {prefix_name}_*.json in {self.remote_dir}")
        if not re.fullmatch(r"[A-Za-z0-9._\-]+", names[-1]):
            raise DeviceError(f"unexpected profile file name {names[-1]!r} on android:{self.serial}")
        remote = f"{self.remote_dir}/{names[-1]}"
        data = self._call("pull profile", lambda: self._device.sync.read_bytes(remote), timeout=self.quick_timeout)
        self._shell(["rm", "-f", remote])
        try:
            return parse_ort_profile(data, skip_runs=1)  # perf_test's own warm-up run comes first
        except ValueError as e:
            raise DeviceError(f"could not parse the profile pulled from android:{self.serial}: {e}") from e

    # -- LiteRT benchmark_model -----------------------------------------------------------------
    def _bm_args(self, model: str, *, runs: int, warmup_runs: int, warmup_s: float,
                 profile_file: str | None = None) -> list[str]:
        args = ["taskset", self.core_mask] if self.core_mask else []
        return args + benchmark_args(
            self.benchmark_model_path, model, threads=self.threads or -1, xnnpack=self.xnnpack, runs=runs,
            warmup_runs=warmup_runs, warmup_s=warmup_s, max_s=self.command_timeout, profile_file=profile_file)

    def _run_bm(self, args: list[str]) -> BenchmarkModelReport:
        rc, out = self._shell(args, timeout=self.command_timeout, retry=False)
        if rc != 0:
            raise DeviceError(f"benchmark_model exited with status {rc} on android:{self.serial}: {_failure_line(out)}")
        try:
            return parse_benchmark_model_output(out)
        except ValueError as e:
            raise DeviceError(f"unrecognised benchmark_model output on android:{self.serial}: {e}") from e

    def _measure_litert(self, prepared: Prepared, policy: SamplingPolicy, *, profile: bool) -> Measurement:
        """Two-run benchmark_model invocations until the policy's stop rule fires (module docstring)."""
        per_inv = LITERT_RUNS_PER_INVOCATION
        limit = math.ceil((policy.runs or policy.max_runs) / per_inv)
        args = self._bm_args(prepared.handle, runs=per_inv, warmup_runs=policy.warmup_runs,
                             warmup_s=policy.warmup_time_s)
        before = self.describe()
        reports: list[BenchmarkModelReport] = []
        samples: list[float] = []
        start = time.perf_counter()
        stopped_by = "max_runs"
        for _ in range(limit):
            report = self._run_bm(args)
            try:
                samples.extend(run_samples(report, per_inv))
            except ValueError as e:
                raise DeviceError(f"unrecognised benchmark_model output on android:{self.serial}: {e}") from e
            reports.append(report)
            reason = policy.stop_reason(samples, time.perf_counter() - start)
            if reason:
                stopped_by = reason
                break
        samples = samples[: policy.runs] if policy.runs is not None else samples
        warnings: list[str] = []
        ci_warning = policy.ci_warning(samples, stopped_by, unit=f"samples in {len(reports)} invocations")
        if ci_warning:
            warnings.append(ci_warning)
        per_op = self._profile_litert(prepared.handle, policy) if profile else []
        sampling = {"warmup_runs": policy.warmup_runs, "runs_per_invocation": per_inv, "invocations": len(reports),
                    "sample_source": "benchmark_model_single_runs", "stopped_by": stopped_by,
                    "timed_wall_s": round(time.perf_counter() - start, 6)}
        return self._measurement(
            prepared, before, samples, sampling, warnings, per_op,
            session_ms=_median([r.init_ms for r in reports]), first_ms=_median([r.first_ms for r in reports]),
            extra={"invocations": [r.to_dict() for r in reports], "command": shell_join(args)},
        )

    def _profile_litert(self, remote_model: str, policy: SamplingPolicy) -> list:
        csv_remote = f"{self.remote_dir}/ops_{secrets.token_hex(6)}.csv"
        args = self._bm_args(remote_model, runs=self.profile_runs, warmup_runs=max(1, min(policy.warmup_runs, 5)),
                             warmup_s=0.0, profile_file=csv_remote)
        report = self._run_bm(args)
        rows = report.op_rows
        if self._stat(csv_remote).mode != 0:
            text = self._call("pull op profile", lambda: self._device.sync.read_text(csv_remote),
                              timeout=self.quick_timeout)
            self._shell(["rm", "-f", csv_remote])
            try:
                rows = parse_op_profiling(text)
            except ValueError as e:
                raise DeviceError(f"could not parse the op profile pulled from android:{self.serial}: {e}") from e
        try:
            return op_times(rows)
        except ValueError as e:
            raise DeviceError(f"benchmark_model wrote no op profile on android:{self.serial}: {e}") from e


def _consistent(runs: list[float], report: PerfTestReport) -> bool:
    """Do the result file's runs agree with the printed average (guards against format drift)?"""
    if not runs or report.average_ms is None:
        return bool(runs)
    mean = sum(runs) / len(runs)
    return abs(mean - report.average_ms) <= 0.25 * report.average_ms


def _failure_line(out: str) -> str:
    """What a failed benchmark_model said: its last line other than the closing "Benchmarking failed."."""
    lines = [ln.strip().removeprefix("INFO: ").removeprefix("ERROR: ") for ln in (out or "").splitlines()]
    lines = [ln for ln in lines if ln and ln != "Benchmarking failed."]
    return lines[-1][:200] if lines else "no output"


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _state_reason(state: str | None) -> str:
    if state == "unauthorized":
        return "device unauthorized: accept the USB debugging prompt on the phone"
    if state == "missing":
        return "device not connected"
    return f"device state is '{state}' (expected 'device')"


RUNNER = AndroidRunner
