"""Interleaved, randomised measurement of many artifacts on one runner, with an anchor for drift.

Measuring configurations back to back in a fixed order confounds them with slow changes of the
device (thermal throttling, background load). So each round visits the artifacts in a fresh
random order, and an anchor artifact is re-measured at the start, every `anchor_every` items
and at the end; the change of its median relative to the first anchor is the drift. Items
measured between two anchors whose drift exceeds the tolerance are reported as suspect, and
results taken while the device reported throttling are flagged.

Each finished measurement is handed out immediately (yielded, and passed to `on_result`) so a
caller can commit it before the next one starts: if the device disappears, `DeviceLost` carries
the keys still unmeasured and everything finished is already in the caller's hands.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from device_runners.base import DeviceLost, Prepared, Runner
from latbench.errors import DeviceError, UsageError
from latbench.measurement import Measurement

ANCHOR_KEY = "<anchor>"


@dataclass(frozen=True)
class ScheduledResult:
    key: str
    measurement: Measurement
    round: int
    index: int  # completion order, anchors included
    is_anchor: bool
    #: Latest anchor median relative to the first anchor when this result was taken (None before 2 anchors).
    anchor_drift: float | None
    throttled: bool


@dataclass
class ScheduleReport:
    results: list[ScheduledResult] = field(default_factory=list)
    anchor_medians: list[float] = field(default_factory=list)
    drift: list[float] = field(default_factory=list)  # each anchor vs the first
    throttled: list[str] = field(default_factory=list)
    suspect: list[str] = field(default_factory=list)  # measured in a window that ended with excess drift
    failed: dict[str, str] = field(default_factory=dict)
    unmeasured: list[str] = field(default_factory=list)

    @property
    def max_drift(self) -> float | None:
        return max(self.drift, key=abs) if self.drift else None

    def measurements(self) -> dict[str, list[Measurement]]:
        """Non-anchor measurements per key, in the order taken."""
        out: dict[str, list[Measurement]] = {}
        for r in self.results:
            if not r.is_anchor:
                out.setdefault(r.key, []).append(r.measurement)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_results": sum(not r.is_anchor for r in self.results),
            "anchor_medians_ms": self.anchor_medians,
            "drift": self.drift,
            "max_drift": self.max_drift,
            "throttled": self.throttled,
            "suspect": self.suspect,
            "failed": self.failed,
            "unmeasured": self.unmeasured,
        }


class InterleavedRun:
    """Iterate to drive the measurements; `report` fills in as results arrive."""

    def __init__(
        self,
        runner: Runner,
        items: Mapping[str, Prepared] | Sequence[Prepared],
        *,
        anchor: Prepared | None = None,
        rounds: int = 1,
        anchor_every: int = 8,
        warmup: int = 10,
        runs: int | None = None,
        profile: bool = False,
        seed: int = 0,
        drift_tolerance: float = 0.03,
        on_result: Callable[[ScheduledResult], None] | None = None,
        on_progress: Callable[[int, int, str], None] | None = None,
        on_error: Callable[[str, DeviceError], None] | None = None,
    ) -> None:
        if isinstance(items, Mapping):
            self.items = dict(items)
        else:
            self.items = {}
            for p in items:
                if p.label in self.items:
                    raise UsageError(f"two artifacts share the label '{p.label}'; pass a mapping of unique keys")
                self.items[p.label] = p
        if rounds < 1 or anchor_every < 1:
            raise UsageError("rounds and anchor_every must be >= 1")
        self.runner = runner
        self.anchor = anchor
        self.rounds = rounds
        self.anchor_every = anchor_every
        self.measure_kw = {"warmup": warmup, "runs": runs, "profile": profile}
        self.seed = seed
        self.drift_tolerance = drift_tolerance
        self.on_result = on_result
        self.on_progress = on_progress
        self.on_error = on_error
        self.report = ScheduleReport()
        self._started = False

    def plan(self) -> list[tuple[int, str]]:
        """The (round, key) jobs in order, anchors as ANCHOR_KEY; deterministic for a seed."""
        jobs: list[tuple[int, str]] = []
        if self.anchor is not None:
            jobs.append((0, ANCHOR_KEY))
        since_anchor = 0
        for r in range(self.rounds):
            order = sorted(self.items)
            random.Random(f"{self.seed}:{r}").shuffle(order)
            for key in order:
                jobs.append((r, key))
                since_anchor += 1
                if self.anchor is not None and since_anchor == self.anchor_every:
                    jobs.append((r, ANCHOR_KEY))
                    since_anchor = 0
        if self.anchor is not None and since_anchor:
            jobs.append((self.rounds - 1, ANCHOR_KEY))
        return jobs

    def __iter__(self) -> Iterator[ScheduledResult]:
        if self._started:
            raise RuntimeError("an InterleavedRun can be iterated once")
        self._started = True
        jobs = self.plan()
        total = self.rounds * len(self.items)
        done = 0
        window: list[str] = []  # keys measured since the last anchor
        drift_now: float | None = None
        for pos, (rnd, key) in enumerate(jobs):
            is_anchor = key == ANCHOR_KEY
            prepared = self.anchor if is_anchor else self.items[key]
            try:
                m = self.runner.measure(prepared, **self.measure_kw)
            except DeviceLost as e:
                left = list(dict.fromkeys(k for _, k in jobs[pos:] if k != ANCHOR_KEY))
                self.report.unmeasured = left
                raise DeviceLost(str(e), unmeasured=left) from e
            except DeviceError as e:
                if self.on_error is None or is_anchor:
                    self.report.unmeasured = list(dict.fromkeys(k for _, k in jobs[pos:] if k != ANCHOR_KEY))
                    raise
                self.report.failed[key] = str(e)
                self.on_error(key, e)
                done += 1
                self._progress(done, total, key)
                continue
            if is_anchor:
                drift_now = self._anchor_done(m, window)
                window = []
            else:
                window.append(key)
                if drift_now is not None and abs(drift_now) > self.drift_tolerance:
                    m.warnings.append(f"anchor drift {drift_now * 100:+.1f}% before this measurement")
                if m.throttled:
                    self.report.throttled.append(key)
            result = ScheduledResult(
                key=key,
                measurement=m,
                round=rnd,
                index=len(self.report.results),
                is_anchor=is_anchor,
                anchor_drift=drift_now,
                throttled=m.throttled,
            )
            self.report.results.append(result)
            if self.on_result is not None:
                self.on_result(result)
            yield result
            if not is_anchor:
                done += 1
                self._progress(done, total, key)

    def _anchor_done(self, m: Measurement, window: list[str]) -> float | None:
        med = m.median
        self.report.anchor_medians.append(med)
        base = self.report.anchor_medians[0]
        if len(self.report.anchor_medians) < 2 or not base:
            return None
        drift = (med - base) / base
        self.report.drift.append(drift)
        if abs(drift) > self.drift_tolerance:
            self.report.suspect.extend(k for k in window if k not in self.report.suspect)
        return drift

    def _progress(self, done: int, total: int, key: str) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total, key)

    def run(self) -> ScheduleReport:
        """Drive all measurements (callbacks still fire) and return the report."""
        for _ in self:
            pass
        return self.report


def interleaved_measure(
    runner: Runner,
    items: Mapping[str, Prepared] | Sequence[Prepared],
    *,
    anchor: Prepared | None = None,
    **options: Any,
) -> InterleavedRun:
    """Randomised, interleaved rounds over `items` with an optional drift anchor.

    Iterate the returned object to get each `ScheduledResult` as soon as it is measured, or call
    `.run()` to get the `ScheduleReport`. Options: rounds, anchor_every, warmup, runs, profile,
    seed, drift_tolerance, on_result, on_progress(done, total, key), on_error(key, error).
    """
    return InterleavedRun(runner, items, anchor=anchor, **options)
