"""Parsers for what onnxruntime_perf_test prints and writes.

The summary wording changed between onnxruntime versions, e.g.

    Average time cost: 58.8053 ms            /  P50 Latency is 0.0587108 sec      (old)
    Average inference time cost:734.606 ms                                         (~1.1, no space)
    Average inference time cost: 144.871 ms  /  P50 Latency: 0.0995086 s           (1.x)
    Average inference time cost total: 98.96 ms                                    (newest)

so every figure is matched leniently (optional words, `:` or `is`, units s/sec/ms/us) and a
missing line is simply None. Output with neither an average nor a P50 is rejected.

With a result file argument, perf_test appends one CSV line per timed run:
`model,time_s,peak_working_set,cpu_usage,run` (newer versions insert the submission time before
the total: `model,submit_s,total_s,peak,cpu,run`); those are the raw samples.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_UNIT = r"(?:\s*(seconds|secs|sec|s|milliseconds|msec|ms|microseconds|usec|us|µs))?"
_SCALE_TO_MS = {
    "seconds": 1000.0, "secs": 1000.0, "sec": 1000.0, "s": 1000.0,
    "milliseconds": 1.0, "msec": 1.0, "ms": 1.0,
    "microseconds": 1e-3, "usec": 1e-3, "us": 1e-3, "µs": 1e-3,
}  # fmt: skip

_SEP = r"\s*(?::|\bis\b|=)\s*"


def _rx(label: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*{label}{_SEP}{_NUM}{_UNIT}\b", re.IGNORECASE | re.MULTILINE)


_AVERAGE = re.compile(
    rf"^\s*Average\s+(?:inference\s+)?time\s+cost(?:\s+(\w+))?{_SEP}{_NUM}{_UNIT}", re.IGNORECASE | re.MULTILINE
)
_PERCENTILES = {
    "min_ms": _rx(r"Min\s+Latency"),
    "max_ms": _rx(r"Max\s+Latency"),
    "p50_ms": _rx(r"P50\s+Latency"),
    "p90_ms": _rx(r"P90\s+Latency"),
    "p95_ms": _rx(r"P95\s+Latency"),
    "p99_ms": _rx(r"P99\s+Latency"),
    "p999_ms": _rx(r"P999\s+Latency"),
}
_SESSION = _rx(r"Session\s+creation\s+time\s+cost")
_FIRST = _rx(r"First\s+inference\s+time\s+cost")
_TOTAL = _rx(r"Total\s+(?:inference\s+)?time\s+cost")
_RUN_TIME = _rx(r"Total\s+(?:inference\s+)?run\s+time")
_REQUESTS = re.compile(r"^\s*(?:Total\s+inference\s+requests|Total\s+iterations|Runs)\s*:\s*(\d+)", re.I | re.M)


@dataclass(frozen=True)
class PerfTestReport:
    """The figures one onnxruntime_perf_test invocation printed, in milliseconds (None if absent)."""

    average_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    session_creation_ms: float | None = None
    first_inference_ms: float | None = None
    total_ms: float | None = None
    run_time_ms: float | None = None
    requests: int | None = None

    @property
    def typical_ms(self) -> float:
        """P50 when printed (robust), else the average."""
        value = self.p50_ms if self.p50_ms is not None else self.average_ms
        assert value is not None  # guaranteed by the parser
        return value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _to_ms(num: str, unit: str | None, default_unit: str) -> float | None:
    value = float(num) * _SCALE_TO_MS[(unit or default_unit).lower()]
    return value if math.isfinite(value) and value >= 0 else None


def _find(rx: re.Pattern[str], text: str, default_unit: str) -> float | None:
    m = rx.search(text)
    return _to_ms(m.group(1), m.group(2), default_unit) if m else None


def parse_perf_test_output(text: str) -> PerfTestReport:
    """Parse perf_test's stdout. ValueError if it holds neither an average nor a P50 latency."""
    # Averages: prefer the "total" figure when a version prints several qualified ones.
    averages: dict[str, float] = {}
    for m in _AVERAGE.finditer(text):
        qualifier = (m.group(1) or "").lower()
        value = _to_ms(m.group(2), m.group(3), "ms")
        if value is not None:
            averages.setdefault(qualifier, value)
    average = averages.get("total", averages.get("", next(iter(averages.values()), None)))
    fields: dict[str, Any] = {k: _find(rx, text, "s") for k, rx in _PERCENTILES.items()}
    report = PerfTestReport(
        average_ms=average,
        session_creation_ms=_find(_SESSION, text, "s"),
        first_inference_ms=_find(_FIRST, text, "ms"),
        total_ms=_find(_TOTAL, text, "s"),
        run_time_ms=_find(_RUN_TIME, text, "s"),
        requests=int(m.group(1)) if (m := _REQUESTS.search(text)) else None,
        **fields,
    )
    if report.average_ms is None and report.p50_ms is None:
        snippet = next((ln.strip() for ln in text.splitlines() if ln.strip()), "<empty>")[:120]
        raise ValueError(f"no latency figures in onnxruntime_perf_test output (first line: {snippet!r})")
    if report.average_ms is not None and report.average_ms <= 0 and report.p50_ms is None:
        raise ValueError("onnxruntime_perf_test reported a non-positive average latency")
    return report


def parse_result_file(text: str) -> list[float]:
    """Per-run latencies (ms) from perf_test's result file; [] if none are recognisable."""
    samples: list[float] = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5:
            continue  # blank line or the statistics block appended after the runs
        column = 2 if len(fields) >= 6 else 1
        try:
            value = float(fields[column]) * 1000.0
        except ValueError:
            continue
        if math.isfinite(value) and value > 0:
            samples.append(value)
    return samples
