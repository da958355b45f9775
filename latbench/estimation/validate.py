"""Check a latency table against end-to-end measurements of whole models on the device.

Random subnets of the table's space plus the published S0-L are exported and measured end to end
in at least two separated passes (each a measuring session: interleaved rounds until they agree).
Each pass is put on the table's time base by three of the table's own calibration models measured
again alongside (the three it trusts most), or, for a table without them, by its anchor blocks. Three
estimates computed in the same run are compared with the mean of the passes: latbench's
estimator, the plain sum of isolated block latencies (the usual lookup-table method) and a
MACs-proportional estimate. The pass-to-pass spread of each model is the noise floor: an
estimation error within it cannot be told from measurement noise.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latbench.blocks.candidates import Candidate
from latbench.core.errors import UsageError
from latbench.core.progress import ProgressFn
from latbench.estimation.estimator import LatencyEstimator
from latbench.measuring.models import PASS_AGREEMENT, measure_models
from latbench.tables.table import LatencyTable


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    if len(x) < 2:
        return math.nan
    return float(kendalltau(x, y).statistic)


def accuracy_figures(estimates: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    errs = [(e - m) / m for e, m in zip(estimates, measured)]
    n = len(errs)
    return {
        "n": n,
        "mean_abs_pct_error": 100 * sum(abs(e) for e in errs) / n,
        "max_abs_pct_error": 100 * max(abs(e) for e in errs),
        "bias_pct": 100 * sum(errs) / n,
        "within_5pct": sum(abs(e) <= 0.05 for e in errs) / n,
        "within_10pct": sum(abs(e) <= 0.10 for e in errs) / n,
        "kendall_tau": kendall_tau(estimates, measured),
    }


@dataclass
class ValidationResult:
    """Estimation error against the mean of the agreeing passes, beside the pass-to-pass noise floor."""

    table: str
    device: dict[str, Any]
    rows: list[dict[str, Any]]
    figures: dict[str, float]
    baselines: dict[str, dict[str, float]]
    noise: dict[str, Any] = field(default_factory=dict)
    drift: float | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.figures, "baselines": self.baselines, "noise": self.noise, "models": self.rows,
                "table": self.table, "device": self.device, "anchor_drift": self.drift, "seconds": self.seconds,
                "warnings": self.warnings}


def macs_rate(table: LatencyTable) -> float:
    """ms per MAC for the MACs-proportional baseline, fitted on the table's own calibration models
    (or, without any, on its blocks)."""
    models = table.models.dropna(subset=["macs", "latency_ms"]) if len(table.models) else table.models
    if len(models):
        return float(models["latency_ms"].sum() / models["macs"].sum())
    from latbench.tables.table import row_config

    total_ms = total_macs = 0.0
    for row in table.blocks.to_dict("records"):
        if row["kind"] in ("empty", "model"):
            continue
        total_ms += row["latency_ms"]
        total_macs += row_config(row).macs()
    return total_ms / total_macs


#: Calibration models of the table measured again in every pass (reference_models):
#: what puts a pass on the table's time base. On this project's 2-core VM the three small anchor
#: blocks read 10 % slower in a validation pass than at build while the table's S0 ran within 2 %
#: of its table value; by the anchors, 41 % of 34 models were within 5 % of an fp16 table, by the
#: models 91 %.
REFERENCE_MODELS = 3
#: A pass whose anchors' factor is this far from its models' is named in the warnings.
ANCHOR_DISAGREEMENT = 0.05


def reference_models(table: LatencyTable) -> list[tuple[Candidate, float]]:
    """Up to REFERENCE_MODELS of the table's calibration models with their table latencies, the
    most trusted (LatencyTable.reference_models); none when fewer than two (a pass is then put
    on the time base by the anchors). Every pass is scaled by these models' table values, each one
    build measurement with its own noise, while the table's scales rest on all its models: on this
    project's noisier 2-core VM two validations of the adapt bench's `litert` table, by S0 (4.8 %
    from the fit), calib-1 and calib-5 (no consensus), then by calib-7, calib-2 and calib-1 (within
    2 %), read its 34 models 3.3 % apart on the median (94 % of them within 5 % of each other once
    that level is taken out), and put 82 / 94 % of them within 5 % of the table (median error -3.3 /
    -0.2 %)."""
    from latbench.measuring.models import MIN_REFERENCE_MODELS

    refs = table.reference_models()[:REFERENCE_MODELS]
    return refs if len(refs) >= MIN_REFERENCE_MODELS else []


def table_anchors_and_levels(table: LatencyTable) -> tuple[list[Any], dict[str, float]]:
    """The table's anchor blocks and their levels on its time base (empty when it has none)."""
    from latbench.blocks.configs import config_from_fields

    info = table.meta.get("anchors") or {}
    return [config_from_fields(f) for f in info.get("fields") or []], dict(info.get("levels_ms") or {})


def validate_table(table: LatencyTable, runner, candidates: Sequence[Candidate], *, rounds: int = 3,
                   passes: int = 2, jobs: int = 2, warmup: int = 10, seed: int = 0,
                   progress: ProgressFn | None = None, time_cap_s: float = 4.0,
                   journal_dir: str | Path | None = None, budget_s: float | None = None) -> ValidationResult:
    """Measure `candidates` end to end in `passes` separated passes and compare with the table's
    estimates (and the plain sum and a MACs-proportional estimate) against the mean of each model's
    passes that agree with its fastest."""
    if passes < 2:
        raise UsageError(f"validation needs at least 2 passes to measure its noise floor, got {passes}")
    t0 = time.perf_counter()
    est = LatencyEstimator(table)
    for c in candidates:
        est.check_covered(c.name, c.blocks())
    warnings = [f"table provenance differs: {d}" for d in table.check_provenance(runner.describe())]
    if table.dtype == "int8":
        from latbench.tables.build import recipe_diff, session_recipe

        warnings += [f"table quantization recipe differs: {d}"
                     for d in recipe_diff(table.meta.get("quantization"), session_recipe(runner))]
    anchors, levels = table_anchors_and_levels(table)
    references = reference_models(table)
    if not levels and not references:
        warnings.append("the table records no anchor levels: measurements are not put on its time base")
    timings = measure_models([*candidates, *[c for c, _ in references if c.key not in {x.key for x in candidates}]],
                             runner, rounds=rounds, passes=passes, warmup=warmup, seed=seed, jobs=jobs,
                             precision=table.dtype, time_cap_s=time_cap_s,
                             progress=progress, anchors=anchors,
                             anchor_levels_ms=levels, journal_dir=journal_dir, budget_s=budget_s,
                             reference_ms={c.key: ms for c, ms in references})
    rate = macs_rate(table)
    rows = []
    for c in candidates:
        measured_ms = timings.mean(c.key)
        e = est.estimate(c)
        macs = c.macs()
        noise = timings.noise(c.key)
        typical = timings.typical_mean(c.key)
        rows.append({"name": c.name, "params": c.params(), "macs": macs, "measured_ms": measured_ms,
                     # aligned with the passes; None where an extra pass did not measure it
                     "pass_ms": [p.get(c.key) for p in timings.passes],
                     "slow_pass_ms": timings.slow_passes(c.key), "passes_agree": timings.agrees(c.key),
                     "pass_noise_pct": None if noise is None else 100 * noise,
                     "latency_ms": e.latency_ms, "plain_sum_ms": e.plain_sum_ms,
                     "macs_ms": macs * rate, "error_pct": 100 * (e.latency_ms - measured_ms) / measured_ms,
                     "plain_sum_error_pct": 100 * (e.plain_sum_ms - measured_ms) / measured_ms,
                     "consensus": c.key not in timings.no_consensus,
                     "slow_period": c.key in timings.slow_period,
                     "typical_ms": e.typical_ms, "measured_typical_ms": typical,
                     "typical_error_pct": (None if typical is None or e.typical_ms is None
                                           else 100 * (e.typical_ms - typical) / typical),
                     "arch": None if c.arch is None else c.arch.compact()})
    measured = [r["measured_ms"] for r in rows]
    figures = accuracy_figures([r["latency_ms"] for r in rows], measured)
    baselines = {"plain_sum": accuracy_figures([r["plain_sum_ms"] for r in rows], measured),
                 "macs_proportional": accuracy_figures([r["macs_ms"] for r in rows], measured)}
    # The typical latency against what a benchmark tool would print (the mean of the passes'
    # per-round median runs); absent for tables without typical latencies.
    typed = [r for r in rows if r["typical_error_pct"] is not None]
    if typed and len(typed) == len(rows):
        figures["typical"] = accuracy_figures([r["typical_ms"] for r in rows], [r["measured_typical_ms"] for r in rows])
    noises = [r["pass_noise_pct"] for r in rows if r["pass_noise_pct"] is not None]
    noise_floor = {"passes": passes, "extra_passes": len(timings.passes) - timings.asked_passes,
                   "median_pct": statistics.median(noises), "max_pct": max(noises),
                   "within_noise": sum(abs(r["error_pct"]) <= max(r["pass_noise_pct"], 0.0) for r in rows) / len(rows),
                   "time_base_factors": timings.factors, "time_base": timings.time_base,
                   "reference_models": [c.name for c, _ in references] if timings.time_base == "models" else [],
                   "anchor_factors": timings.anchor_factors}
    for p, (f, fa) in enumerate(zip(timings.factors, timings.anchor_factors)):
        if timings.time_base == "models" and f and fa and abs(fa / f - 1) > ANCHOR_DISAGREEMENT:
            warnings.append(f"pass {p + 1}: the table's anchors read the device {abs(f / fa - 1):.0%} "
                            f"{'slower' if fa < f else 'faster'} than its whole models show; put on the table's time "
                            f"base by the models (x{f:.3f}, the anchors said x{fa:.3f})")
    slow = [r["name"] for r in rows if r["slow_pass_ms"] and r["passes_agree"]]
    if slow:
        warnings.append(f"{len(slow)} model(s) read more than {PASS_AGREEMENT:.0%} slower in a pass than in the others "
                        f"(a slow state of the device): their latency is the mean of the passes that agree with "
                        f"their fastest: {', '.join(slow[:4])}{' ...' if len(slow) > 4 else ''}")
    alone = [r["name"] for r in rows if not r["passes_agree"]]
    if alone:
        warnings.append(f"{len(alone)} model(s) had no two passes within {PASS_AGREEMENT:.0%} of each other's fastest, "
                        f"extra passes included: their fastest pass is taken (noise only slows), its figure is less "
                        f"reliable: {', '.join(alone[:4])}{' ...' if len(alone) > 4 else ''}")
    if timings.no_consensus:
        warnings.append(f"{len(timings.no_consensus)} model(s) never reached consensus between rounds "
                        f"(their figures are less reliable): {', '.join(timings.no_consensus[:4])}")
    if timings.slow_period:
        warnings.append(f"{len(timings.slow_period)} model(s) were measured only in slow periods of the device "
                        f"(their figures may read high): {', '.join(timings.slow_period[:4])}")
    drift = timings.drift
    if drift is not None and abs(drift) > 0.05:
        warnings.append(f"an anchor reading strayed {drift * 100:+.1f}% from its level during validation")
    uncal = [w for w in est.estimate(candidates[0]).warnings if "uncalibrated" in w] if candidates else []
    warnings += uncal
    return ValidationResult(table.label(), timings.device, rows, figures, baselines, noise_floor, drift,
                            time.perf_counter() - t0, warnings)
