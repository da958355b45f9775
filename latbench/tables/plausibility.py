"""Plausibility across entries: within a kind, latency should follow cost smoothly.

Each entry's consensus is a statement about its own rounds only. A burst long enough to spoil
all of an entry's fastest rounds leaves rounds that agree on a wrong value; its neighbours of
the same kind, measured at other moments, still say what it should cost. So, per block kind,
latency is modelled as a non-negative combination of a constant, MACs and memory traffic
(parameters plus input activations, in elements):

    t ~ a + b * MACs + c * (params + input elements)

fitted by non-negative least squares on relative errors. Every entry is predicted by the fit
of the *other* entries of its kind (leave one out), and is implausible when it lies above that
prediction by more than `max(min_excess, k * MAD)` of the kind's log residuals. Only excesses
are flagged: the noise is slowdown-only, and a cheap-looking entry is the trend's problem.
Kinds with fewer than `min_entries` entries (stems, heads) and the empty models (tens of
microseconds, whose relative noise says little) are not judged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SKIP_KINDS = ("empty", "model")


@dataclass(frozen=True)
class Entry:
    key: str
    kind: str
    latency_ms: float
    macs: float
    traffic: float  # parameters + input activation elements


@dataclass(frozen=True)
class TrendCheck:
    key: str
    ratio: float  # latency / leave-one-out prediction of its kind
    limit: float  # ratio above which the entry is implausible
    implausible: bool

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "ratio": self.ratio, "limit": self.limit, "implausible": self.implausible}


@dataclass(frozen=True)
class PlausibilityRule:
    min_entries: int = 5
    min_excess: float = 0.15  # never flag an entry less than 15 % above its trend
    mad_k: float = 4.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": "t ~ a + b*MACs + c*(params + input elements), per kind, NNLS on relative error, "
                         "leave-one-out", "min_entries": self.min_entries, "min_excess": self.min_excess,
                "mad_k": self.mad_k}


def entry_of(key: str, config: Any, latency_ms: float) -> Entry:
    shape = config.input_shape
    elems = math.prod(shape) if shape else 0
    params = config.params() if config.kind not in SKIP_KINDS else 0
    return Entry(key, config.kind, float(latency_ms), float(config.macs()), float(params + elems))


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    # Relative least squares: divide each row by its latency; columns scaled for conditioning.
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    coef, _ = nnls((x / scale) / y[:, None], np.ones_like(y))
    return coef / scale


def check_trends(entries: Sequence[Entry], rule: PlausibilityRule | None = None) -> dict[str, TrendCheck]:
    """Leave-one-out trend ratios for every judged entry; see the module docstring."""
    rule = rule or PlausibilityRule()
    by_kind: dict[str, list[Entry]] = {}
    for e in entries:
        if e.kind not in SKIP_KINDS and math.isfinite(e.latency_ms) and e.latency_ms > 0:
            by_kind.setdefault(e.kind, []).append(e)
    out: dict[str, TrendCheck] = {}
    for group in by_kind.values():
        if len(group) < rule.min_entries:
            continue
        x = np.array([[1.0, e.macs, e.traffic] for e in group])
        y = np.array([e.latency_ms for e in group])
        ratios = []
        for i in range(len(group)):
            keep = np.arange(len(group)) != i
            coef = _fit(x[keep], y[keep])
            pred = float(x[i] @ coef)
            ratios.append(y[i] / pred if pred > 0 else math.inf)
        logs = [math.log(r) for r in ratios if math.isfinite(r) and r > 0]
        center = statistics.median(logs) if logs else 0.0
        mad = statistics.median(abs(v - center) for v in logs) if logs else 0.0
        limit = math.exp(center + max(math.log(1 + rule.min_excess), rule.mad_k * 1.4826 * mad))
        for e, r in zip(group, ratios):
            out[e.key] = TrendCheck(e.key, r, limit, r > limit)
    return out
