"""Plausibility across entries: within a family of blocks, latency should follow cost smoothly.

Each entry's consensus is a statement about its own rounds only. A slowdown long enough to spoil
all of an entry's rounds leaves rounds that agree on a wrong value; its neighbours, measured at
other moments, still say what it should cost. A family is one block kind at one stage (strided
stage-3 attention is not stage-4 attention; an FFN at 56x56 is not one at 7x7). Within a family,
latency is modelled as a non-negative combination of a constant, MACs and memory traffic
(parameters plus input activations, in elements):

    t ~ a + b * MACs + c * (params + input elements)      (families of 6 or more)
    t ~ a + b * MACs                                       (families of 4 or 5)

fitted by non-negative least squares on relative errors. Every entry is predicted by the fit of
the *other* entries of its family (leave one out) and is implausible when it lies above that
prediction by more than `max(min_excess, k * MAD)`, the MAD taken over the log ratios of every
judged entry (small families alone say little about the spread). Only excesses are flagged: the
noise is slowdown-only, and a cheap-looking entry is the trend's problem. Smaller families
(stems) and the empty models (tens of microseconds, whose relative noise says little) are not
judged.
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
    family: str = ""  # kind and stage: the entries an entry is compared with


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
    min_entries: int = 4  # smallest family judged
    min_excess: float = 0.15  # never flag an entry less than 15 % above its trend
    mad_k: float = 4.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": "per kind and stage: t ~ a + b*MACs (+ c*(params + input elements) from 6 entries), "
                         "NNLS on relative error, leave-one-out", "min_entries": self.min_entries,
                "min_excess": self.min_excess, "mad_k": self.mad_k}


def entry_of(key: str, config: Any, latency_ms: float) -> Entry:
    shape = config.input_shape
    elems = math.prod(shape) if shape else 0
    params = config.params() if config.kind not in SKIP_KINDS else 0
    stage = getattr(config, "stage", None)
    family = config.kind if stage is None else f"{config.kind}-s{stage}"
    return Entry(key, config.kind, float(latency_ms), float(config.macs()), float(params + elems), family)


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    # Relative least squares: divide each row by its latency; columns scaled for conditioning.
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    coef, _ = nnls((x / scale) / y[:, None], np.ones_like(y))
    return coef / scale


def check_trends(entries: Sequence[Entry], rule: PlausibilityRule | None = None) -> dict[str, TrendCheck]:
    """Leave-one-out trend ratios for every judged entry; see the module docstring."""
    rule = rule or PlausibilityRule()
    families: dict[str, list[Entry]] = {}
    for e in entries:
        if e.kind not in SKIP_KINDS and math.isfinite(e.latency_ms) and e.latency_ms > 0:
            families.setdefault(e.family or e.kind, []).append(e)
    ratios: dict[str, float] = {}
    for group in families.values():
        if len(group) < rule.min_entries:
            continue
        cols = 3 if len(group) >= 6 else 2
        x = np.array([[1.0, e.macs, e.traffic][:cols] for e in group])
        y = np.array([e.latency_ms for e in group])
        for i, e in enumerate(group):
            keep = np.arange(len(group)) != i
            pred = float(x[i] @ _fit(x[keep], y[keep]))
            ratios[e.key] = y[i] / pred if pred > 0 else math.inf
    logs = [math.log(r) for r in ratios.values() if math.isfinite(r) and r > 0]
    center = statistics.median(logs) if logs else 0.0
    mad = statistics.median(abs(v - center) for v in logs) if logs else 0.0
    limit = math.exp(max(math.log(1 + rule.min_excess), center + rule.mad_k * 1.4826 * mad))
    return {k: TrendCheck(k, r, limit, r > limit) for k, r in ratios.items()}
