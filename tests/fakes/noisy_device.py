"""A simulated device that replays other devices' noise on a virtual clock.

The measuring rules (consensus of rounds, slow periods, anchors) were tuned on one 2-core VM. This
double reproduces the noise of other devices, so the rules can be proven against them in tests
and in `benchmarks/bench_noise.py`: a true fast-state latency per key (a script), a
`NoiseProfile` that says how the device slows down, and a seed. Everything else is the real Runner
interface: prepare once per content hash, renew per round, measure with the caller's
SamplingPolicy (warm-up, fixed runs or adaptive stop with `policy.stop_reason`), Measurements
with provenance, `now()`/`idle()`/`throttling()`.

Time is virtual: `measure()` advances the device's clock by its warm-up, every sample and a small
per-measurement overhead; `idle()` advances it and lets the device cool. Nothing sleeps, so a
build that would take half an hour on a phone takes seconds, and noise that follows time (slow
periods of tens of seconds, throttling after minutes of load) is still seen by the session in the
order and at the times it would be.

All noise is slowdown-only: samples are at least the true fast latency, less a tiny jitter.
Ground truth for benches and tests: `true_fast_ms(key)` and `true_typical_ms(key)` (the expected
median of a ~50-run benchmark pass started at a random moment of normal, unthrottled operation).
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_runners.base import DeviceInfo, Prepared, Runner
from latbench.core.errors import UsageError
from latbench.measuring.measurement import THROTTLING_WARNING, Measurement, SamplingPolicy

TRACE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "noise"

#: Set-up of one measurement (a fresh session, the benchmark invocation): time without samples.
MEASURE_OVERHEAD_S = 0.03
#: Runs in the benchmark pass whose median `true_typical_ms` is (what users compare with).
TYPICAL_RUNS = 50


# -- profile parts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spans:
    """A device-wide state that comes and goes in virtual time: spans of `on_s` seconds (uniform in
    the range) at a slowdown factor drawn per span from `factor`, separated by gaps whose length is
    exponential with mean `gap_s`."""

    on_s: tuple[float, float]
    gap_s: float
    factor: tuple[float, float]

    @property
    def share(self) -> float:
        """Long-run share of time spent in the slow state."""
        on = sum(self.on_s) / 2
        return on / (on + self.gap_s)


@dataclass(frozen=True)
class Thermal:
    """Heat integrating load: sustained load for `heat_s` seconds makes the device throttle (every
    sample `factor` slower, drawn per episode); idling cools it, and `cool_s` seconds of idle bring
    a throttled device back below `release` (it stops throttling)."""

    heat_s: float = 150.0
    cool_s: float = 60.0
    release: float = 0.2
    factor: tuple[float, float] = (1.25, 1.40)


@dataclass(frozen=True)
class NoiseProfile:
    """How one device slows down. Parts multiply: trace quantile (or 1) x round factor x spans x
    thermal factor x (1 + jitter) x rare single-sample spikes."""

    name: str
    description: str
    jitter: float = 0.003  # half-normal sd of sample-to-sample jitter, relative
    spike_prob: float = 0.0  # share of samples hit by a one-sample spike (an interrupt)
    spike_factor: tuple[float, float] = (1.2, 2.0)
    #: Per-round slowdown (each round is a fresh session with its own memory layout): exponential
    #: with this mean, and with `unlucky_prob` a layout `unlucky_factor` slower.
    round_mean: float = 0.0
    unlucky_prob: float = 0.0
    unlucky_factor: tuple[float, float] = (1.1, 1.3)
    bursts: Spans | None = None  # short whole-device slowdowns (neighbours, memory bandwidth)
    slow: Spans | None = None  # a whole-device slow state longer than a round
    little: Spans | None = None  # migration to a little core
    thermal: Thermal | None = None
    reports_thermal: bool = False  # whether throttling() tells (Android's thermalservice does)
    trace: str | None = None  # a file of TRACE_DIR replayed row by row (round quantile ratios)
    #: trace: the fast state is within this much of a row's 2nd percentile; the rest is the slow one
    trace_fast_band: float = 0.10
    trace_run_mean: float = 20.0  # trace: mean length of one fast plus one slow run, inferences / 2


PROFILES: dict[str, NoiseProfile] = {p.name: p for p in [
    NoiseProfile("quiet", "tiny jitter only: the noise-free reference", jitter=0.003),
    NoiseProfile(
        "vm-bursts",
        "the development 2-core VM: rounds 1-2 % apart, bursts up to 26 % lasting whole rounds, a slow "
        "state 30-35 % slower in spans of 10-50 s holding about 60 % of the time (periods.py: 60-76 % of a "
        "build's rounds)",
        jitter=0.008, spike_prob=0.004, round_mean=0.012, unlucky_prob=0.03, unlucky_factor=(1.1, 1.32),
        bursts=Spans(on_s=(0.5, 3.0), gap_s=12.0, factor=(1.04, 1.26)),
        slow=Spans(on_s=(10.0, 50.0), gap_s=20.0, factor=(1.30, 1.35))),
    NoiseProfile(
        "xeon-trace",
        "the measured 16-core Xeon VM trace replayed: each round follows the quantiles of the trace row "
        "nearest in time, alternating fast and slow runs of ~10-30 inferences",
        jitter=0.0, trace="xeon-vm-rounds.csv"),
    NoiseProfile(
        "thermal",
        "a phone that throttles 25-40 % after ~2.5 min of sustained load and recovers after ~1 min idle; "
        "reports it (thermal status)",
        jitter=0.005, spike_prob=0.002, round_mean=0.004, bursts=Spans(on_s=(0.1, 0.6), gap_s=20.0, factor=(1.05, 1.2)),
        thermal=Thermal(), reports_thermal=True),
    NoiseProfile(
        "thermal-silent",
        "as thermal, but the device reports nothing: only anchors show the slowdown",
        jitter=0.005, spike_prob=0.002, round_mean=0.004, bursts=Spans(on_s=(0.1, 0.6), gap_s=20.0, factor=(1.05, 1.2)),
        thermal=Thermal(), reports_thermal=False),
    NoiseProfile(
        "big-little",
        "big/little migration: stretches of 1-4 s (about 25 % of the time) on a little core 2.2-2.8x slower",
        jitter=0.005, spike_prob=0.002, round_mean=0.004,
        little=Spans(on_s=(1.0, 4.0), gap_s=7.5, factor=(2.2, 2.8))),
]}


# -- the processes behind a profile -----------------------------------------------------------------
class _SpanProcess:
    """One `Spans` state as a lazily extended timeline (seconds since the device's epoch). Queries
    may go back in time (the timeline is kept), so the same timeline serves any order of reads."""

    def __init__(self, spans: Spans, rng: np.random.Generator) -> None:
        self.spans = spans
        self.rng = rng
        self.starts: list[float] = []  # start of each slow span
        self.ends: list[float] = []
        self.factors: list[float] = []
        # Start in the stationary regime: already inside a span with its long-run probability.
        if rng.random() < spans.share:
            self._add(-rng.uniform(0, self._on()))
        self._horizon = self.ends[-1] if self.ends else 0.0

    def _on(self) -> float:
        return float(self.rng.uniform(*self.spans.on_s))

    def _add(self, start: float) -> None:
        self.starts.append(start)
        self.ends.append(start + self._on())
        self.factors.append(float(self.rng.uniform(*self.spans.factor)))

    def at(self, t: float) -> float:
        while self._horizon <= t:
            self._add(self._horizon + float(self.rng.exponential(self.spans.gap_s)))
            self._horizon = self.ends[-1]
        i = bisect.bisect_right(self.starts, t) - 1
        return self.factors[i] if i >= 0 and t < self.ends[i] else 1.0


@dataclass(frozen=True)
class _Trace:
    t: np.ndarray
    period: float
    knots_u: np.ndarray
    knots: np.ndarray  # rows x knots: the quantile function through min, p2, median, p95, max
    fast_q: np.ndarray  # per row, the share of samples in the fast state

    def row(self, t_rel: float) -> int:
        x = t_rel % self.period
        i = int(np.searchsorted(self.t, x))
        if i == 0:
            return 0
        if i >= len(self.t):
            return len(self.t) - 1
        return i if self.t[i] - x < x - self.t[i - 1] else i - 1

    def quantile(self, row: int, u: np.ndarray) -> np.ndarray:
        return np.interp(u, self.knots_u, self.knots[row])


@functools.lru_cache(maxsize=4)
def load_trace(name: str, fast_band: float = 0.10) -> _Trace:
    """A trace file of TRACE_DIR as quantile functions per row (the rows of shared/data's format)."""
    with open(TRACE_DIR / name, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UsageError(f"noise trace {name} is empty")
    t = np.array([float(r["t_s"]) for r in rows])
    q = {c: np.array([float(r[c]) for r in rows]) for c in ("min_ratio", "p2_ratio", "median_ratio", "p95_ratio")}
    p2, med, p95 = q["p2_ratio"], np.maximum(q["median_ratio"], q["p2_ratio"]), q["p95_ratio"]
    p95 = np.maximum(p95, med)
    # Some empty-model rows read min 0 (timer resolution) or far below p2: slowdown-only noise
    # allows a tiny jitter below the fast state, no more.
    lo = np.clip(q["min_ratio"], 0.97 * p2, p2)
    hi = p95 + 0.5 * (p95 - med)  # the tail above p95 is not in the trace: half the p95-median gap
    knots_u = np.array([0.0, 0.02, 0.5, 0.95, 1.0])
    knots = np.stack([lo, p2, med, p95, hi], axis=1)
    # Fast state: the quantiles within fast_band of the row's p2 (inverse of the piecewise-linear
    # quantile function at p2 * (1 + band)), kept away from 0 and 1 so both states occur.
    bound = p2 * (1 + fast_band)
    fast_q = np.array([np.interp(b, k, knots_u) if np.all(np.diff(k) > 0) else _inverse(k, knots_u, b)
                       for b, k in zip(bound, knots)])
    gaps = np.diff(t)
    period = float(t[-1] + (np.median(gaps) if len(gaps) else 1.0))
    return _Trace(t, period, knots_u, knots, np.clip(fast_q, 0.05, 0.95))


def _inverse(knots: np.ndarray, us: np.ndarray, value: float) -> float:
    """The largest u whose quantile is <= value, for a non-decreasing piecewise-linear quantile."""
    best = 0.0
    for (u0, k0), (u1, k1) in zip(zip(us, knots), zip(us[1:], knots[1:])):
        if k1 <= value:
            best = float(u1)
        elif k0 <= value:
            best = float(u0 + (u1 - u0) * (value - k0) / (k1 - k0)) if k1 > k0 else float(u0)
            break
        else:
            break
    return best


class NoiseProcess:
    """The state of one simulated device under a profile: span timelines, heat, the round in
    progress. Times are seconds since the device's epoch."""

    def __init__(self, profile: NoiseProfile, seed: int) -> None:
        self.profile = profile
        ss = np.random.SeedSequence([int(seed), 0x4E015E])
        s_samples, s_bursts, s_slow, s_little, s_thermal = ss.spawn(5)
        # Separate streams: a timeline does not depend on how many samples were drawn before.
        self.rng = np.random.default_rng(s_samples)
        self.bursts = _SpanProcess(profile.bursts, np.random.default_rng(s_bursts)) if profile.bursts else None
        self.slow = _SpanProcess(profile.slow, np.random.default_rng(s_slow)) if profile.slow else None
        self.little = _SpanProcess(profile.little, np.random.default_rng(s_little)) if profile.little else None
        self.thermal_rng = np.random.default_rng(s_thermal)
        self.trace = load_trace(profile.trace, profile.trace_fast_band) if profile.trace else None
        self.heat = 0.0
        self.throttle_factor: float | None = None  # set while throttled
        self.round_factor = 1.0
        self.fast = True  # trace: the state of the run in progress
        self.run_left = 0

    # -- time and heat ----------------------------------------------------------------------------
    @property
    def throttled(self) -> bool:
        return self.throttle_factor is not None

    def advance(self, seconds: float, busy: bool) -> None:
        th = self.profile.thermal
        if th is None or seconds <= 0:
            return
        if busy:
            self.heat = min(1.0, self.heat + seconds / th.heat_s)
            if self.heat >= 1.0 and self.throttle_factor is None:
                self.throttle_factor = float(self.thermal_rng.uniform(*th.factor))
        else:
            self.heat = max(0.0, self.heat - seconds * (1 - th.release) / th.cool_s)
            if self.heat <= th.release:
                self.throttle_factor = None

    # -- samples ----------------------------------------------------------------------------------
    def begin_round(self) -> None:
        """A new measurement on a fresh session: its own layout factor, its own run state."""
        p, rng = self.profile, self.rng
        f = 1.0 + (rng.exponential(p.round_mean) if p.round_mean else 0.0)
        if p.unlucky_prob and rng.random() < p.unlucky_prob:
            f *= rng.uniform(*p.unlucky_factor)
        self.round_factor = float(f)
        self.run_left = 0

    def device_factor(self, t: float) -> float:
        """The whole device's slowdown at time t (spans and heat), without per-sample noise."""
        f = self.round_factor
        for proc in (self.bursts, self.slow, self.little):
            if proc is not None:
                f *= proc.at(t)
        if self.throttle_factor is not None:
            f *= self.throttle_factor
        return f

    def draw(self, t: float, n: int, base_ms: float) -> np.ndarray:
        """n consecutive samples (ms) starting at time t. The device-level state is read once per
        call: callers draw in chunks far shorter than any span (tens of inferences)."""
        p, rng = self.profile, self.rng
        scale = base_ms * self.device_factor(t)
        if self.trace is not None:
            row = self.trace.row(t)
            x = self.trace.quantile(row, self._trace_u(float(self.trace.fast_q[row]), n))
        else:
            x = np.ones(n)
        if p.jitter:
            x = x * (1.0 + p.jitter * np.abs(rng.standard_normal(n)))
        if p.spike_prob:
            hit = rng.random(n) < p.spike_prob
            if hit.any():
                x[hit] *= rng.uniform(*p.spike_factor, size=int(hit.sum()))
        return x * scale

    def _trace_u(self, q: float, n: int) -> np.ndarray:
        """Quantile positions for n samples alternating between the fast state (u < q) and the
        slow one (u >= q) in runs; the long-run share of fast runs is q, so the round's quantiles
        follow the row's while the samples come in runs as on the measured host."""
        rng, m = self.rng, self.profile.trace_run_mean
        mean_fast = float(np.clip(m * math.sqrt(q / (1 - q)), 3, 200))
        mean_slow = float(np.clip(m * math.sqrt((1 - q) / q), 3, 200))
        if self.run_left <= 0:
            self.fast = bool(rng.random() < q)
            mean = mean_fast if self.fast else mean_slow
            self.run_left = int(rng.integers(1, max(2, int(mean)) + 1))  # a random point inside a run
        out = np.empty(n)
        i = 0
        while i < n:
            k = min(self.run_left, n - i)
            r = rng.random(k)
            out[i:i + k] = r * q if self.fast else q + r * (1 - q)
            i += k
            self.run_left -= k
            if self.run_left <= 0:
                self.fast = not self.fast
                mean = mean_fast if self.fast else mean_slow
                self.run_left = int(rng.integers(max(1, int(0.5 * mean)), int(1.5 * mean) + 2))
        return out


def _span_mean(spans: Spans | None) -> float:
    """A span state's long-run average slowdown: its share of time at its mean factor (a span's
    factor is drawn independently of its length, so the time average weights it by share)."""
    return 1.0 if spans is None else 1.0 + spans.share * (sum(spans.factor) / 2 - 1.0)


def _without_spans(profile: NoiseProfile) -> NoiseProfile:
    return dataclasses.replace(profile, bursts=None, slow=None, little=None, thermal=None)


@functools.cache
def _pass_levels(profile: NoiseProfile, trials: int = 20_000, seed: int = 20_26) -> np.ndarray:
    """Expected median of a TYPICAL_RUNS-run pass over the true fast latency, with the span states
    taken out (their factor multiplies it: the state is constant during a pass): one value for a
    profile without a trace, else one per trace row. A seeded Monte-Carlo over what varies from
    pass to pass (the round's layout factor, jitter, spikes, the trace's fast and slow runs), so
    its error shrinks with `trials` instead of depending on one realisation of slow spans."""
    plain = _without_spans(profile)
    proc = NoiseProcess(plain, seed)
    times = proc.trace.t if proc.trace is not None else np.zeros(1)
    per = max(20, trials // len(times))  # passes per row: `trials` passes in all
    levels = np.empty(len(times))
    for i, t in enumerate(times):
        meds = np.empty(per)
        for k in range(per):
            proc.begin_round()
            meds[k] = np.median(proc.draw(float(t), TYPICAL_RUNS, 1.0))
        levels[i] = meds.mean()
    return levels


def _row_weights(trace: _Trace) -> np.ndarray:
    """The share of the trace's period each row holds (`_Trace.row` picks the nearest row)."""
    mids = (trace.t[1:] + trace.t[:-1]) / 2
    edges = np.concatenate([[0.0], mids, [trace.period]])
    return np.diff(edges) / trace.period


def _state_levels(profile: NoiseProfile, times: np.ndarray, seed: int) -> np.ndarray:
    """The typical level (expected pass median over the fast latency) at each of `times` on one
    realisation of the profile's span states (seed): what an estimator that sees the device's state
    at every moment would read there."""
    proc = NoiseProcess(profile, seed)  # fresh: no round begun (layout factor 1), never heated
    levels = _pass_levels(profile)
    out = np.empty(len(times))
    for i, t in enumerate(times):
        level = levels[proc.trace.row(float(t))] if proc.trace is not None else levels[0]
        out[i] = proc.device_factor(float(t)) * level
    return out


@functools.cache
def typical_factor(profile: NoiseProfile) -> float:
    """Expected median of a TYPICAL_RUNS-run pass, over true fast latency, started at a random
    moment of the profile's normal (unthrottled) operation: the span states' long-run averages
    (exact, from their parameters) times the pass level (Monte-Carlo, per trace row weighted by
    the time the row holds). A Monte-Carlo over one hour of one device instead sees a few dozen
    slow spans, and set the truth 1.6 % high (vm-bursts)."""
    spans = _span_mean(profile.bursts) * _span_mean(profile.slow) * _span_mean(profile.little)
    levels = _pass_levels(profile)
    trace = load_trace(profile.trace, profile.trace_fast_band) if profile.trace else None
    level = float(levels[0]) if trace is None else float(np.dot(_row_weights(trace), levels))
    return spans * level


#: The oracle reads the device's state this often (seconds): far shorter than any span.
ORACLE_STEP_S = 0.05


def oracle_typical_errors(profile: NoiseProfile, seconds: float, windows: int = 200, seed: int = 7) -> np.ndarray:
    """How well *any* estimator could know the typical latency from `seconds` of measuring: per
    window (a fresh device of the profile, its own seed), the exact average of the typical level
    over the window (the state read every ORACLE_STEP_S, each moment's pass level in expectation)
    against the long-run `typical_factor` (relative errors). An estimator that sees the device's
    state at every moment does no better than the window lets it: slow states lasting tens of
    seconds leave a few minutes' average unsure. (The mean of a few hundred passes at random
    moments would add its own sampling scatter, 1-3 %, and bound too low.)"""
    truth = typical_factor(profile)
    trace = load_trace(profile.trace, profile.trace_fast_band) if profile.trace else None
    out = np.empty(windows)
    for w in range(windows):
        rng = np.random.default_rng([seed, w])
        start = float(rng.uniform(0, trace.period)) if trace is not None else 0.0
        times = start + np.arange(0.0, seconds, ORACLE_STEP_S)
        out[w] = float(_state_levels(profile, times, seed * 100_003 + w).mean()) / truth - 1
    return out


def best_of_rounds_within(profile: NoiseProfile, rounds: Sequence[int], within: float = 0.03, entries: int = 300,
                          runs: int = 300, seconds: float = 400.0, seed: int = 11) -> dict[int, float]:
    """The most any rule can get from k rounds of an entry, for each k in `rounds`: the share of
    entries whose fastest round (2nd percentile) lies within `within` of the true fast state, rounds
    taken at random moments of `seconds` (the trace's period for a trace). Noise here only slows a
    round down, so the fastest round bounds every rule that reads its value from rounds; a rule
    that must also *know* a round is fast (two agreeing, or anchors reading fast around it) does
    worse unless the anchors explain the device."""
    counts = dict.fromkeys(rounds, 0)
    for e in range(entries):
        proc = NoiseProcess(profile, seed * 100_003 + e)
        rng = np.random.default_rng([seed, e])
        horizon = proc.trace.period if proc.trace is not None else seconds
        start = float(rng.uniform(0, horizon))
        p2s = []
        for _ in range(max(rounds)):
            proc.begin_round()
            p2s.append(float(np.percentile(proc.draw(start + float(rng.uniform(0, horizon)), runs, 1.0), 2.0)))
        for k in rounds:
            counts[k] += min(p2s[:k]) <= 1.0 + within
    return {k: c / entries for k, c in counts.items()}


# -- the runner -------------------------------------------------------------------------------------
class NoisyRunner(Runner):
    kind = "noisy"
    artifact_format = "onnx"
    #: Its latencies are a script, whatever the graph computes in: it never reads an artifact
    #: (tests hand it placeholder files), so it takes every precision.
    precisions = ("fp32", "fp16", "int8")

    def __init__(self, true_ms: Callable[[str], float], profile: NoiseProfile | str = "quiet", seed: int = 0, *,
                 epoch: float | None = None, overhead_s: float = MEASURE_OVERHEAD_S) -> None:
        super().__init__()
        if isinstance(profile, str):
            if profile not in PROFILES:
                raise UsageError(f"unknown noise profile {profile!r}: one of {', '.join(PROFILES)}")
            profile = PROFILES[profile]
        self.profile = profile
        self.device_id = f"noisy:{profile.name}"
        self.true_ms = true_ms  # label (the key) -> true fast-state latency, ms
        self.seed = seed
        self.epoch = time.time() if epoch is None else float(epoch)
        self.elapsed = 0.0  # virtual seconds since the epoch
        self.overhead_s = overhead_s
        self.process = NoiseProcess(profile, seed)
        self.measurements = 0
        self.renewed = 0

    @classmethod
    def discover(cls, **_: Any) -> list[DeviceInfo]:
        return [DeviceInfo(f"noisy:{name}", "noisy", True, None, {"noise_profile": name}) for name in PROFILES]

    @classmethod
    def open(cls, device_id: str, **options: Any) -> Runner:
        if ":" in device_id and "profile" not in options:
            options["profile"] = device_id.split(":", 1)[1]
        return cls(**options)

    def describe(self) -> dict[str, Any]:
        return {"device_kind": "noisy", "device_model": f"simulated ({self.profile.name})",
                "noise_profile": self.profile.name, "runtime": "simulated", "runtime_version": "1", "threads": 1}

    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared:
        return Prepared(label, content_hash, artifact, handle=label)

    def renew(self, prepared: Prepared) -> Prepared:
        # A fresh session: the noise process gives each measurement its own layout factor anyway.
        self.renewed += 1
        return prepared

    # -- ground truth -----------------------------------------------------------------------------
    def true_fast_ms(self, key: str) -> float:
        return float(self.true_ms(key))

    def true_typical_ms(self, key: str) -> float:
        return typical_factor(self.profile) * self.true_fast_ms(key)

    # -- time and heat ----------------------------------------------------------------------------
    def now(self) -> float:
        return self.epoch + self.elapsed

    def idle(self, seconds: float) -> None:
        if seconds > 0:
            self.elapsed += seconds
            self.process.advance(seconds, busy=False)

    def throttling(self) -> bool | None:
        return self.process.throttled if self.profile.reports_thermal else None

    def _busy(self, seconds: float) -> None:
        self.elapsed += seconds
        self.process.advance(seconds, busy=True)

    def _take(self, n: int, base_ms: float, done_when: Callable[[np.ndarray], int]) -> np.ndarray:
        """Draw n samples at the current time, keep the first done_when(cumulative seconds) + 1
        (the run at which the caller's loop would have stopped), and spend their time."""
        chunk = self.process.draw(self.elapsed, n, base_ms)
        keep = min(n, done_when(np.cumsum(chunk) / 1e3) + 1)
        chunk = chunk[:keep]
        self._busy(float(chunk.sum()) / 1e3)
        return chunk

    # -- measuring --------------------------------------------------------------------------------
    def measure(self, prepared: Prepared, policy: SamplingPolicy | None = None, *, profile: bool = False) -> Measurement:
        policy = policy or SamplingPolicy()
        base = self.true_fast_ms(prepared.label)
        if not base > 0:
            raise UsageError(f"latency script gave {base!r} ms for {prepared.label}")
        self.measurements += 1
        self.process.begin_round()
        throttled_before = self.process.throttled
        self._busy(self.overhead_s)
        warmup_runs = self._warm_up(policy, base)
        samples, elapsed, stopped_by = self._timed(policy, base)
        warnings: list[str] = []
        warning = policy.ci_warning(samples, stopped_by)
        if warning:
            warnings.append(warning)
        if self.profile.reports_thermal and (throttled_before or self.process.throttled):
            warnings.append(f"{THROTTLING_WARNING}: simulated thermal throttling during the run")
        info = {"warmup_runs": warmup_runs, "timed_runs": len(samples), "stopped_by": stopped_by,
                "timed_wall_s": round(elapsed, 6)}
        return Measurement(prepared.label, samples, provenance=self.provenance_for(
            prepared, info, virtual_clock=round(self.now(), 6)), warnings=warnings)

    def _warm_up(self, policy: SamplingPolicy, base: float) -> int:
        # As the real loop: run while fewer than warmup_runs are done or warmup_time_s has not passed.
        done, spent = 0, 0.0
        while done < policy.warmup_runs or spent < policy.warmup_time_s:
            want = max(policy.warmup_runs - done, math.ceil((policy.warmup_time_s - spent) * 1e3 / base) + 1, 1)
            want = min(want, 50_000)
            d0, s0 = done, spent

            def stop_at(cum: np.ndarray, d0: int = d0, s0: float = s0) -> int:
                ok = (d0 + np.arange(1, len(cum) + 1) >= policy.warmup_runs) & (s0 + cum >= policy.warmup_time_s)
                return int(np.argmax(ok)) if ok.any() else len(cum) - 1

            chunk = self._take(want, base, stop_at)
            done += len(chunk)
            spent += float(chunk.sum()) / 1e3
        return done

    def _timed(self, policy: SamplingPolicy, base: float) -> tuple[list[float], float, str]:
        """Timed runs in chunks up to the next check point; the stop rule is the caller's policy,
        asked after each chunk. Between check points only the run count and the time cap can stop
        the real loop, so a chunk is cut at the first run that reaches either."""
        samples: list[float] = []
        ordered: list[float] = []  # the samples sorted: the CI test sorts them, which is O(n) on sorted input
        elapsed = 0.0
        stopped_by: str | None = None
        every = policy.check_every
        while stopped_by is None:
            n = len(samples)
            k = every - n % every
            if policy.runs is not None:
                k = min(k, policy.runs - n)
            k = max(1, min(k, policy.max_runs - n))
            e0 = elapsed

            def stop_at(cum: np.ndarray, e0: float = e0) -> int:
                if policy.runs is not None:
                    return len(cum) - 1
                over = np.nonzero(e0 + cum >= policy.time_cap_s)[0]
                return int(over[0]) if len(over) else len(cum) - 1

            chunk = self._take(k, base, stop_at)
            samples.extend(chunk.tolist())
            elapsed = e0 + float(chunk.sum()) / 1e3
            check = len(samples) % every == 0
            view = samples
            if check and len(samples) >= policy.min_runs and elapsed >= policy.min_time_s:
                # The CI test sorts what it is given; merging the new samples into a sorted copy is
                # linear and keeps thousands of checks cheap. The rule reads only the multiset.
                ordered = sorted(ordered + sorted(samples[len(ordered):]))
                view = ordered
            stopped_by = policy.stop_reason(view, elapsed, check=check)
        return samples, elapsed, stopped_by

