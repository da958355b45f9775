"""A device whose timings are a script: a base latency per artifact, slowdowns on demand.

It stands in for a device whose behaviour a test must control exactly: a block slowed in two of
its three rounds, an entry that is always slow, a host that became slower between sessions, a
device unplugged after N measurements. Everything else is the real Runner interface: prepare
once per content hash, measure with the caller's SamplingPolicy, Measurements with provenance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from device_runners.base import DeviceInfo, Prepared, Runner
from latbench.core.errors import DeviceError, DeviceLost
from latbench.measuring.measurement import Measurement, SamplingPolicy


def latency_following_macs(configs: Sequence[Any], *, fixed_ms: float = 0.02, ms_per_mac: float = 1.5e-9,
                           other_ms: float = 0.03) -> Callable[[str], float]:
    """A latency script whose `configs` cost `fixed_ms` plus `ms_per_mac` per MAC exactly; every
    other key (anchors, empties) costs `other_ms`."""
    by_key = {c.key: fixed_ms + ms_per_mac * c.macs() for c in configs}
    return lambda key: by_key.get(key, other_ms)


class ScriptedRunner(Runner):
    kind = "scripted"
    artifact_format = "onnx"

    def __init__(self, latency: Callable[[str], float], *, speed: float = 1.0, lost_after: int | None = None,
                 fail: set[str] | None = None, sleep_s: float = 0.0, clock_step_s: float | None = None) -> None:
        super().__init__()
        self.device_id = "scripted"
        self.latency = latency  # label (the block key) -> base ms
        self.speed = speed  # the whole device's slowness factor (a slower host: > 1)
        #: label -> factors applied to its successive measurements (1.0 when exhausted)
        self.slowdowns: dict[str, list[float]] = {}
        self.lost_after = lost_after
        self.fail = fail or set()
        self.sleep_s = sleep_s
        self.calls: list[tuple[str, SamplingPolicy, bool]] = []
        self.renewed: list[str] = []
        self.artifacts: list[Path] = []  # every file prepared, in order (kept after close)
        #: A slow period of the whole device: indices of calls (in order) slowed by period_factor.
        self.period_calls: set[int] = set()
        self.period_factor = 1.3
        #: With clock_step_s, the device's clock (Runner.now) advances that much per measurement and
        #: by the seconds it idles, without sleeping: what a session reads of time (slow-period
        #: neighbours, separation, waits) no longer depends on how busy the host running the test is.
        self.clock_step_s = clock_step_s
        self.idled_s = 0.0
        self._epoch = time.time()

    def now(self) -> float:
        if self.clock_step_s is None:
            return time.time()
        return self._epoch + self.clock_step_s * len(self.calls) + self.idled_s

    def idle(self, seconds: float) -> None:
        if self.clock_step_s is None:
            super().idle(seconds)
        else:
            self.idled_s += max(0.0, seconds)

    @classmethod
    def discover(cls, **_: Any) -> list[DeviceInfo]:
        return [DeviceInfo("scripted", "scripted", True, None, {})]

    @classmethod
    def open(cls, device_id: str, **options: Any) -> Runner:
        return cls(**options)

    def describe(self) -> dict[str, Any]:
        return {"device_kind": "scripted", "device_model": "script", "runtime": "script", "runtime_version": "1",
                "threads": 1}

    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared:
        self.artifacts.append(artifact)
        return Prepared(label, content_hash, artifact, handle=label)

    def renew(self, prepared: Prepared) -> Prepared:
        self.renewed.append(prepared.handle)
        return Prepared(prepared.label, prepared.content_hash, prepared.artifact, handle=prepared.handle)

    def slow(self, label: str, *factors: float) -> None:
        """Slow the next measurements of `label` by these factors, one per measurement."""
        self.slowdowns.setdefault(label, []).extend(factors)

    def measurements_of(self, label: str) -> int:
        return sum(1 for c in self.calls if c[0] == label)

    def measure(self, prepared: Prepared, policy: SamplingPolicy | None = None, *, profile: bool = False) -> Measurement:
        policy = policy or SamplingPolicy()
        label = prepared.handle
        if self.lost_after is not None and len(self.calls) >= self.lost_after:
            raise DeviceLost("scripted device unplugged", unmeasured=[label])
        self.calls.append((label, policy, profile))
        if label in self.fail:
            raise DeviceError(f"benchmark failed for {label}")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        queue = self.slowdowns.get(label) or []
        factor = queue.pop(0) if queue else 1.0
        if len(self.calls) - 1 in self.period_calls:
            factor *= self.period_factor
        base = self.latency(label) * self.speed * factor
        n = policy.runs or 20
        samples = [base * (1 + 0.002 * (i % 10)) for i in range(n)]  # a narrow, repeatable spread
        return Measurement(label, samples, provenance=self.provenance_for(
            prepared, {"timed_runs": n, "timed_wall_s": sum(samples) / 1e3}))


class ScriptedInt8Runner(ScriptedRunner):
    """The scripted device measuring int8 artifacts too (the real int8 files are prepared, not read)."""

    precisions = ("fp32", "fp16", "int8")
