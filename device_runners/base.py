"""The one interface every device kind implements, plus the sampling loop shared by local runners.

A runner is opened for one device, prepares artifacts once per content hash (push, load, compile)
and measures prepared artifacts into `latbench.measuring.measurement.Measurement`s. Discovery never raises
for a missing tool or OS: it returns unavailable `DeviceInfo`s that say why.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from latbench.core.errors import UsageError
from latbench.core.formats import FORMAT_SUFFIXES
from latbench.core.hashing import tree_sha256
from latbench.measuring.measurement import Measurement, SamplingPolicy, latbench_version


@dataclass(frozen=True)
class DeviceInfo:
    """One discovered device (or one unavailable device kind, with the reason)."""

    id: str
    kind: str
    available: bool
    reason: str | None
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "available": self.available,
            "reason": self.reason,
            "provenance": dict(self.provenance),
        }


@dataclass(frozen=True)
class Prepared:
    """An artifact made ready on a device (session created, file pushed, model loaded)."""

    label: str
    content_hash: str
    artifact: Path
    #: Runner-specific state (a session, a remote path, a loaded model); not part of equality.
    handle: Any = field(default=None, compare=False, repr=False)
    #: Facts about the artifact recorded with every measurement (input shape, dtype, precision).
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    session_ms: float | None = field(default=None, compare=False)
    first_inference_ms: float | None = field(default=None, compare=False)


class Runner(abc.ABC):
    """A measuring device. Subclasses set `kind` and `artifact_format` and implement the hooks."""

    kind: ClassVar[str]  # "cpu", "litert", "android", "iphone", "mac", "aihub"; also the device id prefix
    artifact_format: ClassVar[str]  # a key of latbench.core.formats.FORMAT_SUFFIXES
    #: Artifact precisions the runner measures (latbench.export.common.PRECISIONS); others are refused.
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    #: Options this kind records in a table's device provenance under their own names, read back
    #: when the table is measured again on it (validate, check, upgrade) to time it as it was built.
    table_option_fields: ClassVar[tuple[str, ...]] = ("threads", "core_mask")

    device_id: str

    def __init__(self) -> None:
        self._prepared: dict[str, Prepared] = {}

    # -- discovery / opening ------------------------------------------------------------------
    @classmethod
    def table_options(cls, provenance: dict[str, Any]) -> dict[str, Any]:
        """The options that open this kind as `provenance` (a table's device) describes it; what it
        did not record is left to the defaults."""
        return {k: provenance[k] for k in cls.table_option_fields if provenance.get(k) is not None}

    @classmethod
    @abc.abstractmethod
    def discover(cls, **options: Any) -> list[DeviceInfo]:
        """Devices of this kind; never raises for a missing tool or OS."""

    @classmethod
    def claims(cls, device_id: str) -> bool:
        return device_id == cls.kind or device_id.startswith(cls.kind + ":")

    @classmethod
    @abc.abstractmethod
    def open(cls, device_id: str, **options: Any) -> Runner:
        """Open `device_id`; DeviceError (one line, with the reason) if it is unavailable."""

    @staticmethod
    def devices_running(precision: str) -> str:
        """"the cpu and litert devices": the kinds that measure `precision`, for refusals. Read from
        the registry when asked (it imports this module, so not at import time)."""
        from device_runners import runner_classes

        kinds = [c.kind for c in runner_classes() if precision in c.precisions]
        if not kinds:
            return "no device"
        listed = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"
        return f"the {listed} device{'s' if len(kinds) > 1 else ''}"

    @classmethod
    def check_precision(cls, precision: str | None) -> None:
        """A one-line UsageError when this kind cannot run artifacts of `precision` (None: the default)."""
        if precision is not None and precision not in cls.precisions:
            hint = f"; int8 runs on {cls.devices_running('int8')}" if precision == "int8" else ""
            raise UsageError(f"{cls.kind} devices cannot run {precision} artifacts (they run "
                             f"{', '.join(cls.precisions)}){hint}")

    # -- per-artifact work --------------------------------------------------------------------
    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Provenance of the device as it is now (model, OS, runtime, threads, governor, thermal)."""

    def prepare(self, artifact: Path, content_hash: str | None = None, *, label: str | None = None) -> Prepared:
        """Make `artifact` ready; done once per content hash (default: latbench.core.hashing.tree_sha256)."""
        artifact = Path(artifact)
        suffixes = FORMAT_SUFFIXES.get(self.artifact_format, ())
        if suffixes and artifact.suffix.lower() not in suffixes:
            raise UsageError(
                f"{self.kind} runner measures {self.artifact_format} artifacts "
                f"({', '.join(suffixes)}), got {artifact.name}"
            )
        if not artifact.exists():
            raise UsageError(f"artifact not found: {artifact}")
        if "int8" not in self.precisions:
            from latbench.export.inspect import file_precision

            if file_precision(artifact) == "int8":  # a quantized file given directly (profile FILE.onnx)
                raise UsageError(f"{self.kind} devices cannot run int8 artifacts ({artifact.name} is quantized); "
                                 f"int8 runs on {self.devices_running('int8')}")
        content_hash = content_hash or tree_sha256(artifact)
        label = label or artifact.stem
        cached = self._prepared.get(content_hash)
        if cached is not None:
            # Same bytes: reuse the device-side work, under the label asked for now.
            return cached if cached.label == label else dataclasses.replace(cached, label=label)
        prepared = self._prepare(artifact, content_hash, label)
        self._prepared[content_hash] = prepared
        return prepared

    @abc.abstractmethod
    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared: ...

    def renew(self, prepared: Prepared) -> Prepared:
        """A fresh instance of a prepared artifact for another round: a new runtime session with
        its own memory layout. On a shared host an unlucky layout keeps one session slow for as
        long as it lives (measured: one attention block 32 % slow in all five rounds of a build),
        so every round starts from a new one. The device-side copy (a pushed file) is kept.
        Runners whose every measurement already starts a fresh process return `prepared`."""
        return prepared

    @abc.abstractmethod
    def measure(self, prepared: Prepared, policy: SamplingPolicy | None = None, *, profile: bool = False) -> Measurement:
        """Time `prepared` as `policy` says (default: SamplingPolicy()); with `profile`, also take
        per-op times in a way that does not touch the samples."""

    # -- time and heat, as the measuring session sees them ---------------------------------------
    def now(self) -> float:
        """The device's clock in seconds (epoch-based), for journal times and round separation.
        A simulated device returns its virtual time, so its noise can follow time without the
        test waiting for it."""
        return time.time()

    def idle(self, seconds: float) -> None:
        """Leave the device without load for `seconds` (a cool-down pause)."""
        if seconds > 0:
            time.sleep(seconds)

    def throttling(self) -> bool | None:
        """Whether the device reports thermal throttling now (None: it reports nothing). Runners
        of devices with a thermal status (Android's thermalservice) override this."""
        return None

    def provenance_for(self, prepared: Prepared, sampling: dict[str, Any], *, device: dict[str, Any] | None = None,
                       **extra: Any) -> dict[str, Any]:
        """What every Measurement records: the device as it is now (`device`, default describe()),
        the artifact, the tool's version, when, and how it was sampled (plus runner-specific
        `extra` facts)."""
        return {
            **(self.describe() if device is None else device),
            **extra,
            **prepared.info,
            "artifact": prepared.artifact.name,
            "content_hash": prepared.content_hash,
            "latbench_version": latbench_version(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sampling": sampling,
        }

    def result(self, prepared: Prepared, samples: list[float], sampling: dict[str, Any], per_op: list,
               warnings: list[str]) -> Measurement:
        """The Measurement of a local run: samples plus provenance, prepare-time figures attached."""
        return Measurement(
            label=prepared.label,
            samples_ms=samples,
            provenance=self.provenance_for(prepared, sampling),
            per_op=per_op,
            session_ms=prepared.session_ms,
            first_inference_ms=prepared.first_inference_ms,
            warnings=warnings,
        )

    def close(self) -> None:
        self._prepared.clear()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- core masks ---------------------------------------------------------------------------------
def parse_core_mask(mask: str | int | Iterable[int] | None) -> list[int] | None:
    """Core list from a hex mask ("f0", 0xf0) or an explicit list of core indices."""
    if mask is None:
        return None
    if isinstance(mask, str):
        text = mask.lower().removeprefix("0x")
        if not re.fullmatch(r"[0-9a-f]{1,16}", text):
            raise UsageError(f"core mask must be hexadecimal like f0, got {mask!r}")
        mask = int(text, 16)
    if isinstance(mask, int):
        cores = [i for i in range(mask.bit_length()) if mask >> i & 1]
    else:
        cores = sorted({int(c) for c in mask})
    if not cores or min(cores) < 0:
        raise UsageError(f"core mask selects no cores: {mask!r}")
    return cores


def check_threads_fit(threads: int, cores: Sequence[int] | None) -> None:
    """UsageError when more threads than pinned cores would run a measurement: the threads then
    take turns on a core and time each other's waits. Measured on a 2-core VM, one calibration
    model with 2 onnxruntime threads: 4.5 ms on two cores, 15.5 ms on one with about one run in
    eight at 11 ms (when the turns happened to fall right), a bimodal latency whose 2nd percentile
    depends on whether a round caught such runs: an adapt's three whole models mixed the two and
    its estimates came out 30 % under the truth (the bench's `cpu --threads 2` pair of stops 46-49,
    built on one core)."""
    if cores is not None and threads > len(cores):
        enough = mask_hex(range(threads))
        raise UsageError(f"--threads {threads} on {len(cores)} pinned core{'s' if len(cores) > 1 else ''} "
                         f"(--core-mask {mask_hex(cores)}): the threads would take turns on a core and time each "
                         f"other's waits; pin as many cores as threads (e.g. --core-mask {enough}) or use "
                         f"--threads {len(cores)}")


def mask_hex(cores: Iterable[int]) -> str:
    """The hex affinity mask (as taskset takes it) of a core list: [4, 5, 6, 7] -> "f0"."""
    return format(sum(1 << c for c in cores), "x")


# -- sampling loop shared by in-process runners (cpu, mac) --------------------------------------

#: Below this share of wall time on the CPU, the measuring thread was mostly waiting for a core.
CONTENTION_SHARE = 0.9


def sample_latencies(
    run_once: Callable[[], object],
    policy: SamplingPolicy,
    *,
    cpu_clock: Callable[[], int] | None = None,
    sample_clock: Callable[[], int] | None = None,
) -> tuple[list[float], dict[str, Any], list[str]]:
    """Warm up, then time `run_once` as `policy` says. Returns (samples_ms, info, warnings).

    Samples are taken with `sample_clock` (default time.perf_counter_ns, wall time); warm-up and
    the time cap always use wall time. With `cpu_clock` (the measuring thread's CPU time, valid
    when all work runs on this thread) the share of wall time spent on a CPU is recorded: a low
    share means other processes competed for the core, which a warning then says.
    """
    clock = time.perf_counter_ns
    timer = sample_clock or clock
    cpu0 = 0
    # Warm-up by count and by time: caches, allocator arenas and CPU frequency settle.
    t_end = clock() + int(policy.warmup_time_s * 1e9)
    done = 0
    while done < policy.warmup_runs or clock() < t_end:
        run_once()
        done += 1
    samples: list[float] = []
    warnings: list[str] = []
    if cpu_clock:
        cpu0 = cpu_clock()  # read outside the timed windows, so it costs the samples nothing
    start = clock()
    while True:
        t0 = timer()
        run_once()
        samples.append((timer() - t0) / 1e6)
        stopped_by = policy.stop_reason(samples, (clock() - start) / 1e9,
                                        check=len(samples) % policy.check_every == 0)
        if stopped_by:
            break
    wall_ns = clock() - start
    warning = policy.ci_warning(samples, stopped_by)
    if warning:
        warnings.append(warning)
    info: dict[str, Any] = {"warmup_runs": done, "timed_runs": len(samples), "stopped_by": stopped_by,
                            "timed_wall_s": round(wall_ns / 1e9, 6)}
    if cpu_clock:
        cpu_ns = cpu_clock() - cpu0
        share = min(1.0, cpu_ns / wall_ns) if wall_ns > 0 else None
        info["cpu_share"] = None if share is None else round(share, 3)
        if share is not None and share < CONTENTION_SHARE:
            effect = (
                "samples exclude the waiting but not its cache effects"
                if sample_clock
                else "samples include waiting for a core"
            )
            warnings.append(
                f"host contention: the measuring thread was on a CPU {share:.0%} of the wall time; {effect}"
            )
    return samples, info, warnings
