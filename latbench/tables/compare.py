"""Two tables of one space side by side: per-block latency ratios B/A and their summary per block
kind. Comparing an fp32 table (A) with an int8 table (B) of one device is what answers how
quantization moves each kind: convolutions and matmuls may gain while softmax, norms and GELU stay
in float between quantize/dequantize pairs, so one factor for the whole table would mislead."""

from __future__ import annotations

import statistics
from typing import Any

from latbench.core.errors import UsageError
from latbench.tables.table import PROVENANCE_KEYS, LatencyTable, device_diff


def ratio_label(a: LatencyTable, b: LatencyTable) -> str:
    """What B/A compares: "int8/fp32" across precisions, else plain "B/A"."""
    pa, pb = a.meta.get("precision"), b.meta.get("precision")
    return f"{pb}/{pa}" if pa and pb and pa != pb else "B/A"


def block_ratios(a: LatencyTable, b: LatencyTable) -> list[dict[str, Any]]:
    """One row per key both tables hold: its kind, both latencies, ratio B/A and speedup A/B."""
    ma, mb = a.latency_ms(), b.latency_ms()
    kinds = dict(zip(a.blocks["key"], a.blocks["kind"]))
    common = sorted(set(ma) & set(mb))
    if not common:
        raise UsageError(f"tables {a.label()} and {b.label()} share no block keys")
    return [{"key": k, "kind": kinds.get(k), "a_ms": ma[k], "b_ms": mb[k],
             "ratio": mb[k] / ma[k] if ma[k] else None, "speedup": ma[k] / mb[k] if mb[k] else None}
            for k in common]


def kind_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per block kind: how many common keys, and the median, min and max of their ratios B/A
    (kinds in the order of their median, fastest gain first)."""
    by_kind: dict[str, list[float]] = {}
    for r in rows:
        if r["ratio"] is not None:
            by_kind.setdefault(str(r["kind"]), []).append(r["ratio"])
    out = [{"kind": k, "count": len(v), "median_ratio": statistics.median(v), "min_ratio": min(v),
            "max_ratio": max(v)} for k, v in by_kind.items()]
    return sorted(out, key=lambda s: (s["median_ratio"], s["kind"]))


#: Prediction errors listed by name in a check, largest first.
WORST_PREDICTIONS = 5
#: What two tables' devices must agree on for one's predictions to be checked against the other's
#: measurements: their provenance, except the cores they were pinned to.
SAME_DEVICE_KEYS = [k for k in PROVENANCE_KEYS if k != "core_mask"]


def prediction_check(a: LatencyTable, b: LatencyTable) -> dict[str, Any] | None:
    """How the predicted entries of an adapted table compare with another table's measurements of
    the same entries on the same device and precision (an adapted table against the full build, or
    against itself after `lut build --upgrade`): each prediction's error against the measurement and
    whether it lies within one and two of its stated sigmas. The predictions of A are checked
    against B, else those of B against A. The two tables' time bases differ by one factor (a build
    and an adapt are sessions of their own, on other hours): the median ratio over the entries both
    measured is taken out first (1 when they share none). None when neither table predicts an
    entry the other measured, or when they are tables of other devices or precisions."""
    if a.meta.get("device_id") != b.meta.get("device_id") or a.meta.get("precision") != b.meta.get("precision") \
            or device_diff(a.device, b.device, SAME_DEVICE_KEYS):
        return None
    return _predictions_against(a, b, "a") or _predictions_against(b, a, "b")


def _predictions_against(adapted: LatencyTable, measured: LatencyTable, side: str) -> dict[str, Any] | None:
    sigma, unmeasured = adapted.predicted(), measured.predicted()
    p_ms, m_ms = adapted.latency_ms(), measured.latency_ms()
    checked = sorted(k for k in sigma if k in m_ms and k not in unmeasured and m_ms[k] > 0)
    if not checked:
        return None
    both = [p_ms[k] / m_ms[k] for k in p_ms
            if k in m_ms and k not in sigma and k not in unmeasured and m_ms[k] > 0]
    base = statistics.median(both) if both else 1.0
    rows = [{"key": k, "error_pct": 100 * (p_ms[k] / (base * m_ms[k]) - 1),
             "uncertainty_pct": sigma[k] if sigma[k] == sigma[k] else None} for k in checked]
    errors = [abs(r["error_pct"]) for r in rows]
    stated = [r for r in rows if r["uncertainty_pct"]]

    def within(n: int) -> float | None:
        return sum(abs(r["error_pct"]) <= n * r["uncertainty_pct"] for r in stated) / len(stated) if stated else None

    return {"predicted_in": side, "table": adapted.label(), "count": len(rows), "time_base": base,
            "time_base_entries": len(both), "mean_abs_error_pct": statistics.fmean(errors),
            "median_abs_error_pct": statistics.median(errors), "max_abs_error_pct": max(errors),
            "within_1_sigma": within(1), "within_2_sigma": within(2),
            "worst": sorted(rows, key=lambda r: (-abs(r["error_pct"]), r["key"]))[:WORST_PREDICTIONS]}
