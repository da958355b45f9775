"""Two tables of one space side by side: per-block latency ratios B/A and their summary per block
kind. Comparing an fp32 table (A) with an int8 table (B) of one device is what answers how
quantization moves each kind: convolutions and matmuls may gain while softmax, norms and GELU stay
in float between quantize/dequantize pairs, so one factor for the whole table would mislead."""

from __future__ import annotations

import statistics
from typing import Any

from latbench.core.errors import UsageError
from latbench.tables.table import LatencyTable


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
