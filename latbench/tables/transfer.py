"""The transfer model of an adapted table: a target device's latencies from source tables' latencies.

Known devices carry over to a new one by kind and cost: the ratio target/source of an entry
clusters by block kind (attention mixers and heads move differently from FFNs between two CPUs)
and drifts with the entry's size within a kind. The model is a Bayesian ridge regression of

    log(target ms / source ms) = intercept[kind] + z . (slope + slope_dev[kind])

on centred features z = (log source ms, log MACs, log params, log input elements), each
coefficient shrunk towards a prior: kind intercepts weakly towards the common median ratio (one
measured entry of a kind sets its level), the shared slopes towards zero, the per-kind slope
deviations strongly towards zero (a kind with few measured entries borrows the pooled slopes).
Its posterior gives every prediction an uncertainty, and because that posterior's covariance
depends only on *which* entries are measured, not on their values, the entries to measure are
chosen before measuring anything: greedily, the one whose prediction is least certain
(`select_entries`), after one per kind and one per stage.

Pure numpy; no device, no table files: latbench.tables.adapt orchestrates, derive_table applies.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latbench.blocks.configs import config_from_fields
from latbench.tables.table import PREDICTED

#: Features besides the kind, in the order of the slopes.
FEATURES = ("log_source_ms", "log_macs", "log_params", "log_input_elements")
#: Prior precisions (ridge penalties) per coefficient group: kind intercepts nearly free, shared
#: slopes moderate, per-kind slope deviations strong (they need several entries of their kind).
INTERCEPT_PRECISION = 0.05
SLOPE_PRECISION = 1.0
KIND_SLOPE_PRECISION = 8.0
#: Prior noise of a measured log ratio (3 %) with the weight of this many observations: a fit
#: that happens to pass through few points exactly does not claim an uncertainty of zero.
PRIOR_NOISE = 0.03
PRIOR_NOISE_WEIGHT = 2.0


@dataclass(frozen=True)
class Entry:
    """What the transfer model knows of one table entry: its kind, cost and source latency."""

    key: str
    kind: str
    stage: int | None
    source_ms: float
    macs: float
    params: float
    input_elements: float

    def raw_features(self) -> list[float]:
        return [math.log(self.source_ms), math.log1p(self.macs), math.log1p(self.params),
                math.log1p(self.input_elements)]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "stage": self.stage, "source_ms": self.source_ms, "macs": self.macs,
                "params": self.params, "input_elements": self.input_elements}

    @classmethod
    def from_dict(cls, key: str, data: Mapping[str, Any]) -> Entry:
        return cls(key, str(data["kind"]), data.get("stage"), float(data["source_ms"]), float(data.get("macs") or 0),
                   float(data.get("params") or 0), float(data.get("input_elements") or 0))


class Design:
    """The regression's design over a fixed set of entries: kinds, centring, prior."""

    def __init__(self, entries: Sequence[Entry]):
        self.kinds = sorted({e.kind for e in entries})
        raw = np.array([e.raw_features() for e in entries], dtype=float)
        self.centre = raw.mean(axis=0)
        # Scale each feature to unit spread so one penalty means the same for each.
        spread = raw.std(axis=0)
        self.scale = np.where(spread > 1e-9, spread, 1.0)
        k, f = len(self.kinds), len(FEATURES)
        self.size = k + f + k * f
        self.precision = np.concatenate([np.full(k, INTERCEPT_PRECISION), np.full(f, SLOPE_PRECISION),
                                         np.full(k * f, KIND_SLOPE_PRECISION)])

    def row(self, entry: Entry) -> np.ndarray:
        k, f = len(self.kinds), len(FEATURES)
        x = np.zeros(self.size)
        i = self.kinds.index(entry.kind)
        z = (np.array(entry.raw_features()) - self.centre) / self.scale
        x[i] = 1.0
        x[k:k + f] = z
        x[k + f + i * f:k + f + (i + 1) * f] = z
        return x


@dataclass
class TransferFit:
    """A fitted transfer model: coefficients, their posterior covariance (up to sigma^2), noise."""

    design: Design
    coef: np.ndarray
    inverse: np.ndarray  # (X'X + prior precision)^-1
    sigma: float  # residual standard deviation of a log ratio
    points: int
    prior_ratio: float

    def predict(self, entry: Entry) -> tuple[float, float]:
        """(predicted target ms, one-sigma uncertainty in %) of one entry."""
        x = self.design.row(entry)
        log_ratio = float(x @ self.coef)
        sd = self.sigma * math.sqrt(1.0 + float(x @ self.inverse @ x))
        return entry.source_ms * math.exp(log_ratio), 100.0 * math.expm1(sd)

    def to_dict(self) -> dict[str, Any]:
        k, f = len(self.design.kinds), len(FEATURES)
        shared = self.coef[k:k + f]
        per_kind = {}
        for i, kind in enumerate(self.design.kinds):
            dev = self.coef[k + f + i * f:k + f + (i + 1) * f]
            per_kind[kind] = {"ratio_at_centre": math.exp(float(self.coef[i])),
                              "slopes": dict(zip(FEATURES, map(float, shared + dev)))}
        return {"method": "Bayesian ridge regression of log(target/source) per kind on centred, scaled features, "
                          "kind intercepts and slope deviations shrunk towards the pooled model",
                "features": list(FEATURES), "fitted_on": self.points, "sigma_log": self.sigma,
                "prior_ratio": self.prior_ratio,
                "precisions": {"intercept": INTERCEPT_PRECISION, "slope": SLOPE_PRECISION,
                               "kind_slope": KIND_SLOPE_PRECISION},
                "prior_noise": PRIOR_NOISE, "kinds": per_kind}


def fit_transfer(entries: Sequence[Entry], measured: Mapping[str, float]) -> TransferFit:
    """Fit on the entries measured on the target (`measured`: key -> target ms)."""
    design = Design(entries)
    by_key = {e.key: e for e in entries}
    points = [(by_key[k], ms) for k, ms in sorted(measured.items()) if k in by_key and ms > 0 and math.isfinite(ms)]
    ratios = [math.log(ms / e.source_ms) for e, ms in points]
    prior_ratio = statistics.median(ratios) if ratios else 0.0
    k = len(design.kinds)
    prior = np.zeros(design.size)
    prior[:k] = prior_ratio
    lam = np.diag(design.precision)
    x = np.array([design.row(e) for e, _ in points]) if points else np.zeros((0, design.size))
    y = np.array(ratios)
    a = x.T @ x + lam
    inverse = np.linalg.inv(a)
    coef = inverse @ (x.T @ y + lam @ prior) if points else prior
    residual = float(np.sum((y - x @ coef) ** 2)) if points else 0.0
    dof = len(points) - float(np.trace(x @ inverse @ x.T)) if points else 0.0
    sigma = math.sqrt((residual + PRIOR_NOISE_WEIGHT * PRIOR_NOISE ** 2) / (max(dof, 0.0) + PRIOR_NOISE_WEIGHT))
    return TransferFit(design, coef, inverse, sigma, len(points), math.exp(prior_ratio))


def select_entries(entries: Sequence[Entry], count: int, already: Sequence[str] = (),
                   kind_order: Sequence[str] | None = None) -> list[str]:
    """The `count` entries whose measurement tells the transfer model most, in the order chosen:
    one per kind (the kind's median-cost entry: its level) in `kind_order` (default: by name;
    kinds it leaves out come after it), then one per stage not yet covered, then greedily the
    entry whose prediction is least certain given those chosen (posterior variance), which
    spreads the choice over the cost range of each kind. Deterministic. With fewer than one
    entry per kind, the kinds first in `kind_order` are measured and the rest borrow the
    pooled ratio (the intercept prior) with the larger uncertainty the posterior gives them."""
    design = Design(entries)
    order = [k for k in (kind_order or ()) if k in design.kinds]
    order += [k for k in design.kinds if k not in order]
    rows = {e.key: design.row(e) for e in entries}
    a = np.diag(design.precision).astype(float)
    chosen: list[str] = []
    for key in already:
        if key in rows:
            a += np.outer(rows[key], rows[key])
            chosen.append(key)
    given = len(chosen)
    goal = given + count

    def take(key: str) -> None:
        nonlocal a
        a += np.outer(rows[key], rows[key])
        chosen.append(key)

    def variance(key: str, inverse: np.ndarray) -> float:
        return float(rows[key] @ inverse @ rows[key])

    for kind in order:
        if len(chosen) >= goal:
            break
        members = sorted((e for e in entries if e.kind == kind), key=lambda e: (e.source_ms, e.key))
        if any(e.key in chosen for e in members):
            continue
        take(members[(len(members) - 1) // 2].key)
    for stage in sorted({e.stage for e in entries if e.stage is not None}):
        if len(chosen) >= goal:
            break
        members = [e.key for e in entries if e.stage == stage]
        if any(k in chosen for k in members):
            continue
        inverse = np.linalg.inv(a)
        take(max(sorted(members), key=lambda k: variance(k, inverse)))
    while len(chosen) < goal and len(chosen) < len(entries):
        inverse = np.linalg.inv(a)
        left = sorted(k for k in rows if k not in chosen)
        take(max(left, key=lambda k: variance(k, inverse)))
    return chosen[given:]


def predicted_rows(adapt: Mapping[str, Any], measured_rows: Sequence[Mapping[str, Any]]
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The blocks.csv rows of an adapted table's entries that were not measured (from the journal's
    `adapt` record: every entry's source latency and cost), predicted by the transfer model fitted
    on the measured rows; and what meta.json records of the adaptation."""
    entries = [Entry.from_dict(k, v) for k, v in sorted((adapt.get("entries") or {}).items())]
    measured = {r["key"]: float(r["latency_ms"]) for r in measured_rows
                if r.get("latency_ms") is not None and math.isfinite(float(r["latency_ms"]))}
    fit = fit_transfer(entries, measured)
    # A predicted entry's typical latency: its fast state times the typical/fast ratio of the
    # measured entries of its kind (of all measured entries where its kind has none).
    ratios: dict[str, list[float]] = {}
    for r in measured_rows:
        t, f = r.get("typical_ms"), r.get("latency_ms")
        if t is not None and f and math.isfinite(float(t)) and math.isfinite(float(f)):
            ratios.setdefault(str(r["kind"]), []).append(float(t) / float(f))
    everything = [x for v in ratios.values() for x in v]
    rows = []
    for e in entries:
        if e.key in measured:
            continue
        fields = dict((adapt["entries"][e.key]).get("fields") or {})
        config = config_from_fields(fields)
        ms, uncertainty = fit.predict(e)
        typical = ratios.get(e.kind) or everything
        rows.append({"key": e.key, "kind": e.kind, **{k: v for k, v in config.fields().items() if k != "kind"},
                     "input_shape": "x".join(map(str, config.input_shape)),
                     "params": int(e.params) if e.kind != "model" and e.params else None,
                     "macs": int(e.macs) if e.kind != "model" and e.macs else None,
                     "latency_ms": ms, "typical_ms": ms * (statistics.median(typical) if typical else 1.0),
                     "consensus": False, "rounds": 0, "flags": None, "trend_ratio": None, "source": PREDICTED, "uncertainty_pct": uncertainty})
    summary = {k: adapt.get(k) for k in ("sources", "budget", "selected", "calibration", "source_latency")}
    # Kinds without one measured entry (a budget below the number of kinds): their entries rest
    # on the pooled ratio alone, and their uncertainty says so.
    unmeasured = sorted({e.kind for e in entries} - {e.kind for e in entries if e.key in measured})
    summary.update({"measured": sum(1 for e in entries if e.key in measured), "predicted": len(rows),
                    "unmeasured_kinds": unmeasured, "transfer_model": fit.to_dict()})
    return rows, summary
