"""The overhead model: how a table's isolated block latencies add up to a whole model.

Every isolated block measurement pays the fixed per-inference cost (the call into the runtime,
binding the input, copying the output out) that the whole model pays only once. A table
therefore also holds "empty" models, one per block input shape, that time exactly that cost:

    part_g   = sum over blocks k of group g of count_k * (t_k - e(shape_k))   (+ e(input) in "rest")
    estimate = scale_attention * part_attention + scale_rest * part_rest [+ c_weights * parameters]
               [strided attention apart: + scale_strided * part_strided]

The scales are fitted on whole models measured end to end during the build (non-negative,
relative least squares) and absorb what isolated blocks still miss (cross-block fusion, cache
effects). Attention mixers get their own scale because they miss more: refitting 33 validated
subnets leave-one-out, one scale left 85 % of them within 5 %, an attention and a rest scale 94 %
(the attention scale came out at 1.25, the rest at 1.07). With too few calibration models, or
models whose attention share barely differs, one common scale is fitted instead; an adapt's three
models, one of them the attention-free twin of another, tell the two apart. Stage 3's strided
attention mixers may get a scale of their own (STRIDED_ATTENTION): against the same validations,
refitting the 8 calibration models of the bench's full `litert --xnnpack off` table put 85 -> 88 %
within 5 %, tau 0.936 -> 0.957 (a second build of it: 79 -> 82 %, 0.936 -> 0.964), `litert` 100 %
either way, tau 0.982 -> 0.986.

The cold-weights term: an isolated block timed in a loop reads its weights from a warm cache; in
a whole model the other blocks have evicted them, so each inference streams every weight in again,
a cost in proportion to the parameters that no scale on the blocks' times carries. It is fitted
(ms per million parameters) only where it predicts held-out calibration models better. On this
2-core VM, flushing L2 between runs of isolated int8 stage-4 FFN blocks added 0.044-0.064 ms
(0.054-0.066 ms per million parameters); the fits read 0.076 (int8 `cpu`) and 0.122 (int8
`litert`). Against 30 subnets + S0-L timed end to end, the tables' own 8 calibration models
refitted: int8 `litert` 82 -> 85 % within 5 %, mean 2.83 -> 2.42 %, max 8.8 -> 5.6 %, tau 0.929 ->
0.943; int8 `cpu` 91 -> 94 %, tau 0.954 either way. Without the term the estimates fell short
the more stage-4 blocks a model has (correlation of error and stage-4 depth -0.49 on `litert`,
-0.24 on `cpu`); with it +0.10 and +0.02.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from latbench.blocks.configs import BlockConfig, EmptyConfig


@dataclass
class BlockEstimate:
    """One block key's part of a sum."""

    key: str
    kind: str
    group: str  # stem, stage1..stage4, head, model
    count: int
    block_ms: float  # the table's latency for one isolated run
    overhead_ms: float  # per-inference overhead subtracted per occurrence
    total_ms: float  # count * (block_ms - overhead_ms), before the scale


def block_group(config: BlockConfig) -> str:
    """Which part of the model a block belongs to: stem, stage1..stage4, head (or model)."""
    kind = config.kind
    if kind in ("stem", "head", "model"):
        return kind
    stage = getattr(config, "stage", None)
    if kind == "embed":  # an embedding produces the next stage's input
        return f"stage{stage + 1}"
    if kind == "attndown":
        return "stage4"
    return f"stage{stage}"


def empty_key(resolution: int, shape: tuple[int, ...]) -> str:
    return EmptyConfig.for_shape(resolution, shape).key


#: The calibration groups: attention mixers, and everything else (the input overhead included).
SCALE_GROUPS = ("attention", "rest")
#: Strided attention mixers (stage 3's: keys and values downsampled by a strided depthwise conv,
#: the output upsampled), a part of their own: their scale is the attention scale unless a fit
#: gives them one. Other operators than stage 4's mixers, and another multiple of their isolated
#: time inside a model: fitted on the 8 calibration models of each full table of the bench pairs,
#: strided / other attention x1.50 / x1.25 (`litert --xnnpack off`), x1.05 / x1.11 (`litert`),
#: x1.07 / x1.31 (int8 `cpu`).
STRIDED_ATTENTION = "strided_attention"
ATTENTION_PARTS = ("attention", STRIDED_ATTENTION)
#: The parts a model's raw sum splits into (OverheadModel.parts, besides WEIGHTS).
SCALE_PARTS = (*ATTENTION_PARTS, "rest")
#: The cold-weights part: a model's parameters in millions; its coefficient (ms per million
#: parameters, in the scales under this name) is 0 unless a fit found it.
WEIGHTS = "weights"


def coefficient(scales: Mapping[str, float], part: str) -> float:
    """A part's coefficient: a group's scale (1 where not fitted; strided attention's, the
    attention scale), the cold-weights ms per million parameters (0 where not fitted)."""
    if part == STRIDED_ATTENTION and part not in scales:
        part = "attention"
    return scales.get(part, 0.0 if part == WEIGHTS else 1.0)


def scale_part(config: BlockConfig) -> str:
    """The part of a model's raw sum a block counts in (SCALE_PARTS): attention mixers, strided
    ones apart, or the rest."""
    if config.kind != "mhsa":
        return "rest"
    return STRIDED_ATTENTION if getattr(config, "strided", False) else "attention"


def attention_ms(parts: Mapping[str, float]) -> float:
    """A model's attention mixers' raw sum, strided or not."""
    return sum(parts.get(p, 0.0) for p in ATTENTION_PARTS)


class OverheadModel:
    """Sums over a table's latencies, overhead subtracted when the table has empty models, and the
    calibration scales of each group."""

    def __init__(self, latency_ms: Mapping[str, float], empty_models: bool = True,
                 scales: Mapping[str, float] | None = None) -> None:
        self.ms = dict(latency_ms)
        self.use_overhead = empty_models and any(k.startswith("empty-") for k in self.ms)
        self.scales = {g: 1.0 for g in SCALE_GROUPS} | dict(scales or {})

    def scale_of(self, config: BlockConfig) -> float:
        return coefficient(self.scales, scale_part(config))

    @property
    def weights_ms(self) -> float:
        """The cold-weights coefficient: ms per million parameters (0 where not fitted)."""
        return coefficient(self.scales, WEIGHTS)

    def net_ms(self, config: BlockConfig, latency_ms: float, empty_ms: float) -> float:
        """One occurrence's calibrated share of an estimate, from its latency and its empty
        model's (the caller's lookups, so batch estimators keep their own missing-entry values):
        its group's scale times the difference, plus the cold-weights cost of its parameters.
        Summed over a model's blocks (plus the scaled input overhead) it is scaled(scales, parts)."""
        return self.scale_of(config) * (latency_ms - empty_ms) + self.weights_ms * config.params() / 1e6

    def input_overhead(self, resolution: int) -> float:
        return self.ms[empty_key(resolution, (1, 3, resolution, resolution))] if self.use_overhead else 0.0

    def required_keys(self, blocks: Sequence[BlockConfig]) -> list[str]:
        keys = {b.key for b in blocks}
        if self.use_overhead:
            r = blocks[0].resolution
            keys |= {empty_key(b.resolution, b.input_shape) for b in blocks}
            keys.add(empty_key(r, (1, 3, r, r)))
        return sorted(keys)

    def covers(self, blocks: Sequence[BlockConfig]) -> bool:
        return all(k in self.ms for k in self.required_keys(blocks))

    def raw(self, blocks: Sequence[BlockConfig]) -> tuple[float, float, list[BlockEstimate], float]:
        """(raw estimate, plain sum, per-block rows, input overhead), before the scales."""
        rows = []
        plain = 0.0
        for config, n in Counter(blocks).items():
            t = self.ms[config.key]
            e = self.ms[empty_key(config.resolution, config.input_shape)] if self.use_overhead else 0.0
            plain += n * t
            rows.append(BlockEstimate(config.key, config.kind, block_group(config), n, t, e, n * (t - e)))
        e_in = self.input_overhead(blocks[0].resolution)
        return sum(b.total_ms for b in rows) + e_in, plain, rows, e_in

    def parts(self, blocks: Sequence[BlockConfig]) -> dict[str, float]:
        """The raw sum split by part (scale_part: the calibration groups, strided attention apart;
        the input overhead counts in "rest"), and the model's parameters in millions (WEIGHTS)."""
        out = {g: 0.0 for g in SCALE_PARTS}
        params = 0
        for config, n in Counter(blocks).items():
            e = self.ms[empty_key(config.resolution, config.input_shape)] if self.use_overhead else 0.0
            out[scale_part(config)] += n * (self.ms[config.key] - e)
            params += n * config.params()
        out["rest"] += self.input_overhead(blocks[0].resolution)
        out[WEIGHTS] = params / 1e6
        return out

    def estimate(self, blocks: Sequence[BlockConfig]) -> float:
        return scaled(self.scales, self.parts(blocks))


def entry_counts(blocks: Sequence[BlockConfig], empty_models: bool = True) -> dict[str, float]:
    """A model's raw sum as a combination of table entries (key -> coefficient; before the
    scales): each block key its count, with empty models each block's empty model subtracted once
    per occurrence and the input's added (the stem's and the input's empty model are one entry,
    whose coefficients then cancel). The sum of coefficient x latency is OverheadModel.raw's."""
    out: Counter[str] = Counter()
    for config, n in Counter(blocks).items():
        out[config.key] += n
        if empty_models:
            out[empty_key(config.resolution, config.input_shape)] -= n
    if empty_models and blocks:
        r = blocks[0].resolution
        out[empty_key(r, (1, 3, r, r))] += 1
    return {k: float(v) for k, v in out.items() if v}


def scaled(scales: Mapping[str, float], parts: Mapping[str, float]) -> float:
    """A model's latency: its raw sum per calibration group, each times the group's scale, plus
    the cold-weights term."""
    return sum(coefficient(scales, g) * v for g, v in parts.items())


#: A per-group fit needs at least this many models, whose attention shares span at least this much.
MIN_MODELS_PER_GROUP_FIT = 4
MIN_ATTENTION_SPREAD = 0.08
#: ... or exactly three whose shares span at least this much (an adapt's calibration: two sampled
#: models and the attention-free twin of one, adapt.calibration_models), fitted on all three: with
#: two unknowns, leaving one out leaves nothing to judge by. Sampled models rarely span this much.
TWIN_MODELS, TWIN_SPREAD = 3, 0.15


#: A scale of its own for strided attention needs, beside the per-group fit, this many models
#: whose strided and other attention shares each span MIN_ATTENTION_SPREAD, and it must predict
#: each model from the others better than the per-group fit (from four models, each held-out fit
#: would be three scales from three models). An adapt's three models never get one: a chain of
#: three that tells the three parts apart (a model, the same without one stage's attention, and
#: without any) fitted them exactly on its predicted entries, whose errors then moved every scale
#: (`--xnnpack off`, budget 20: 32 % of subnets within 5 %; the same chain on the full table's
#: entries 91 %).
MIN_MODELS_STAGED_FIT = 5

COMMON: tuple[tuple[str, ...], ...] = (SCALE_PARTS,)
GROUPED: tuple[tuple[str, ...], ...] = (ATTENTION_PARTS, ("rest",))
STAGED: tuple[tuple[str, ...], ...] = (("attention",), (STRIDED_ATTENTION,), ("rest",))


def fit_scales(parts: Sequence[Mapping[str, float]], measured: Sequence[float]) -> dict[str, float]:
    """Scales per group minimising the squared *relative* error against `measured` (non-negative
    least squares); one common scale when the models cannot tell the groups apart, or when the
    per-group scales predict each model from the others no better than one scale does; three
    models whose attention shares span TWIN_SPREAD get both scales, fitted on all three. Strided
    attention gets a scale of its own (STRIDED_ATTENTION) where that predicts each of at least
    MIN_MODELS_STAGED_FIT models from the others better still. The cold-weights coefficient
    (WEIGHTS, ms per million parameters) joins the chosen scales only where it, too, predicts each
    model from the others better; otherwise it is left out (0).

    Replayed on measured tables (estimates against the end-to-end runs of their validations): the
    demo's cpu table built on a host slow in 72 % of its runs (6 subnets + S0-L), attention x1.59 /
    rest x0.59 -> one scale x0.97, mean error 20.5 -> 11.5 %; the int8 cpu table (30 subnets +
    S0-L) 79 -> 85 % within 5 % (mean 2.7 -> 3.0 %); the int8 litert table 82 -> 82 % (tau 0.922 ->
    0.929)."""
    if len(parts) != len(measured) or not parts:
        return {g: 1.0 for g in SCALE_GROUPS}
    totals = [sum(p.get(g, 0.0) for g in SCALE_PARTS) for p in parts]
    everything = range(len(parts))

    def shares_span(part_names: Sequence[str]) -> float:
        shares = [sum(p.get(g, 0.0) for g in part_names) / t for p, t in zip(parts, totals) if t > 0]
        return max(shares) - min(shares) if shares else 0.0

    def common(idx: Sequence[int]) -> dict[str, float]:
        s = fit_scale([totals[i] for i in idx], [measured[i] for i in idx])
        return {g: s for g in SCALE_GROUPS}

    def by_columns(columns: Sequence[Sequence[str]]):
        return lambda idx: _least_squares(parts, measured, idx, columns)

    def positive(scales: Mapping[str, float]) -> bool:
        return all(c > 0 for g, c in scales.items() if g != WEIGHTS)

    fit, columns = common, COMMON
    spread = shares_span(ATTENTION_PARTS)
    if len(parts) == TWIN_MODELS and spread >= TWIN_SPREAD:
        scales = by_columns(GROUPED)(everything)
        if positive(scales):
            return scales
    if len(parts) >= MIN_MODELS_PER_GROUP_FIT and spread >= MIN_ATTENTION_SPREAD:
        grouped = by_columns(GROUPED)
        # A scale per group only where it predicts models it was not fitted on better than one
        # common scale does: with a few noisy models (a host in a slow state 72 % of its runs) two
        # scales fit the noise (attention x1.59, rest x0.59, in-sample errors -26 to +17 %).
        if positive(grouped(everything)) and _held_out_error(grouped, parts, measured) < \
                _held_out_error(common, parts, measured):
            fit, columns = grouped, GROUPED
    if len(parts) >= MIN_MODELS_STAGED_FIT and columns == GROUPED and \
            min(shares_span(("attention",)), shares_span((STRIDED_ATTENTION,))) >= MIN_ATTENTION_SPREAD:
        staged = by_columns(STAGED)
        if positive(staged(everything)) and _held_out_error(staged, parts, measured) < \
                _held_out_error(fit, parts, measured):
            fit, columns = staged, STAGED
    if len(parts) >= MIN_MODELS_PER_GROUP_FIT and any(p.get(WEIGHTS, 0.0) > 0 for p in parts):
        cold = by_columns([*columns, (WEIGHTS,)])
        scales = cold(everything)
        if scales[WEIGHTS] > 0 and positive(scales) and \
                _held_out_error(cold, parts, measured) < _held_out_error(fit, parts, measured):
            return scales
    return fit(everything)


#: The forms fit_scales chooses among, by name (the cold-weights column may join each).
FORMS: dict[str, tuple[tuple[str, ...], ...]] = {"common": COMMON, "grouped": GROUPED, "staged": STAGED}


def fit_form(parts: Sequence[Mapping[str, float]], measured: Sequence[float], columns: Sequence[Sequence[str]]
             ) -> dict[str, float]:
    """One form's coefficients (FORMS, optionally with a (WEIGHTS,) column) fitted on every model
    given, with none of fit_scales' choices or held-out checks: the closest that form comes to
    these models on the squared relative error."""
    if len(parts) != len(measured) or not parts:
        raise ValueError("fit_form needs as many measured latencies as models, at least one")
    return _least_squares(parts, measured, range(len(parts)), columns)


def _least_squares(parts: Sequence[Mapping[str, float]], measured: Sequence[float], idx: Sequence[int],
                   columns: Sequence[Sequence[str]]) -> dict[str, float]:
    """Non-negative coefficients, one per column (the parts named in it summed), minimising the
    squared relative error of the models at `idx`; each part named gets its column's coefficient."""
    import numpy as np
    from scipy.optimize import nnls

    a = np.array([[sum(parts[i].get(g, 0.0) for g in col) / measured[i] for col in columns] for i in idx])
    coef, _ = nnls(a, np.ones(len(idx)))
    scales = {g: float(c) for col, c in zip(columns, coef) for g in col}
    if not any(col == (STRIDED_ATTENTION,) for col in columns):
        scales.pop(STRIDED_ATTENTION, None)  # it shares the attention scale (coefficient)
    return scales


def _held_out_estimates(fit, parts: Sequence[Mapping[str, float]], members: Sequence[int]) -> dict[int, float]:
    """Each model of `members` estimated by `fit` on the other members."""
    return {i: scaled(fit([j for j in members if j != i]), parts[i]) for i in members}


def _held_out_error(fit, parts: Sequence[Mapping[str, float]], measured: Sequence[float]) -> float:
    """Mean squared relative error of each model predicted by `fit` on all the others."""
    estimates = _held_out_estimates(fit, parts, range(len(parts)))
    return sum((e / measured[i] - 1) ** 2 for i, e in estimates.items()) / len(parts)


#: A model measured this much (and 4 median deviations) slower than the others' fit says was
#: measured in a slow state: noise only slows, and one such model pulls every scale up (on the
#: simulated vm-bursts device one calibration model read 35 % slow in three agreeing rounds and
#: moved the fitted scales by 7-9 %).
SLOW_OUTLIER = 0.10
#: At or below the minimum number of models, a model still leaves the fit when the fit of the
#: others puts it this much slower while they agree with one another within SLOW_OUTLIER: an
#: adapt calibrates on three models, and on a host switching between states every few seconds
#: one of them read 41 % slow in three agreeing rounds (calibration errors -24 / +4 / +12 %),
#: which put 32 % of the adapted table's subnets within 5 % (left out: 56 %; 30 subnets + S0-L).
GROSS_SLOW_OUTLIER = 0.25
#: ... but never below this many.
MIN_MODELS_LEFT = 2


def robust_fit(parts: Sequence[Mapping[str, float]], measured: Sequence[float],
               min_models: int) -> tuple[dict[str, float], list[int]]:
    """fit_scales, leaving out one at a time the model measured slowest against the fit of the
    rest while it is a slow outlier and at least `min_models` remain, or, below that, while it is
    a gross one (gross_slow_outlier); the scales and the indices of the models kept."""
    keep = list(range(len(parts)))
    while True:
        scales = fit_scales([parts[i] for i in keep], [measured[i] for i in keep])
        if len(keep) <= min_models:
            gross = gross_slow_outlier(parts, measured, keep)
            if gross is None:
                return scales, keep
            keep.remove(gross)
            continue
        excess = {i: measured[i] / scaled(scales, parts[i]) - 1 for i in keep}
        typical = statistics.median(excess.values())
        spread = statistics.median(abs(e - typical) for e in excess.values())
        worst = max(keep, key=lambda i: excess[i])
        if excess[worst] - typical <= max(SLOW_OUTLIER, 4 * spread):
            return scales, keep
        keep.remove(worst)


def fit_scale(raw: Sequence[float], measured: Sequence[float]) -> float:
    """The scale minimising the squared *relative* error of scale * raw against `measured`."""
    if len(raw) != len(measured) or not raw:
        return 1.0
    # Weights 1/y^2 turn absolute residuals into relative ones.
    sxx = sum(x * x / (y * y) for x, y in zip(raw, measured))
    sxy = sum(x / y for x, y in zip(raw, measured))
    scale = sxy / sxx if sxx else 1.0
    # Raw sums at or below zero (blocks no slower than their empty models: a broken table) cannot
    # be scaled into a latency; a table must never carry a negative scale.
    return scale if scale > 0 else 1.0


def gross_slow_outlier(parts: Sequence[Mapping[str, float]], measured: Sequence[float],
                       keep: Sequence[int]) -> int | None:
    """The model of `keep` that the fit of the others puts GROSS_SLOW_OUTLIER or more slower, while
    those others fit one another within SLOW_OUTLIER (each left out in turn); None when there is
    none, or when leaving it out would leave fewer than MIN_MODELS_LEFT. Noise only slows, so only
    the slow side is judged."""
    if len(keep) <= MIN_MODELS_LEFT:
        return None

    def fit_on(idx: Sequence[int]) -> dict[str, float]:
        return fit_scales([parts[j] for j in idx], [measured[j] for j in idx])

    excess = {i: measured[i] / e - 1 for i, e in _held_out_estimates(fit_on, parts, keep).items()}
    worst = max(keep, key=excess.__getitem__)
    if excess[worst] < GROSS_SLOW_OUTLIER:
        return None
    others = [j for j in keep if j != worst]
    if any(abs(measured[i] / e - 1) > SLOW_OUTLIER for i, e in _held_out_estimates(fit_on, parts, others).items()):
        return None
    return worst
