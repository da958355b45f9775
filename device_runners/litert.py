"""The emulated LiteRT CPU backend (device id `litert`): .tflite models in ai-edge-litert on this host.

The kernels are XNNPACK's, the ones LiteRT runs on Android CPUs, so a table built here shows how
a block fares under a runtime with other fusion and layout choices than onnxruntime's.

Runtime: `ai_edge_litert.interpreter.Interpreter(model_path, num_threads=N)`. With the default op
resolver the XNNPACK delegate is applied, with N threads, by `allocate_tensors()`;
`xnnpack="off"` uses `OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES` (the built-in kernels,
benchmark_model's `--use_xnnpack=false`). Inputs are drawn like the ONNX runners' (fixed seed)
and set once; a sample is one `invoke()`. XNNPACK packs weights on the first invoke, which
prepare times apart as the first inference. How the graph was split between XNNPACK and the
built-in kernels is recorded with every measurement; a graph with ops of which XNNPACK took none
gets a warning (its samples are of the built-in kernels). A graph without ops (the `empty`
block) is timed as it is: the interpreter's own overhead.

int8: full-integer graphs (float32 in and out, latbench.export.tflite_quant) run on XNNPACK's
int8 (QS8) kernels where it takes the op, the built-in int8 kernels elsewhere (or everywhere with
xnnpack off); the precision recorded with every measurement is read from the graph.

Sampling, clock and pinning are those of the `cpu` device (device_runners.cpu): with one thread
XNNPACK runs on the calling thread, so samples are that thread's CPU time.

Per-op times: the Python interpreter has no profiler. If a host build of benchmark_model is
configured (`benchmark_model=PATH`, the `--benchmark-model` flag, or $LATBENCH_BENCHMARK_MODEL;
the linux_x86_64 binary linked in the README), profile=True runs it once on the artifact with
op profiling (same threads, XNNPACK setting and cores) and reads its CSV; otherwise per-op rows
are empty and a warning says how to get the binary.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from device_runners.base import DeviceInfo, Prepared, Runner, check_threads_fit, sample_latencies
from device_runners.benchmark_model_output import benchmark_args, op_times, parse_op_profiling
from device_runners.cpu import check_cores, host_provenance, host_state, pinned, resolve_clock
from device_runners.ort_common import artifact_info, random_feeds
from latbench.core.errors import DeviceError, UsageError
from latbench.core.text import first_line
from latbench.export.inspect import tflite_inputs, tflite_precision
from latbench.measuring.measurement import Measurement, OpTime, SamplingPolicy

BENCHMARK_MODEL_ENV = "LATBENCH_BENCHMARK_MODEL"
BENCHMARK_MODEL_URL = ("https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/"
                       "tools/nightly/latest/linux_x86-64_benchmark_model")
INSTALL_HINT = "pip install 'latbench[litert]'"
NO_PER_OP = (f"no per-op times: the LiteRT Python interpreter has no profiler; download benchmark_model "
             f"({BENCHMARK_MODEL_URL}) and pass --benchmark-model PATH or set ${BENCHMARK_MODEL_ENV}")


def xnnpack_flag(value: bool | str) -> bool:
    """True/False, or "on"/"off" as the command line gives it."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise UsageError(f"xnnpack must be on or off, got {value!r}")


def binary_facts(path: Path) -> dict[str, Any]:
    """What identifies a benchmark_model build in provenance (it prints no version): size and digest."""
    data = path.read_bytes()
    return {"benchmark_model": str(path), "benchmark_model_size": len(data),
            "benchmark_model_sha256": hashlib.sha256(data).hexdigest()[:16]}


def litert_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return None


class LiteRTRunner(Runner):
    kind = "litert"
    artifact_format = "tflite"
    # No fp16 tflite (XNNPACK picks fp16 itself); int8: full-integer graphs (latbench.export.tflite_quant)
    # on XNNPACK's QS8 kernels, or the built-in int8 kernels with xnnpack off.
    precisions = ("fp32", "int8")
    table_option_fields = ("threads", "core_mask", "xnnpack")

    def __init__(
        self,
        *,
        threads: int = 1,
        core_mask: str | int | Iterable[int] | None = None,
        seed: int = 0,
        clock: str = "auto",
        xnnpack: bool | str = True,
        benchmark_model_path: str | Path | None = None,
        profile_runs: int = 20,
        profile_timeout: float = 600.0,
    ) -> None:
        super().__init__()
        if litert_version() is None:
            raise DeviceError(f"the litert device needs ai-edge-litert, which is not installed: {INSTALL_HINT}")
        self.sample_clock = resolve_clock(threads, clock)  # not `clock`: a device's time is Runner.now()
        self.device_id = "litert"
        self.threads = threads
        self.cores = check_cores(core_mask)
        check_threads_fit(threads, self.cores)
        self.seed = seed
        self.xnnpack = xnnpack_flag(xnnpack)
        if profile_runs < 1:
            raise UsageError(f"profile_runs must be >= 1, got {profile_runs}")
        self.profile_runs = profile_runs
        self.profile_timeout = profile_timeout
        chosen = benchmark_model_path or os.environ.get(BENCHMARK_MODEL_ENV) or None
        self.benchmark_model = Path(chosen).expanduser() if chosen else None
        if self.benchmark_model is not None:
            if not self.benchmark_model.is_file():
                raise UsageError(f"benchmark_model not found: {self.benchmark_model}")
            if not os.access(self.benchmark_model, os.X_OK):
                raise UsageError(f"benchmark_model is not executable: {self.benchmark_model} (chmod +x it)")
            self._binary_facts = binary_facts(self.benchmark_model)
        else:
            self._binary_facts = {}

    @classmethod
    def discover(cls, **_: Any) -> list[DeviceInfo]:
        version = litert_version()
        if version is None:
            return [DeviceInfo("litert", "litert", False, f"ai-edge-litert is not installed: {INSTALL_HINT}", {})]
        return [DeviceInfo("litert", "litert", True, None, _static_provenance(version))]

    @classmethod
    def open(cls, device_id: str = "litert", **options: Any) -> LiteRTRunner:
        if device_id != "litert":
            raise UsageError(f"unknown LiteRT device '{device_id}' (the host's LiteRT CPU backend is 'litert')")
        return cls(**options)

    def describe(self) -> dict[str, Any]:
        return {
            **_static_provenance(litert_version()),
            "execution_provider": "XNNPACK" if self.xnnpack else "builtin",
            "xnnpack": self.xnnpack,
            "threads": self.threads,
            "clock": self.sample_clock,
            **host_state(self.cores),
            **self._binary_facts,
        }

    def _interpreter(self, path: Path) -> Any:
        from ai_edge_litert import interpreter as litert

        from latbench.export.tflite import fd_silenced

        resolver = (litert.OpResolverType.AUTO if self.xnnpack
                    else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." goes to fd 2.
        with fd_silenced(), pinned(self.cores):
            try:
                interp = litert.Interpreter(model_path=str(path), num_threads=self.threads,
                                            experimental_op_resolver_type=resolver)
                interp.allocate_tensors()
            except Exception as e:
                raise DeviceError(f"LiteRT could not load {path.name}: {first_line(e)}") from e
        return interp

    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared:
        from latbench.export.tflite import primary_subgraph_ops, xnnpack_delegation

        specs = tflite_inputs(artifact)  # a file that is not a TFLite model is the user's to fix
        t0 = time.perf_counter_ns()
        interp = self._interpreter(artifact)
        session_ms = (time.perf_counter_ns() - t0) / 1e6
        delegation = xnnpack_delegation(interp, primary_subgraph_ops(artifact))
        feeds = random_feeds(specs, self.seed)
        for detail, spec in zip(interp.get_input_details(), specs):
            interp.set_tensor(detail["index"], feeds[spec.name])
        invoke = interp.invoke
        t0 = time.perf_counter_ns()
        self._run(invoke)
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        # The precision is the graph's: an int8 graph takes the fp32 inputs of the fp32 one.
        info = {**artifact_info(specs, tflite_precision(artifact)), "delegation": delegation if self.xnnpack else None}
        return Prepared(label, content_hash, artifact, invoke, info, session_ms, first_ms)

    def renew(self, prepared: Prepared) -> Prepared:
        fresh = self._prepare(prepared.artifact, prepared.content_hash, prepared.label)
        self._prepared[prepared.content_hash] = fresh  # the old interpreter is released
        return fresh

    @staticmethod
    def _run(invoke: Any) -> None:
        try:
            invoke()
        except Exception as e:
            raise DeviceError(f"LiteRT inference failed: {first_line(e)}") from e

    def measure(self, prepared: Prepared, policy: SamplingPolicy | None = None, *, profile: bool = False) -> Measurement:
        policy = policy or SamplingPolicy()
        invoke = prepared.handle
        with pinned(self.cores):
            samples, info, warnings = sample_latencies(
                lambda: self._run(invoke),
                policy,
                # With one thread XNNPACK computes on this thread (no thread pool).
                cpu_clock=time.thread_time_ns if self.threads == 1 else None,
                sample_clock=time.thread_time_ns if self.sample_clock == "thread_cpu" else None,
            )
            delegation = prepared.info.get("delegation") or {}
            if delegation.get("nodes") and not delegation.get("partitions"):
                warnings.append(f"XNNPACK took no node of {prepared.artifact.name}: timed on the built-in kernels")
            per_op: list[OpTime] = []
            if profile:
                if self.benchmark_model is None:
                    warnings.append(NO_PER_OP)
                else:
                    per_op = self._profile(prepared, policy)
        return self.result(prepared, samples, info, per_op, warnings)

    def _profile(self, prepared: Prepared, policy: SamplingPolicy) -> list[OpTime]:
        assert self.benchmark_model is not None
        with tempfile.TemporaryDirectory(prefix="latbench-bm-") as tmp:
            csv = Path(tmp) / "ops.csv"
            args = benchmark_args(str(self.benchmark_model), str(prepared.artifact), threads=self.threads,
                                  xnnpack=self.xnnpack, runs=self.profile_runs,
                                  warmup_runs=max(1, min(policy.warmup_runs, 5)), warmup_s=0.0,
                                  max_s=self.profile_timeout, profile_file=str(csv))
            try:
                proc = subprocess.run(args, capture_output=True, text=True, errors="replace",
                                      timeout=self.profile_timeout, check=False)
            except subprocess.TimeoutExpired as e:
                raise DeviceError(f"benchmark_model did not finish within {self.profile_timeout:g}s") from e
            except OSError as e:
                raise DeviceError(f"benchmark_model could not run: {first_line(e)}") from e
            if proc.returncode != 0:
                said = first_line(proc.stderr or proc.stdout or "no output")
                raise DeviceError(f"benchmark_model exited with status {proc.returncode}: {said}")
            try:
                text = csv.read_text(errors="replace") if csv.is_file() else proc.stdout
                return op_times(parse_op_profiling(text))
            except ValueError as e:
                raise DeviceError(f"could not read benchmark_model's op profile: {e}") from e


def _static_provenance(version: str | None) -> dict[str, Any]:
    return {
        "device_kind": "litert",
        **host_provenance(),
        "runtime": "ai-edge-litert",
        "runtime_version": version,
    }


RUNNER = LiteRTRunner
