"""The transfer model of an adapted table: a target device's latencies from source tables' latencies.

Known devices carry over to a new one by kind and cost: the ratio target/source of an entry
clusters by block kind (attention mixers and heads move differently from FFNs between two CPUs)
and drifts with the entry's size within a kind. The model is a Bayesian ridge regression of

    log(target ms / source ms) = intercept[transfer kind] + z . (slope + slope_dev[kind])

on centred features z = (log source ms, log MACs, log params, log input elements), each
coefficient shrunk towards a prior: kind intercepts weakly towards the common median ratio (one
measured entry of a kind sets its level), the shared slopes towards zero, the per-kind slope
deviations towards zero by a precision the measurements choose (`log_evidence`: strong where the
kinds share their slopes, so a kind with few measured entries borrows the pooled ones; weak where
the measured kinds really differ; budget-20 adapts from `cpu` chose 0.5 on `litert` int8, 1 on
`litert`, 2 on `cpu` int8 and `litert --xnnpack off`).
Its posterior gives every prediction an uncertainty, and because that posterior's covariance
depends only on *which* entries are measured, not on their values, the entries to measure are
chosen before measuring anything (under the strong prior, `select_entries`): one per kind, then
greedily the one that leaves typical models' estimates least uncertain after calibration (where
the space's models are known), else the one whose own prediction is least certain.

A transfer kind is the block kind, but strided attention (stage 3: a depthwise stride-2 conv,
attention at half resolution, bilinear upsampling) is one of its own: it runs another operator
graph than stage-4 attention, and its ratio moved apart from it on every backend pair measured
(`cpu` -> `litert` 0.74 against 0.99, `--xnnpack off` 3.6 against 5.1, `cpu` int8 0.92 against 0.78,
medians of the full tables). Fitted as one kind, with the stage-4 blocks the selection measured,
stage-3 attention came out 20-37 % off. It gets its own intercept (and its own pick in the
selection) but shares attention's slope deviations: with one of its four entries measured it
cannot learn a slope of its own, and on five of the six pairs the two stages' ratios move alike
with width (replays below: slopes of its own put 58 % of `cpu` int8 subnets within 5 %, shared 62 %).

Entries without a cost (no MACs, no parameters: the empty models, whole reference models) have no
part in the shared slopes or their centring: their zero MACs and parameters are not a small cost
but none, and as points of the regression they sat far outside every block's range and tilted the
slopes every block's prediction rests on. Such a kind has its own slopes on the features it has
(source latency, input elements: an empty model copies its input), centred within the kind.

Both measured by replaying adapts from full tables (the adapt's blocks and calibration models with
the rounds the full build measured; `cpu` fp32 source; 30 random subnets + S0-L timed end to end;
budget 20 averaged over the 56 choices of 3 calibration models of the build's 8): subnets within
5 % 38 -> 69 % on `cpu` int8, 38 -> 85 % on `litert` int8, 81 -> 80 % on `litert --xnnpack off`,
80 -> 72 % on `litert` (whose one unmeasured stage-3 attention is now the only large error, no
longer offset by errors elsewhere); predicted entries against the full tables 10.1 / 9.4 / 11.7 /
8.5 -> 7.9 / 8.7 / 7.0 / 5.0 % off, 94-100 % within two stated sigmas.

Transfer kinds, replayed the same way (stop 40; before -> after, subnets within 5 %): `litert`
72 -> 98 % (the worst of the 56 triples 41 -> 94 %), `cpu --threads 2` 85 -> 85 %, `cpu` fp16 96 ->
96 %, `litert` int8 85 -> 83 %, `cpu` int8 69 -> 62 %, `litert --xnnpack off` 80 -> 59 %; predicted
entries 0.1-1.1 points closer to the full tables on five pairs (largest errors 36.7 -> 25.8 %,
35.7 -> 20.6 %). With the built-in kernels strided attention costs 1.40x its isolated time inside a
model (plain attention 1.21x, the rest 1.02x: the full table fitted on its 35 end-to-end models),
which the old +32 % error stood in for and one calibration scale cannot carry.

Pure numpy; no device, no table files: latbench.tables.adapt orchestrates, derive_table applies.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latbench.blocks.configs import config_from_fields
from latbench.tables.table import PREDICTED

#: Features besides the kind, in the order of the slopes.
FEATURES = ("log_source_ms", "log_macs", "log_params", "log_input_elements")
#: The features an entry without a cost has (source latency, input elements; not MACs, parameters).
HAS_WITHOUT_COST = np.array([True, False, False, True])
#: Prior precisions (ridge penalties) per coefficient group: kind intercepts nearly free, shared
#: slopes moderate, per-kind slope deviations strong (they need several entries of their kind).
INTERCEPT_PRECISION = 0.05
SLOPE_PRECISION = 1.0
KIND_SLOPE_PRECISION = 8.0
#: The kind-slope precisions a fit chooses from by the measurements' evidence (`log_evidence`);
#: KIND_SLOPE_PRECISION is the one the selection assumes before anything is measured.
KIND_SLOPE_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
#: Prior noise of a measured log ratio (3 %) with the weight of this many observations: a fit
#: that happens to pass through few points exactly does not claim an uncertainty of zero.
PRIOR_NOISE = 0.03
PRIOR_NOISE_WEIGHT = 2.0
#: How far the ratio of a kind with no measured entry may lie from the pooled ratio it borrows
#: (log, one sigma), added to its predictions' uncertainty: the residual noise of the measured
#: kinds says nothing of it. Over the four bench pairs' full tables (`cpu` -> `litert`, `--xnnpack
#: off`, `--threads 2`, fp16) the kinds' ratios spread 0.63 / 1.13 / 0.18 / 0.08 around the pooled
#: one (rms over kinds; empty models furthest: LiteRT's per-inference overhead is a seventh of
#: onnxruntime's, where its blocks run 0.9x or 3.1x), median 0.40. An adapt takes the larger of this
#: and the spread of the kinds it measured.
KIND_SPREAD = 0.40


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
    #: The kind the model fits the entry as: its block kind, split where one kind runs two operator
    #: graphs (strided stage-3 attention); empty: the block kind.
    transfer_kind: str = ""

    def __post_init__(self) -> None:
        if not self.transfer_kind:
            object.__setattr__(self, "transfer_kind", self.kind)

    @property
    def costed(self) -> bool:
        """Whether the entry has cost features (MACs or parameters) its ratio can depend on."""
        return self.macs > 0 or self.params > 0

    def raw_features(self) -> list[float]:
        return [math.log(self.source_ms), math.log1p(self.macs), math.log1p(self.params),
                math.log1p(self.input_elements)]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "stage": self.stage, "source_ms": self.source_ms, "macs": self.macs,
                "params": self.params, "input_elements": self.input_elements, "transfer_kind": self.transfer_kind}

    @classmethod
    def from_dict(cls, key: str, data: Mapping[str, Any]) -> Entry:
        return cls(key, str(data["kind"]), data.get("stage"), float(data["source_ms"]), float(data.get("macs") or 0),
                   float(data.get("params") or 0), float(data.get("input_elements") or 0),
                   str(data.get("transfer_kind") or ""))


class Design:
    """The regression's design over a fixed set of entries: kinds, centring, prior."""

    def __init__(self, entries: Sequence[Entry], kind_slope_precision: float = KIND_SLOPE_PRECISION):
        # Intercepts per transfer kind, slope deviations per block kind: strided attention has its
        # own level but follows attention's slopes.
        self.kinds = sorted({e.transfer_kind for e in entries})
        self.slope_kinds = sorted({e.kind for e in entries})
        self.block_kind = {e.transfer_kind: e.kind for e in entries}
        self.kind_slope_precision = kind_slope_precision
        self.centre, self.scale = _centring([e for e in entries if e.costed] or list(entries))
        # Entries without a cost are centred within their kind (see the module's docstring).
        by_kind: dict[str, list[Entry]] = {}
        for e in entries:
            by_kind.setdefault(e.kind, []).append(e)
        self.own = {kind: _centring(members) for kind, members in by_kind.items()
                    if not any(e.costed for e in members)}
        k, f = len(self.kinds), len(FEATURES)
        self.size = k + f + len(self.slope_kinds) * f
        self.precision = self._prior_precision(kind_slope_precision)

    def _prior_precision(self, kind_slope_precision: float) -> np.ndarray:
        k, f = len(self.kinds), len(FEATURES)
        return np.concatenate([np.full(k, INTERCEPT_PRECISION), np.full(f, SLOPE_PRECISION),
                               np.full(len(self.slope_kinds) * f, kind_slope_precision)])

    def with_kind_slope_precision(self, precision: float) -> Design:
        """The same design (kinds, centring, rows) under another kind-slope prior."""
        other = copy.copy(self)
        other.kind_slope_precision = precision
        other.precision = self._prior_precision(precision)
        return other

    def row(self, entry: Entry) -> np.ndarray:
        k, f = len(self.kinds), len(FEATURES)
        x = np.zeros(self.size)
        x[self.kinds.index(entry.transfer_kind)] = 1.0
        i = self.slope_kinds.index(entry.kind)
        raw = np.array(entry.raw_features())
        if entry.costed:
            z = (raw - self.centre) / self.scale
            x[k:k + f] = z
        else:
            # Only the kind's own slopes, on the features it has (no MACs, no parameters).
            centre, scale = self.own.get(entry.kind, (self.centre, self.scale))
            z = np.where(HAS_WITHOUT_COST, (raw - centre) / scale, 0.0)
        x[k + f + i * f:k + f + (i + 1) * f] = z
        return x


def _centring(entries: Sequence[Entry]) -> tuple[np.ndarray, np.ndarray]:
    """The features' centre and spread over `entries` (spread 1 where they do not vary): one
    penalty then means the same for each feature."""
    raw = np.array([e.raw_features() for e in entries], dtype=float)
    spread = raw.std(axis=0)
    return raw.mean(axis=0), np.where(spread > 1e-9, spread, 1.0)


@dataclass
class TransferFit:
    """A fitted transfer model: coefficients, their posterior covariance (up to sigma^2), noise."""

    design: Design
    coef: np.ndarray
    inverse: np.ndarray  # (X'X + prior precision)^-1
    sigma: float  # residual standard deviation of a log ratio
    points: int
    prior_ratio: float
    evidence: dict[str, float] = field(default_factory=dict)  # kind-slope precision -> log evidence
    #: the transfer kinds with measured entries, and the spread (log, one sigma) an unmeasured
    #: kind's ratio may have around the pooled one (KIND_SPREAD, or the measured kinds' if larger)
    measured_kinds: frozenset[str] = frozenset()
    kind_spread: float = KIND_SPREAD

    def predict(self, entry: Entry) -> tuple[float, float]:
        """(predicted target ms, one-sigma uncertainty in %) of one entry."""
        x = self.design.row(entry)
        log_ratio = float(x @ self.coef)
        variance = self.sigma ** 2 * (1.0 + float(x @ self.inverse @ x))
        if entry.transfer_kind not in self.measured_kinds:
            variance += self.kind_spread ** 2
        return entry.source_ms * math.exp(log_ratio), 100.0 * math.expm1(math.sqrt(variance))

    def to_dict(self) -> dict[str, Any]:
        k, f = len(self.design.kinds), len(FEATURES)
        shared = self.coef[k:k + f]
        per_kind = {}
        for i, kind in enumerate(self.design.kinds):
            j = self.design.slope_kinds.index(self.design.block_kind[kind])
            dev = self.coef[k + f + j * f:k + f + (j + 1) * f]
            per_kind[kind] = {"ratio_at_centre": math.exp(float(self.coef[i])),
                              "slopes": dict(zip(FEATURES, map(float, shared + dev)))}
        return {"method": "Bayesian ridge regression of log(target/source) per kind on centred, scaled features, "
                          "kind intercepts and slope deviations shrunk towards the pooled model",
                "features": list(FEATURES), "fitted_on": self.points, "sigma_log": self.sigma,
                "prior_ratio": self.prior_ratio,
                "precisions": {"intercept": INTERCEPT_PRECISION, "slope": SLOPE_PRECISION,
                               "kind_slope": self.design.kind_slope_precision},
                "kind_slope_evidence": self.evidence,
                "prior_noise": PRIOR_NOISE, "kinds": per_kind,
                "unmeasured_kind_spread_log": self.kind_spread}


def fit_transfer(entries: Sequence[Entry], measured: Mapping[str, float]) -> TransferFit:
    """Fit on the entries measured on the target (`measured`: key -> target ms), with the
    kind-slope prior of KIND_SLOPE_GRID the measurements make most probable (see `log_evidence`)."""
    by_key = {e.key: e for e in entries}
    points = [(by_key[k], ms) for k, ms in sorted(measured.items()) if k in by_key and ms > 0 and math.isfinite(ms)]
    ratios = [math.log(ms / e.source_ms) for e, ms in points]
    prior_ratio = statistics.median(ratios) if ratios else 0.0
    y = np.array(ratios)
    base = Design(entries)
    x = np.array([base.row(e) for e, _ in points]) if points else np.zeros((0, base.size))
    prior = np.zeros(base.size)
    prior[:len(base.kinds)] = prior_ratio
    # The rows do not depend on the prior: each candidate precision only reweighs them.
    designs = {p: base.with_kind_slope_precision(p) for p in (KIND_SLOPE_GRID if points else (KIND_SLOPE_PRECISION,))}
    evidence = {p: log_evidence(x, y - x @ prior, d.precision) for p, d in designs.items()} if points else {}
    # The most probable prior; between equally probable ones the strongest (fewer free slopes).
    design = designs[max(designs, key=lambda p: (round(evidence.get(p, 0.0), 9), p))]
    lam = np.diag(design.precision)
    a = x.T @ x + lam
    inverse = np.linalg.inv(a)
    coef = inverse @ (x.T @ y + lam @ prior) if points else prior
    residual = float(np.sum((y - x @ coef) ** 2)) if points else 0.0
    dof = len(points) - float(np.trace(x @ inverse @ x.T)) if points else 0.0
    sigma = math.sqrt((residual + PRIOR_NOISE_WEIGHT * PRIOR_NOISE ** 2) / (max(dof, 0.0) + PRIOR_NOISE_WEIGHT))
    kinds = frozenset(e.transfer_kind for e, _ in points)
    # The measured kinds' levels around the pooled ratio: how far kinds lie apart on this pair.
    levels = [float(coef[design.kinds.index(k)]) - prior_ratio for k in kinds]
    spread = math.sqrt(sum(v * v for v in levels) / len(levels)) if levels else 0.0
    return TransferFit(design, coef, inverse, sigma, len(points), math.exp(prior_ratio),
                       {str(p): round(v, 4) for p, v in evidence.items()}, kinds, max(KIND_SPREAD, spread))


def log_evidence(x: np.ndarray, residual: np.ndarray, precision: np.ndarray) -> float:
    """The log marginal likelihood of measured log ratios (rows `x`, their `residual` from the
    prior mean) under a prior of these `precision`s (up to a constant shared by every prior), the
    noise variance profiled out with the prior noise's pseudo-observations: how probable the
    measurements are under that prior, every coefficient integrated out. It weighs fit against
    flexibility, so a pair whose kinds really differ in slope earns weak kind-slope shrinking and a
    pair that does not keeps the strong one."""
    n = len(residual)
    c = np.eye(n) + (x / precision) @ x.T
    variance = (float(residual @ np.linalg.solve(c, residual)) + PRIOR_NOISE_WEIGHT * PRIOR_NOISE ** 2) \
        / (n + PRIOR_NOISE_WEIGHT)
    return -0.5 * ((n + PRIOR_NOISE_WEIGHT) * math.log(variance) + float(np.linalg.slogdet(c)[1]))


#: Kinds of at most this many entries are measured whole once every kind has one (with models to
#: weigh by): one entry cannot tell its kind's slope, and the other is then a guess with nothing
#: of its kind to check it. The stem's two widths moved apart by 1.6x on `--xnnpack off` (ratios
#: 6.5 and 4.1) and 1.2x on fp16; measured whole, the replay below put `--xnnpack off` at 82 %
#: within 5 % where it fell to 72 % (one stem predicted 70 % off).
SMALL_KIND = 2


def select_entries(entries: Sequence[Entry], count: int, already: Sequence[str] = (),
                   kind_order: Sequence[str] | None = None, models: Sequence[Mapping[str, float]] = (),
                   calibration: Sequence[Mapping[str, float]] = ()) -> list[str]:
    """The `count` entries whose measurement tells the transfer model most, in the order chosen:
    one per kind (the kind's median-cost entry: its level) in `kind_order` (default: by name;
    kinds it leaves out come after it), then greedily by what the table is used for. Deterministic.
    With fewer than one entry per kind, the kinds first in `kind_order` are measured and the rest
    borrow the pooled ratio (the intercept prior), their predictions widened by KIND_SPREAD.

    With `models` (typical whole models of the space, each its raw sum as entry coefficients:
    overhead.entry_counts), the kinds of at most SMALL_KIND entries are measured whole, then each
    next entry is the one that most lowers the models' expected squared relative error
    (`ModelVariance`) left after calibration on `calibration` (the whole models the adapt
    measures, likewise): entries by what they carry of typical models and what the transfer model
    does not know of them. Without, one entry per stage not yet covered, then the entry whose
    prediction is least certain given those chosen (posterior variance), which spreads the choice
    over the cost range of each kind.

    Replayed on the bench's four full tables (17 blocks each, measured as the full builds measured
    them, the rest predicted; 30 subnets + S0-L end to end, truths of two or three sessions; mean
    over five draws of the 100 models): subnets within 5 % with the full tables' scales / with
    scales fitted on the truth, tau, per-entry choice -> by models: `litert` 85 / 91 %, 0.947 ->
    93 / 98 %, 0.968; `cpu` fp16 79 / 82 %, 0.925 -> 80 / 89 %, 0.947; `--xnnpack off` 79 / 88 %,
    0.936 -> 77 / 84 %, 0.918; `cpu --threads 2` 44 / 71 %, 0.954 -> 37 / 74 %, 0.945 (its
    tables then built with both threads on one core; rebuilt on two, two live adapts put 85 / 79 %
    within 5 %, tau 0.968 / 0.957). Predicted entries against the full tables about as close
    (`litert`, `--xnnpack off`, `cpu --threads 2`, fp16: mean 6.6 / 8.8 / 4.4 / 4.7 % off, against
    7.1 / 9.0 / 4.6 / 4.1 %). Live budget-20 adapts on one day, two with this choice and one with
    the per-entry one: tau 0.968 / 0.971 against 0.943 on `litert`, 0.918 / 0.943 against 0.922 on
    fp16, 0.904 / 0.900 against 0.922 on `--xnnpack off`; within 5 % and measuring time moved with
    the sessions more than with the choice (`litert` 85 / 94 % against 94 %, 65 / 93 s against
    64 s)."""
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

    by_kind = {kind: sorted((e for e in entries if e.transfer_kind == kind), key=lambda e: (e.source_ms, e.key))
               for kind in order}
    for kind in order:
        if len(chosen) >= goal:
            break
        members = by_kind[kind]
        if any(e.key in chosen for e in members):
            continue
        take(members[(len(members) - 1) // 2].key)
    weigh = ModelVariance(entries, rows, models, calibration) if models else None
    if weigh is not None:
        for kind in order:
            for e in by_kind[kind] if len(by_kind[kind]) <= SMALL_KIND else ():
                if len(chosen) < goal and e.key not in chosen:
                    take(e.key)
        # A kind without cost features has slopes of its own that one entry cannot tell, and the
        # models, calibrated, hardly weigh it (every model subtracts much the same empty models):
        # its least certain entry, or its predictions stray far past what they state (see above).
        for kind in order:
            members = [e.key for e in by_kind[kind] if e.key not in chosen]
            if len(chosen) < goal and members and not any(e.costed for e in by_kind[kind]):
                inverse = np.linalg.inv(a)
                take(max(sorted(members), key=lambda k: variance(k, inverse)))
        while len(chosen) < goal and len(chosen) < len(entries):
            left = sorted(k for k in rows if k not in chosen)
            take(min(left, key=lambda k: weigh.value(a + np.outer(rows[k], rows[k]), [*chosen, k])))
        return chosen[given:]
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


class ModelVariance:
    """The expected squared relative error of typical models' estimates (up to the noise variance),
    left after calibration, given which entries are measured and the transfer model's posterior.

    A model's relative error is sum over unmeasured entries k of b_k * s_k * (x_k . d + e_k): its
    coefficient of entry k over its raw sum (b_k), less the calibration models' mean of the same
    (a calibration scale takes out what the models share with them), times the entry's source
    latency s_k (its latency up to a ratio), times the entry's error in log ratio: the coefficients'
    posterior error d along its row x_k plus its own residual e_k. Its expectation is
    w A^-1 w + sum b_k^2 s_k^2 with w = sum b_k s_k x_k, A the posterior precision."""

    def __init__(self, entries: Sequence[Entry], rows: Mapping[str, np.ndarray],
                 models: Sequence[Mapping[str, float]], calibration: Sequence[Mapping[str, float]] = ()):
        self.keys = [e.key for e in entries]
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.source = np.array([e.source_ms for e in entries])
        self.x = np.array([rows[k] for k in self.keys])

        def relative(group: Sequence[Mapping[str, float]]) -> np.ndarray:
            counts = np.array([[m.get(k, 0.0) for k in self.keys] for m in group]).reshape(len(group), len(self.keys))
            raw = counts @ self.source
            keep = raw > 0  # a model whose entries sum to nothing has no relative error to weigh
            return counts[keep] / raw[keep, None]

        self.b = relative(models)
        if calibration:
            cal = relative(calibration)
            if len(cal):
                self.b = self.b - cal.mean(axis=0)[None, :]

    def value(self, precision: np.ndarray, measured: Sequence[str]) -> float:
        unmeasured = np.ones(len(self.keys))
        unmeasured[[self.index[k] for k in measured if k in self.index]] = 0.0
        weights = self.b * (self.source * unmeasured)[None, :]
        w = weights @ self.x
        coefficient_part = np.einsum("ij,ij->i", w, np.linalg.solve(precision, w.T).T)
        return float(np.mean(coefficient_part + (weights ** 2).sum(axis=1)))


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
    unmeasured = sorted({e.transfer_kind for e in entries} - {e.transfer_kind for e in entries if e.key in measured})
    summary.update({"measured": sum(1 for e in entries if e.key in measured), "predicted": len(rows),
                    "unmeasured_kinds": unmeasured, "transfer_model": fit.to_dict()})
    return rows, summary
