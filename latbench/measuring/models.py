"""Whole models measured end to end: validation, reports and profiles share this sampling.

`measure_models` runs one measuring session per pass over the candidates (interleaved rounds
until every model's rounds agree); with anchors and their levels on a table's time base, each
pass measures the anchors too and its results are put on that time base.

Passes must agree too. A model's rounds can agree within a pass and still all fall in one slow
state: validating `cpu --threads 2` on this project's 2-core VM, S0 and one subnet read 43 %
slower in one pass than in the other (10.6 against 6.9 ms, both passes on the time base within
2-4 %), and the mean of the two put a table that was within 1 % of the fast pass 21 % off. Noise
only slows, so a model's latency is the mean of its passes that agree with its fastest (within
PASS_AGREEMENT), and a model whose fastest reading no other pass confirms is measured again in up
to EXTRA_PASSES more passes (with the reference models, to put them on the time base); if none
does, its fastest pass is its latency.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latbench.blocks.candidates import Candidate
from latbench.core.errors import UsageError
from latbench.core.progress import ProgressFn, no_progress
from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.journal import Journal
from latbench.measuring.measurement import SamplingPolicy, percentile
from latbench.measuring.noise import SLOW_STATE
from latbench.measuring.session import (
    DEFAULT_POLICIES,
    MeasuringPlan,
    MeasuringSession,
    Target,
    as_dispatcher,
)
from latbench.measuring.timebase import anchor_levels, session_factor

#: Passes of a model within this much of its fastest agree; a slower one measured it in a slow state.
PASS_AGREEMENT = SLOW_STATE
#: Passes beyond those asked for, over the models whose passes do not agree yet, at most.
EXTRA_PASSES = 2


def agreeing(values: Sequence[float]) -> list[float]:
    """The fastest value and those within PASS_AGREEMENT of it. As with rounds (consensus.py),
    two slower passes that agree with each other above a faster one do not confirm each other:
    noise only slows, and the fastest stands alone until another pass comes near it."""
    fastest = min(values, default=None)
    return [] if fastest is None else sorted(v for v in values if v <= fastest * (1 + PASS_AGREEMENT))


def confirmed(values: Sequence[float]) -> bool:
    """Whether another of a model's pass values agrees with its fastest (see `agreeing`)."""
    return len(agreeing(values)) >= 2


def pass_values(passes: Sequence[Mapping[str, float]], key: str) -> list[float]:
    """One model's latency in each pass that measured it (extra passes measure only some)."""
    return [p[key] for p in passes if key in p]


@dataclass
class ModelTimings:
    """End-to-end latency per candidate key from one or more passes, each a measuring session."""

    passes: list[dict[str, float]]  # per pass: key -> consensus latency on the time base
    device: dict[str, Any]
    drift: float | None
    factors: list[float | None]  # per pass: the time-base factor applied (None: none)
    no_consensus: list[str] = field(default_factory=list)
    sessions: list[Any] = field(default_factory=list)
    slow_period: list[str] = field(default_factory=list)  # keys measured only in slow periods (in some pass)
    #: per pass: key -> the typical latency as a benchmark tool prints it (the mean over the key's
    #: rounds of each round's median run), on the time base
    typical_passes: list[dict[str, float]] = field(default_factory=list)
    #: per pass: the factor the anchors alone gave (None: none); `factors` holds what was applied
    anchor_factors: list[float | None] = field(default_factory=list)
    #: what put the passes on the time base: "models" (the reference models), "anchors" or None
    time_base: str | None = None
    #: the passes asked for; those beyond measured again only the models whose passes disagreed
    asked_passes: int = 1

    def typical_mean(self, key: str) -> float | None:
        values = [p[key] for p in self.typical_passes if key in p]
        return statistics.fmean(values) if values else None

    def values(self, key: str) -> list[float]:
        """One model's latency in each pass that measured it (extra passes measure only some)."""
        return pass_values(self.passes, key)

    def agreed(self, key: str) -> list[float]:
        """The model's pass values that agree with its fastest (the fastest alone if none do)."""
        return agreeing(self.values(key))

    def agrees(self, key: str) -> bool:
        """Whether another pass confirms the model's fastest latency (always with a single pass)."""
        values = self.values(key)
        return len(values) < 2 or confirmed(values)

    def mean(self, key: str) -> float:
        """The model's latency: the mean of its passes that agree with its fastest (see `agreeing`)."""
        return statistics.fmean(self.agreed(key))

    def noise(self, key: str) -> float | None:
        """Pass-to-pass spread of the passes the latency is the mean of (of all its passes where
        none agree): (max - min) / mean (None with one pass); slower passes are in slow_passes."""
        values = self.agreed(key) if self.agrees(key) else self.values(key)
        return (max(values) - min(values)) / statistics.fmean(values) if len(values) > 1 else None

    def slow_passes(self, key: str) -> list[float]:
        """The model's pass values left out of its latency: slower than its agreeing passes."""
        agreed = self.agreed(key)
        return [v for v in self.values(key) if v > max(agreed)]


def model_plan(rounds: int, runs: int | None, warmup: int, time_cap_s: float, seed: int,
               profile: bool = False) -> MeasuringPlan:
    """How whole models are sampled end to end (validation, reports, profiles)."""
    policy = (SamplingPolicy.fixed(runs, warmup) if runs is not None else
              SamplingPolicy(warmup_runs=warmup, warmup_time_s=0.1, time_cap_s=time_cap_s,
                             min_time_s=min(0.3, time_cap_s)))
    anchor = DEFAULT_POLICIES["anchor"] if runs is None else SamplingPolicy.fixed(runs, warmup)
    return MeasuringPlan(rounds=rounds, consensus=ConsensusRule.for_rounds(rounds),
                         policies={"model": policy, "block": policy, "anchor": anchor},
                         anchor_every=4, seed=seed, profile=profile)


def measure_models(candidates: Sequence[Candidate], runner, *, rounds: int = 3, passes: int = 1, warmup: int = 10,
                   runs: int | None = None, seed: int = 0, jobs: int = 1, precision: str | None = None,
                   time_cap_s: float = 4.0, progress: ProgressFn | None = None, anchors: Sequence[Any] = (),
                   anchor_levels_ms: dict[str, float] | None = None,
                   journal_dir: str | Path | None = None, budget_s: float | None = None,
                   reference_ms: Mapping[str, float] | None = None) -> ModelTimings:
    """Measure whole models end to end: `passes` measuring sessions one after the other, each
    interleaved rounds until every model's rounds agree.

    With `anchors` (BlockConfigs, e.g. a table's anchor blocks) and their `anchor_levels_ms` on a
    table's time base, every pass also measures the anchors and its results are put on that
    time base; without, results are taken as measured. With `reference_ms` (candidate key -> its
    latency on that time base, for at least MIN_REFERENCE_MODELS of the candidates: a table's
    calibration models measured again), a pass is put on the time base by those whole models
    instead (the median of reference / measured), the anchors' factor kept beside it. With
    `journal_dir`, pass p keeps its raw measurements in journal_dir/pass{p}.sqlite (else in memory).
    """
    if rounds < 1 or passes < 1:
        raise UsageError(f"measurement rounds and passes must be >= 1, got {rounds} and {passes}")
    progress = progress or no_progress
    plan = model_plan(rounds, runs, warmup, time_cap_s, seed)
    plan.budget_s = budget_s  # per pass: no new wave after it (the models keep what they have)
    targets = [Target(c.key, c, "model") for c in candidates]
    anchor_targets = [Target(a.key, a, "anchor") for a in anchors] if anchor_levels_ms else []
    out: list[dict[str, float]] = []
    factors: list[float | None] = []
    drifts: list[float] = []
    no_consensus: list[str] = []
    slow_period: list[str] = []
    sessions = []
    typical: list[dict[str, float]] = []
    anchor_factors: list[float | None] = []
    by_models = bool(reference_ms) and len({c.key for c in candidates} & set(reference_ms or {})) >= \
        MIN_REFERENCE_MODELS
    dispatcher = as_dispatcher(runner)
    references = [t for t in targets if t.key in (reference_ms or {})] if by_models else []
    p = 0
    while True:
        pass_targets = targets
        if p >= passes:
            # A model no pass measured has nothing to agree on; one measured once is measured again.
            unsettled = [t for t in targets if len(out) > 1 and (readings := pass_values(out, t.key))
                         and not confirmed(readings)]
            if not unsettled or p >= passes + EXTRA_PASSES:
                break
            pass_targets = unsettled + [t for t in references if t not in unsettled]
        applied: list[float | None] = [None]

        def time_base(journal, session, applied=applied):
            if not anchor_levels_ms or not session:
                return {}
            f = session_factor(anchor_levels(journal.anchors(session), plan.consensus), anchor_levels_ms)
            applied[0] = f
            return {session: f} if f else {}

        label = (f"pass {p + 1}/{passes}" if p < passes else
                 f"extra pass {p + 1 - passes}/{EXTRA_PASSES}: {len(unsettled)} model(s) whose passes disagree")

        def prog(phase, done, total, detail=None, label=label):
            progress(f"{phase} ({label})" if passes > 1 and phase != "export" else phase, done, total, detail)

        plan.seed = seed * 1000 + p
        journal = Journal(Path(journal_dir) / f"pass{p}.sqlite") if journal_dir else None
        session = MeasuringSession(dispatcher, plan, journal=journal, purpose=f"models-pass{p}", progress=prog,
                                   export_jobs=jobs, precision=precision, time_base=time_base)
        res = session.run(pass_targets, anchor_targets)
        sessions.append(res)
        # The anchors' factor is one number per session: taken back out, the same values as measured.
        values = {k: v.value / (applied[0] or 1.0) for k, v in res.verdicts.items()}
        chosen = applied[0]
        if by_models:
            chosen = reference_factor(values, reference_ms or {})
        values = {k: v * (chosen or 1.0) for k, v in values.items()}
        out.append(values)
        f = chosen or 1.0
        typical.append({k: f * statistics.fmean(percentile(sorted(r.measurement.samples_ms), 50.0) for r in rows)
                        for k, rows in res.rows.items() if rows and all(r.measurement.samples_ms for r in rows)})
        factors.append(chosen)
        anchor_factors.append(applied[0])
        no_consensus += [k for k in res.report.get("no_consensus", []) if k not in no_consensus]
        slow_period += [k for k in res.report.get("slow_period", []) if k not in slow_period]
        if res.report.get("max_drift") is not None:
            drifts.append(res.report["max_drift"])
        p += 1
    base = "models" if by_models else "anchors" if any(f is not None for f in anchor_factors) else None
    return ModelTimings(out, dispatcher.describe(), max(drifts, key=abs) if drifts else None, factors,
                        no_consensus, sessions, slow_period, typical, anchor_factors, base, min(passes, len(out)))


#: Whole models a pass needs in common with the reference to be put on its time base by them.
MIN_REFERENCE_MODELS = 2


def reference_factor(values: Mapping[str, float], reference_ms: Mapping[str, float]) -> float | None:
    """The median over reference models measured in a pass of reference / measured (None without)."""
    ratios = [reference_ms[k] / v for k, v in values.items() if k in reference_ms and v > 0 and reference_ms[k] > 0]
    return statistics.median(ratios) if ratios else None


def measure_candidates(candidates: Sequence[Candidate], runner: Any, *, rounds: int = 3, warmup: int = 10,
                       runs: int | None = None, seed: int = 0, precision: str | None = None,
                       progress: ProgressFn | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """End-to-end latency (ms) of each candidate on an open device runner, keyed by candidate name,
    and the device's provenance (one measuring session: interleaved rounds until they agree).
    `precision`: the artifacts' (None: the device's default)."""
    timings = measure_models(candidates, runner, rounds=rounds, warmup=warmup, runs=runs, seed=seed,
                             precision=precision, progress=progress)
    return {c.name: timings.passes[0][c.key] for c in candidates}, timings.device
