"""Check a latency table against end-to-end measurements of whole models on the device.

Random subnets of the table's space plus the published S0-L are exported, measured end to end
(interleaved, with a drift anchor) and compared with three estimates computed in the same run:
latbench's estimator, the plain sum of isolated block latencies (the usual lookup-table method),
and a MACs-proportional estimate.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from latbench.candidates import Candidate
from latbench.errors import UsageError
from latbench.estimator import LatencyEstimator
from latbench.space import NAMED_ARCHS, Arch, SearchSpace, named_arch
from latbench.tables import LatencyTable, rounds_stats


def table_space(table: LatencyTable) -> SearchSpace:
    space = (table.meta.get("space") or {}).get("definition")
    if not space:
        raise UsageError(f"table {table.label()} was not built for a search space; build it with --space")
    return SearchSpace.from_dict(space, source=f"{table.label()}/meta.json")


def validation_candidates(space: SearchSpace, resolution: int, n: int, seed: int,
                          named: bool = True) -> list[Candidate]:
    out = []
    if named:
        for name in NAMED_ARCHS:
            arch = named_arch(name, resolution)
            if space.contains(arch):
                out.append(Candidate(name, resolution, arch=arch))
    rng = random.Random(f"validate:{seed}")
    for i in range(n):
        a = space.sample(rng, resolution)
        out.append(Candidate(f"subnet-{seed}-{i}", resolution, arch=Arch(a.stages, resolution, f"subnet-{seed}-{i}")))
    return out


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
    table: str
    device: dict[str, Any]
    rows: list[dict[str, Any]]
    figures: dict[str, float]
    baselines: dict[str, dict[str, float]]
    drift: float | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.figures, "baselines": self.baselines, "models": self.rows, "table": self.table,
                "device": self.device, "anchor_drift": self.drift, "seconds": self.seconds,
                "warnings": self.warnings}


def macs_rate(table: LatencyTable) -> float:
    """ms per MAC for the MACs-proportional baseline, fitted on the table's own calibration models
    (or, without any, on its blocks)."""
    models = table.models.dropna(subset=["macs", "median_ms"]) if len(table.models) else table.models
    if len(models):
        return float(models["median_ms"].sum() / models["macs"].sum())
    from latbench.tables import row_config

    total_ms = total_macs = 0.0
    for row in table.blocks.to_dict("records"):
        if row["kind"] in ("empty", "model"):
            continue
        total_ms += row["median_ms"]
        total_macs += row_config(row).macs()
    return total_ms / total_macs


def table_anchor(table: LatencyTable) -> tuple[Any, float | None]:
    """The table's anchor block and its reference speed, if the table recorded them."""
    from latbench.blocks import config_from_fields

    info = table.meta.get("anchor") or {}
    if not info.get("reference_ms") or not info.get("fields"):
        return None, None
    return config_from_fields(info["fields"]), float(info["reference_ms"])


@dataclass
class ModelTimings:
    """End-to-end statistics per candidate key (median of round medians, see rounds_stats)."""

    stats: dict[str, dict[str, Any]]
    device: dict[str, Any]
    drift: float | None
    normalised: bool = False


def measure_models(candidates: Sequence[Candidate], runner, *, rounds: int = 3, warmup: int = 10,
                   runs: int | None = None, seed: int = 0, jobs: int = 1, precision: str | None = None,
                   time_cap_s: float = 4.0, progress: Callable[[str, int, int], None] | None = None,
                   show_export_progress: bool = False, anchor: Any = None,
                   anchor_reference_ms: float | None = None) -> ModelTimings:
    """Export and measure whole models end to end: interleaved, randomised rounds with a drift anchor.

    `anchor` (a BlockConfig, e.g. a table's anchor block) with `anchor_reference_ms` (its speed in
    the table) puts the results on the table's time base; without, a mid-sized candidate anchors
    drift detection only.
    """
    from device_runners.schedule import interleaved_measure
    from latbench.lut import export_for_runner, sampling_policy

    if rounds < 1:
        raise UsageError(f"measurement rounds must be >= 1, got {rounds}")
    progress = progress or (lambda phase, done, total: None)
    items = {c.key: c for c in candidates}
    to_export = list(items.values()) + ([anchor] if anchor is not None else [])
    arts = export_for_runner(to_export, runner.artifact_format, jobs, precision, show_export_progress)
    prepared = {}
    for i, k in enumerate(items):
        prepared[k] = runner.prepare(arts[k].path, arts[k].content_hash, label=k)
        progress("prepare models", i + 1, len(items))
    if anchor is not None:
        anchor_prepared = runner.prepare(arts[anchor.key].path, arts[anchor.key].content_hash, label=anchor.key)
    elif len(items) > 1:
        anchor_prepared = prepared[sorted(items, key=lambda k: items[k].macs())[len(items) // 2]]
    else:
        anchor_prepared = None
    samples: dict[str, list] = {k: [] for k in items}
    drifts = []
    anchor_ms = None
    with sampling_policy(runner, time_cap_s=time_cap_s, warmup_time_s=0.1):
        for rnd in range(rounds):
            run = interleaved_measure(runner, prepared, anchor=anchor_prepared, rounds=1, anchor_every=4,
                                      warmup=warmup, runs=runs, seed=seed * 1000 + rnd,
                                      on_progress=lambda d, t, k, rnd=rnd: progress("measure models",
                                                                                     rnd * t + d, rounds * t))
            for res in run:
                if res.is_anchor:
                    anchor_ms = res.measurement.median
                    continue
                res.measurement.provenance["anchor_ms"] = anchor_ms if anchor is not None else None
                samples[res.key].append(res.measurement)
            if run.report.max_drift is not None:
                drifts.append(run.report.max_drift)
    return ModelTimings({k: rounds_stats(ms, anchor_reference_ms) for k, ms in samples.items()},
                        runner.describe(), max(drifts, key=abs) if drifts else None,
                        anchor is not None and anchor_reference_ms is not None)


def validate_table(table: LatencyTable, runner, candidates: Sequence[Candidate], *, rounds: int = 3,
                   jobs: int = 2, warmup: int = 10, seed: int = 0,
                   progress: Callable[[str, int, int], None] | None = None,
                   show_export_progress: bool = True, time_cap_s: float = 4.0) -> ValidationResult:
    t0 = time.perf_counter()
    est = LatencyEstimator(table)
    for c in candidates:
        est.check_covered(c.name, c.blocks())
    warnings = [f"table provenance differs: {d}" for d in table.check_provenance(runner.describe())]
    anchor, reference = table_anchor(table)
    timings = measure_models(candidates, runner, rounds=rounds, warmup=warmup, seed=seed, jobs=jobs,
                             precision=table.meta.get("settings", {}).get("precision"), time_cap_s=time_cap_s,
                             progress=progress, show_export_progress=show_export_progress, anchor=anchor,
                             anchor_reference_ms=reference)
    rate = macs_rate(table)
    rows = []
    for c in candidates:
        stats = timings.stats[c.key]
        measured_ms = stats["median_ms"]
        e = est.estimate(c)
        macs = c.macs()
        rows.append({"name": c.name, "params": c.params(), "macs": macs, "measured_ms": measured_ms,
                     "measured_ci_rel": stats["ci_rel"], "latency_ms": e.latency_ms, "plain_sum_ms": e.plain_sum_ms,
                     "macs_ms": macs * rate, "error_pct": 100 * (e.latency_ms - measured_ms) / measured_ms,
                     "plain_sum_error_pct": 100 * (e.plain_sum_ms - measured_ms) / measured_ms,
                     "arch": None if c.arch is None else c.arch.compact()})
    measured = [r["measured_ms"] for r in rows]
    figures = accuracy_figures([r["latency_ms"] for r in rows], measured)
    baselines = {"plain_sum": accuracy_figures([r["plain_sum_ms"] for r in rows], measured),
                 "macs_proportional": accuracy_figures([r["macs_ms"] for r in rows], measured)}
    drift = timings.drift
    if drift is not None and abs(drift) > 0.03:
        how = ("measurements were normalised by the table's anchor" if timings.normalised
               else "figures are less reliable")
        warnings.append(f"device drifted {drift * 100:+.1f}% during validation (anchor); {how}")
    return ValidationResult(table.label(), timings.device, rows, figures, baselines, drift,
                            time.perf_counter() - t0, warnings)
