"""One latency measurement: the raw samples plus where they came from; statistics are derived.

The idea follows torch.utils.benchmark: keep every timed sample (milliseconds) and compute the
median, spread and a confidence interval on demand, so that nothing is lost by summarising early.

The confidence interval of the median is distribution-free: for n sorted samples the interval
[x_(j), x_(n-j+1)] covers the true median with probability 1 - 2*P(B <= j-1), B ~ Binomial(n, 1/2)
(exact binomial for n <= 1000, normal approximation above). Latency distributions are skewed
and heavy-tailed, so this is preferred over mean +- t*sd.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import latbench

#: Warnings that start with this prefix mark a result taken while the device reported throttling.
THROTTLING_WARNING = "throttling reported"

_EXACT_BINOMIAL_MAX_N = 1000


@dataclass(frozen=True)
class OpTime:
    """Median time of one graph node (one kernel) across the profiled runs."""

    op_type: str
    node_name: str
    median_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"op_type": self.op_type, "node_name": self.node_name, "median_ms": _json_float(self.median_ms)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpTime:
        return cls(str(data["op_type"]), str(data["node_name"]), float(data["median_ms"]))


def aggregate_by_op_type(ops: Iterable[OpTime]) -> dict[str, float]:
    """Total median time per op type (ms), largest first."""
    totals: dict[str, float] = {}
    for op in ops:
        totals[op.op_type] = totals.get(op.op_type, 0.0) + op.median_ms
    return dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of already sorted values; q in [0, 100]."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def median_ci_indices(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based indices (lo, hi) into n sorted samples bounding the median with >= `confidence`.

    None when n is too small for any order-statistic interval to reach the confidence (n < 6 at 95 %).
    """
    if n <= 0:
        return None
    alpha = 1.0 - confidence
    if n <= _EXACT_BINOMIAL_MAX_N:
        total = 2**n
        cum = 0  # P(B <= j-1) * 2^n, grown one term at a time
        best_j = 0
        for j in range(1, n // 2 + 2):
            cum += math.comb(n, j - 1)
            if 2 * cum / total <= alpha:
                best_j = j
            else:
                break
        if best_j == 0:
            return None
        return best_j - 1, n - best_j
    z = _normal_quantile(1.0 - alpha / 2.0)
    j = max(1, math.floor(n / 2.0 - z * math.sqrt(n) / 2.0))
    return j - 1, n - j


def _normal_quantile(p: float) -> float:
    # Inverse normal CDF by bisection on erf: only used for large n, precision is ample.
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _json_float(x: float | None) -> float | None:
    # JSON has no NaN/inf; those become null.
    if x is None or not math.isfinite(x):
        return None
    return float(x)


@dataclass
class Measurement:
    """Raw latency samples (ms) of one artifact on one device, with provenance."""

    label: str
    samples_ms: list[float]
    provenance: dict[str, Any] = field(default_factory=dict)
    per_op: list[OpTime] = field(default_factory=list)
    session_ms: float | None = None
    first_inference_ms: float | None = None
    warnings: list[str] = field(default_factory=list)
    #: Runner-specific figures that are not samples (e.g. percentiles printed by a benchmark binary).
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.samples_ms = [float(s) for s in self.samples_ms]

    # -- derived statistics -------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.samples_ms)

    def _sorted(self) -> list[float]:
        return sorted(self.samples_ms)

    @property
    def median(self) -> float:
        return percentile(self._sorted(), 50.0)

    @property
    def mean(self) -> float:
        return math.fsum(self.samples_ms) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1 denominator); NaN below two samples."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(math.fsum((s - m) ** 2 for s in self.samples_ms) / (self.n - 1))

    @property
    def p5(self) -> float:
        return percentile(self._sorted(), 5.0)

    @property
    def p95(self) -> float:
        return percentile(self._sorted(), 95.0)

    @property
    def iqr(self) -> float:
        s = self._sorted()
        return percentile(s, 75.0) - percentile(s, 25.0)

    def median_ci(self, confidence: float = 0.95) -> tuple[float, float] | None:
        """Distribution-free confidence interval (ms) of the median, or None if n is too small."""
        idx = median_ci_indices(self.n, confidence)
        if idx is None:
            return None
        s = self._sorted()
        return s[idx[0]], s[idx[1]]

    @property
    def ci_rel(self) -> float:
        """Relative half-width of the ~95 % CI of the median (0.01 = +-1 %); inf if n is too small."""
        ci = self.median_ci()
        med = self.median
        if ci is None or not med or not math.isfinite(med):
            return math.inf
        return (ci[1] - ci[0]) / 2.0 / abs(med)

    @property
    def throttled(self) -> bool:
        return any(w.startswith(THROTTLING_WARNING) for w in self.warnings)

    def per_op_type(self) -> dict[str, float]:
        """Per-op medians summed per op type (ms), largest first."""
        return aggregate_by_op_type(self.per_op)

    def stats(self) -> dict[str, float | int | None]:
        """The derived statistics, JSON-safe (non-finite values become None)."""
        return {
            "n": self.n,
            "median_ms": _json_float(self.median),
            "mean_ms": _json_float(self.mean),
            "std_ms": _json_float(self.std),
            "p5_ms": _json_float(self.p5),
            "p95_ms": _json_float(self.p95),
            "iqr_ms": _json_float(self.iqr),
            "ci_rel": _json_float(self.ci_rel),
        }

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; `stats` is informational and ignored by from_dict."""
        return {
            "label": self.label,
            "samples_ms": [float(s) for s in self.samples_ms],
            "provenance": dict(self.provenance),
            "per_op": [op.to_dict() for op in self.per_op],
            "session_ms": _json_float(self.session_ms),
            "first_inference_ms": _json_float(self.first_inference_ms),
            "warnings": list(self.warnings),
            "extra": dict(self.extra),
            "stats": self.stats(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        try:
            return cls(
                label=str(data["label"]),
                samples_ms=[float(s) for s in data["samples_ms"]],
                provenance=dict(data.get("provenance") or {}),
                per_op=[OpTime.from_dict(o) for o in data.get("per_op") or []],
                session_ms=_opt_float(data.get("session_ms")),
                first_inference_ms=_opt_float(data.get("first_inference_ms")),
                warnings=[str(w) for w in data.get("warnings") or []],
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a serialised Measurement: {e}") from e

    def summary(self) -> str:
        """One line for humans: median [p5, p95] and CI."""
        ci = self.ci_rel
        ci_txt = f"+-{ci * 100:.1f}%" if math.isfinite(ci) else "CI n/a"
        return (
            f"{self.label}: median {self.median:.3f} ms (p5 {self.p5:.3f}, p95 {self.p95:.3f}, "
            f"n={self.n}, {ci_txt})"
        )


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def merge_measurements(measurements: Sequence[Measurement], label: str | None = None) -> Measurement:
    """Pool the samples of several measurements of the same artifact (e.g. interleaved rounds).

    Provenance, session and first-inference figures come from the first; warnings are united.
    """
    if not measurements:
        raise ValueError("nothing to merge")
    first = measurements[0]
    warnings: list[str] = []
    for m in measurements:
        warnings.extend(w for w in m.warnings if w not in warnings)
    samples = [s for m in measurements for s in m.samples_ms]
    return Measurement(
        label=label or first.label,
        samples_ms=samples,
        provenance={**first.provenance, "merged_from": len(measurements)},
        per_op=list(first.per_op),
        session_ms=first.session_ms,
        first_inference_ms=first.first_inference_ms,
        warnings=warnings,
        extra=dict(first.extra),
    )


def latbench_version() -> str:
    return latbench.__version__


def relative_ci(samples: Sequence[float]) -> float:
    """Relative half-width of the ~95 % CI of the median of `samples`; inf when n is too small."""
    idx = median_ci_indices(len(samples))
    if idx is None:
        return math.inf
    s = sorted(samples)
    med = percentile(s, 50.0)
    return (s[idx[1]] - s[idx[0]]) / 2.0 / med if med > 0 else math.inf


@dataclass(frozen=True)
class SamplingPolicy:
    """How one measurement samples: warm-up, then timed runs until a stop rule fires.

    The caller (a measuring session) passes a policy to `Runner.measure` with every measurement,
    so blocks, whole models and anchors can be sampled differently without touching the runner.
    With `runs` set, exactly that many timed runs are taken. Otherwise sampling stops once at
    least `min_runs` samples are in, `min_time_s` has passed and the median's ~95 % CI is within
    `target_ci` (relative half-width), or at `time_cap_s` of timed runs, or at `max_runs`.
    Runners that cannot time single runs (a benchmark binary printing summaries) apply the same
    rule to whatever unit they sample in (invocations, batches).
    """

    warmup_runs: int = 10
    warmup_time_s: float = 0.3
    runs: int | None = None
    min_runs: int = 50
    max_runs: int = 20_000
    target_ci: float = 0.01
    time_cap_s: float = 20.0
    min_time_s: float = 0.0
    check_every: int = 10

    def __post_init__(self) -> None:
        from latbench.core.errors import UsageError

        if self.runs is not None and self.runs < 1:
            raise UsageError(f"runs must be >= 1, got {self.runs}")
        if self.warmup_runs < 0 or self.min_runs < 1 or self.max_runs < 1 or self.check_every < 1:
            raise UsageError("warm-up runs must be >= 0 and run counts >= 1")
        if min(self.warmup_time_s, self.time_cap_s, self.min_time_s, self.target_ci) < 0:
            raise UsageError("sampling times and the CI target must be >= 0")

    @classmethod
    def fixed(cls, runs: int, warmup_runs: int = 10, warmup_time_s: float = 0.0) -> SamplingPolicy:
        """Exactly `runs` timed runs after `warmup_runs` untimed ones."""
        return cls(warmup_runs=warmup_runs, warmup_time_s=warmup_time_s, runs=runs)

    def replace(self, **changes: Any) -> SamplingPolicy:
        import dataclasses

        return dataclasses.replace(self, **changes)

    def stop_reason(self, samples: Sequence[float], elapsed_s: float, *, check: bool = True) -> str | None:
        """Why sampling should stop after these samples ("runs", "ci", "time_cap", "max_runs"),
        or None to go on. `check=False` skips the (costly) CI test between check points."""
        n = len(samples)
        if self.runs is not None:
            return "runs" if n >= self.runs else None
        if n >= self.max_runs:
            return "max_runs"
        if (check and n >= self.min_runs and elapsed_s >= self.min_time_s
                and relative_ci(samples) <= self.target_ci):
            return "ci"
        if elapsed_s >= self.time_cap_s:
            return "time_cap"
        return None

    def ci_warning(self, samples: Sequence[float], stopped_by: str, unit: str = "runs") -> str | None:
        """The warning a measurement carries when adaptive sampling stopped short of the CI target."""
        if self.runs is not None or stopped_by == "ci":
            return None
        ci = relative_ci(samples)
        if ci <= self.target_ci:
            return None
        return (f"median CI +-{ci * 100:.1f}% above the {self.target_ci * 100:.1f}% target "
                f"({stopped_by.replace('_', ' ')} reached after {len(samples)} {unit})")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
