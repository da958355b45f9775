"""Build latency lookup tables on a device, and derive them from their journal.

Flow: block configs (+ the empty models of the overhead model, + whole models for calibration)
-> one MeasuringSession (export, prepare, interleaved rounds until the rounds of every entry
agree, each measurement committed to the table's journal as it is taken) -> `derive_table`:
per entry the consensus of its rounds on the table's time base, a plausibility check across
entries of a kind, the overhead calibration fitted on the whole models -> blocks.csv, ops.csv,
models.csv, meta.json, written atomically.

Re-running a build measures only what the journal lacks, so a killed build resumes where it
stopped and a grown space costs only its new configurations.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import latbench
from latbench.blocks.candidates import Candidate
from latbench.blocks.configs import (
    AttnConfig,
    AttnDownConfig,
    BlockConfig,
    EmptyConfig,
    FFNConfig,
    config_from_fields,
    overhead_blocks,
)
from latbench.core.errors import UsageError
from latbench.core.progress import ProgressFn, no_progress
from latbench.measuring.consensus import ConsensusRule, Verdict
from latbench.measuring.journal import Journal, JournalRow
from latbench.measuring.measurement import SamplingPolicy, merge_measurements
from latbench.measuring.noise import HeatRule, MeasuringRules, journal_profile, within_ratio
from latbench.measuring.periods import (
    PeriodRule,
    confirmed_by_period,
    divided_at_changes_of_state,
    journal_slow_periods,
)
from latbench.measuring.session import MeasuringPlan, MeasuringSession, SessionResult, Target, round_values
from latbench.measuring.timebase import base_levels, session_factors
from latbench.tables.overhead import (
    SCALE_GROUPS,
    STRIDED_ATTENTION,
    WEIGHTS,
    OverheadModel,
    fit_scales,
    robust_fit,
    scaled,
)
from latbench.tables.plausibility import PlausibilityRule, check_trends, entry_of
from latbench.tables.table import (
    BLOCK_COLUMNS,
    FIELD_COLUMNS,
    MEASURED,
    MODEL_COLUMNS,
    OP_COLUMNS,
    LatencyTable,
    device_diff,
    op_rows,
)
from latbench.tables.transfer import predicted_rows

#: Calibration models a fit keeps at least, even when some were measured only in slow periods.
MIN_CALIBRATION_MODELS = 4
#: Rounds an implausible entry gets beyond the consensus minimum before it is flagged.
PLAUSIBILITY_EXTRA_ROUNDS = 2


@dataclass
class BuildSettings:
    rounds: int = 3  # rounds every entry gets; consensus may ask for more (up to consensus.max_rounds)
    warmup: int = 10
    runs: int | None = None  # None: adaptive sampling (CI target or time cap)
    profile: bool = True  # per-op breakdown (taken in round 0 only)
    anchor_every: int = 12
    seed: int = 0
    jobs: int = 2
    calibration_models: int = 8  # whole models measured end to end to fit the overhead model's scales
    precision: str | None = None
    # Per-measurement time caps: many short interleaved measurements beat one long one.
    block_time_cap_s: float = 1.5
    model_time_cap_s: float = 4.0
    warmup_time_s: float = 0.05
    min_time_s: float = 0.3
    min_separation_s: float = 2.0  # an entry's extra round waits this long after its previous one
    consensus: ConsensusRule = field(default_factory=ConsensusRule)
    plausibility: PlausibilityRule = field(default_factory=PlausibilityRule)
    periods: PeriodRule = field(default_factory=PeriodRule)
    #: Rules derived from the device's noise profile hold entries to this precision where the
    #: device allows (latbench.measuring.noise); None: the consensus rule as given.
    target_precision: float | None = 0.02
    probe_rounds: int = 2  # anchor rounds (per anchor) that profile the device before measuring
    budget_s: float | None = None  # device seconds after which no further wave starts
    cool_down: bool = True  # pause while the device is hot (reported throttling, anchors slowing)

    def policies(self) -> dict[str, SamplingPolicy]:
        def policy(cap: float) -> SamplingPolicy:
            if self.runs is not None:
                return SamplingPolicy.fixed(self.runs, self.warmup)
            return SamplingPolicy(warmup_runs=self.warmup, warmup_time_s=self.warmup_time_s, time_cap_s=cap,
                                  min_time_s=min(cap, self.min_time_s))

        return {"block": policy(self.block_time_cap_s), "anchor": policy(self.block_time_cap_s),
                "model": policy(self.model_time_cap_s)}

    def plan(self) -> MeasuringPlan:
        return MeasuringPlan(rounds=self.rounds, consensus=self.consensus, policies=self.policies(),
                             anchor_every=self.anchor_every, seed=self.seed, profile=self.profile,
                             min_separation_s=self.min_separation_s, periods=self.periods,
                             precision=self.target_precision, probe_rounds=self.probe_rounds,
                             budget_s=self.budget_s, heat=HeatRule() if self.cool_down else None)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("consensus", "plausibility", "periods")}
        return {**d, "consensus": self.consensus.to_dict(), "plausibility": self.plausibility.to_dict(),
                "periods": self.periods.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **changes: Any) -> BuildSettings:
        """The settings a table was built with (its meta.json / journal), with `changes`."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k not in ("consensus",
                                                                                              "plausibility", "periods")}
        if data.get("consensus"):
            known["consensus"] = ConsensusRule.from_dict(data["consensus"])
        if data.get("plausibility"):
            known["plausibility"] = PlausibilityRule(**{k: v for k, v in data["plausibility"].items()
                                                        if k in PlausibilityRule.__dataclass_fields__})
        if data.get("periods"):
            known["periods"] = PeriodRule(**{k: v for k, v in data["periods"].items()
                                             if k in PeriodRule.__dataclass_fields__})
        return cls(**{**known, **changes})


@dataclass
class BuildResult:
    table: LatencyTable
    measured: list[str] = field(default_factory=list)  # (key, round) pairs measured by this run, as "key#r"
    reused: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    session: SessionResult | None = None


def table_anchors(journal: Journal, resolution: int) -> list[BlockConfig]:
    """The table's anchors: measured alongside the entries in every session (build, resume,
    check, validate) to put sessions on one time base. Fixed once per table (kept in the
    journal). One anchor for each of the kinds that carry most of a model's time (an FFN, an
    attention mixer, an attention downsampling): the median of their session-to-session ratios is
    robust to one anchor's own noise (README, measuring notes)."""
    saved = journal.get_meta("anchors")
    if saved:
        return [config_from_fields(f) for f in saved]
    anchors = default_anchors(resolution)
    journal.set_meta("anchors", [a.fields() for a in anchors])
    return anchors


def default_anchors(resolution: int) -> list[BlockConfig]:
    """The anchors a new table gets (and a device probe measures)."""
    return [FFNConfig(resolution, 3, 96, 4), AttnConfig(resolution, 3, 96), AttnDownConfig(resolution, 96, 176)]


def session_recipe(runner: Any) -> dict[str, Any]:
    """The int8 recipe a measuring session's exports use on `runner`: the default one, as the
    device's artifact format records it."""
    from latbench.export.formats import EXPORT_FORMATS
    from latbench.export.quantize import QuantRecipe

    return EXPORT_FORMATS[getattr(runner, "artifact_format", "onnx")].quant_recipe(QuantRecipe())


def recipe_diff(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """The fields ("field: recorded -> current") in which the int8 recipe a table's rounds were
    taken with differs from `current` (an older latbench's default: its artifacts are other
    graphs); none when the table records no recipe."""
    if not recorded:
        return []
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}"
            for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)]


class TableBuilder:
    """Drives one build into `out_dir` on an open runner (or dispatcher)."""

    def __init__(self, runner, out_dir: str | Path, settings: BuildSettings, *, force: bool = False,
                 progress: ProgressFn | None = None):
        self.runner = runner
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.force = force
        self.progress = progress or no_progress
        # The artifacts' precision is part of what the table describes: a table of int8 artifacts
        # never takes fp32 rounds (and the other way round); `lut diff` shows it.
        self.precision = artifact_precision(runner, settings.precision)
        self.device = {**runner.describe(), "precision": self.precision}

    def _open_journal(self) -> Journal:
        # A table shared without its journal (tables/ is git-ignored) would be rederived from an
        # empty journal, i.e. replaced by only what this build measures.
        if not self.force and not (self.out_dir / "journal.sqlite").exists() and any(
                (self.out_dir / f).exists() for f in ("blocks.csv", "meta.json")):
            raise UsageError(f"{self.out_dir} holds a table without its journal.sqlite, so building there would "
                             f"replace it; build into a new directory with --out, or pass --force to start it over")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        journal = Journal(self.out_dir / "journal.sqlite")
        previous = journal.get_meta("device")
        if previous is not None and "precision" not in previous:  # a table from before precisions were recorded
            previous = {**previous, "precision": artifact_precision(self.runner, (journal.get_meta("settings") or {})
                                                                    .get("precision"))}
        if previous is not None and not self.force:
            diffs = device_diff(previous, self.device)
            if diffs:
                journal.close()
                raise UsageError(f"table {self.out_dir} was measured on another device or runtime "
                                 f"({'; '.join(diffs)}); pass --force to re-measure it or --out another directory")
        if self.precision == "int8":
            recipe = session_recipe(self.runner)
            diffs = recipe_diff(journal.get_meta("quantization"), recipe)
            if diffs and not self.force:
                journal.close()
                raise UsageError(f"table {self.out_dir} holds int8 rounds of another quantization recipe "
                                 f"({'; '.join(diffs)}); pass --force to re-measure it or --out another directory")
        journal.set_meta("device", self.device)
        journal.set_meta("device_id", getattr(self.runner, "device_id", None))
        if self.precision == "int8":
            journal.set_meta("quantization", recipe)
        if self.force or journal.get_meta("settings") is None:  # later: only once this build measures
            journal.set_meta("settings", self.settings.to_dict())
        return journal

    def build(self, configs: Sequence[BlockConfig], *, space=None, resolution: int | None = None,
              calibration: Sequence[Candidate] = ()) -> BuildResult:
        t_start = time.perf_counter()
        configs = list(dict.fromkeys(configs))
        r = resolution or configs[0].resolution
        items: dict[str, Any] = {c.key: c for c in configs}
        for e in overhead_blocks(configs):
            items.setdefault(e.key, e)
        e_in = EmptyConfig.for_shape(r, (1, 3, r, r))  # the model-input empty is needed by every estimate
        items.setdefault(e_in.key, e_in)
        return self.measure(items, calibration, space=space, resolution=r, t_start=t_start)

    def measure(self, items: dict[str, BlockConfig], calibration: Sequence[Candidate], *, space=None,
                resolution: int, t_start: float | None = None,
                prepare: Callable[[Journal], None] | None = None) -> BuildResult:
        """Measure exactly `items` (key -> block) and the `calibration` models into the table's
        journal, then derive and save the table. `prepare(journal)`: called once the journal is
        open and checked, before anything is measured (an adapted table records its plan there)."""
        t_start = time.perf_counter() if t_start is None else t_start
        r = resolution
        targets = [Target(k, c, "block") for k, c in items.items()]
        # Calibration models are measured in the same interleaved rounds as the blocks, so the
        # overhead fit compares the two under the same host conditions.
        targets += [Target(c.key, c, "model") for c in calibration]
        with self._open_journal() as journal:
            if prepare is not None:
                prepare(journal)
            if self.force:
                journal.forget([t.key for t in targets])
            if space is not None:
                journal.set_meta("space", {"name": space.name, "digest": space.digest(), "source": space.source,
                                           "definition": space.to_dict()})
            journal.set_meta("resolution", r)
            reused = sum(1 for k in journal.rounds_done("block") if k in items)
            anchors = [Target(a.key, a, "anchor") for a in table_anchors(journal, r)]
            rule = self.settings.consensus
            session = MeasuringSession(
                self.runner, self.settings.plan(), journal=journal, purpose="build", progress=self.progress,
                export_jobs=self.settings.jobs, precision=self.settings.precision,
                time_base=lambda j, s: session_factors(j, rule, current=s),
                recheck=lambda verdicts: implausible_keys(verdicts, items, self.settings))
            result = session.run(targets, anchors)
            if result.measured:  # a build that measured nothing leaves the recorded settings true
                journal.set_meta("settings", self.settings.to_dict())
            base_levels(journal, rule)  # fix the time base once the first session has finished
            journal.set_meta("sessions_report", (journal.get_meta("sessions_report") or [])
                             + ([{"session": result.session, **result.report}] if result.session else []))
            table = derive_table(journal, self.out_dir)
        timings = {**result.timings, "total_s": time.perf_counter() - t_start}
        table.meta["build_timings"] = timings
        if not self.force:
            _refuse_to_shrink(self.out_dir, len(table.blocks))
        table.save()
        return BuildResult(table, result.measured, reused, timings, result)


def artifact_precision(runner: Any, precision: str | None) -> str:
    """The precision a build's artifacts have: the one asked for, else the device format's default."""
    from latbench.export.common import DEFAULT_PRECISION

    return precision or DEFAULT_PRECISION.get(getattr(runner, "artifact_format", "onnx"), "fp32")


def _refuse_to_shrink(out_dir: Path, rows: int) -> None:
    """A build never writes fewer blocks than the table on disk holds unless forced."""
    try:
        on_disk = len(pd.read_csv(out_dir / "blocks.csv", usecols=["key"]))
    except (OSError, ValueError, pd.errors.ParserError):
        return  # no table there (or an unreadable one, which `lut repair` rederives)
    if on_disk > rows:
        raise UsageError(f"{out_dir}/blocks.csv holds {on_disk} blocks and this build would write {rows}; "
                         f"build into a new directory with --out, or pass --force to replace it")


def implausible_keys(verdicts: dict[str, Verdict], items: dict[str, Any], settings: BuildSettings) -> list[str]:
    """Entries far above the trend of their kind that may still get a few more rounds."""
    entries = [entry_of(k, items[k], v.value) for k, v in verdicts.items() if k in items and math.isfinite(v.value)]
    checks = check_trends(entries, settings.plausibility)
    bound = settings.consensus.min_rounds + PLAUSIBILITY_EXTRA_ROUNDS
    return [k for k, c in checks.items() if c.implausible and verdicts[k].rounds < bound]


# -- deriving a table from its journal ------------------------------------------------------------
def entry_stats(rows: Sequence[JournalRow], rule: ConsensusRule, factors: dict[str, float],
                verdict: Verdict | None = None, period_factor: float = 1.0) -> dict[str, Any]:
    """The table columns of one entry: the consensus latency on the table's time base (the fast
    state), the typical latency (that times the entry's median-to-fast ratio inside its rounds
    and the device's average state, `period_factor`), how its rounds agreed, and spread
    statistics of the pooled samples. `verdict`: one decided elsewhere (a period confirmation)."""
    ms = [r.measurement for r in rows]
    pooled = merge_measurements(ms)
    verdict = verdict or rule.decide(round_values(rows, rule, factors))
    raw = rule.decide([rule.round_value(m) for m in ms])
    stats = pooled.stats()
    within = within_ratio(ms)
    return {
        "latency_ms": verdict.value,
        "typical_ms": verdict.value * (within if math.isfinite(within) else 1.0) * period_factor,
        "_within": within if math.isfinite(within) else None,  # replaced by its kind's (_kind_typical)
        "raw_latency_ms": raw.value,
        "consensus": verdict.agreed,
        "agreement": verdict.agreement,
        "round_spread": verdict.spread,
        **stats,
        "rounds": len(ms),
        "session_ms": pooled.session_ms,
        "first_inference_ms": pooled.first_inference_ms,
        "measured_at": pooled.provenance.get("measured_at"),
        "warnings": "; ".join(pooled.warnings) or None,
    }


def derive_table(journal: Journal, out_dir: Path, consensus: ConsensusRule | None = None) -> LatencyTable:
    """The table as the journal says it is (no measuring): what a build, `lut check --fix` and
    `lut repair` write. `consensus` replays the journal under another rule (studies)."""
    settings = journal.get_meta("settings") or {}
    built = BuildSettings.from_dict(settings)
    derived = journal.get_meta("measuring_rules")
    rules = MeasuringRules.from_dict(derived) if derived and consensus is None else None
    rule, prule = consensus or (rules.consensus if rules else built.consensus), built.plausibility
    factors = session_factors(journal, rule)
    verdicts = decide_entries(journal, rule, factors, built.periods, bool(rules and rules.confirm_by_period))
    noise = journal_profile({**journal.rows("block"), **journal.rows("model")}, journal.anchors(),
                            floor_ms=rule.floor_ms, pauses=journal.get_meta("pauses") or [],
                            scheduled_rounds=rules.scheduled_rounds if rules else 0)
    # typical = fast x the entry's median/p2 inside its rounds x the device's typical state
    # (typical_factor over its median within-round ratio: the mean typical/fast of a round)
    period_factor = noise.typical_factor / noise.within_ratio if noise is not None else 1.0
    resolution = journal.get_meta("resolution")
    block_rows: list[dict[str, Any]] = []
    ops: list[dict[str, Any]] = []
    configs: dict[str, BlockConfig] = {}
    for key, rows in sorted(journal.rows("block").items()):
        fields = rows[0].fields
        config = config_from_fields(fields)
        configs[key] = config
        row = {"key": key, "kind": fields.get("kind"),
               **{c: config.fields().get(c) for c in FIELD_COLUMNS},
               "input_shape": "x".join(map(str, config.input_shape)) if config.input_shape else None,
               "params": None if config.kind == "model" else config.params(),
               "macs": None if config.kind == "model" else config.macs(),
               "content_hash": rows[-1].content_hash,
               **entry_stats(rows, rule, factors, verdicts.get(key), period_factor),
               "source": MEASURED, "uncertainty_pct": None}
        block_rows.append(row)
        profiled = next((r.measurement for r in rows if r.measurement.per_op), None)
        if profiled is not None:
            ops.extend(op_rows(key, profiled))
    slow = table_slow_periods(journal, rule, built.periods, factors)
    # Plausibility across entries of a kind: flag what stays far above its trend.
    checks = check_trends([entry_of(r["key"], configs[r["key"]], r["latency_ms"]) for r in block_rows
                           if math.isfinite(r["latency_ms"])], prule)
    _kind_typical(block_rows)
    for row in block_rows:
        c = checks.get(row["key"])
        row["trend_ratio"] = None if c is None else c.ratio
        flags = (([] if row["consensus"] else ["no-consensus"]) + (["implausible"] if c and c.implausible else [])
                 + (["slow-period"] if row["key"] in slow else []))
        row["flags"] = ",".join(flags) or None
    # An adapted table (latbench.tables.adapt): the entries not measured yet are predicted from
    # the source tables by the transfer model, fitted again on what is measured now.
    adapt = journal.get_meta("adapt")
    adapted = None
    if adapt:
        predicted, adapted = predicted_rows(adapt, block_rows)
        block_rows += predicted
    space_info = journal.get_meta("space")
    base = journal.get_meta("time_base")
    anchors = journal.get_meta("anchors") or []
    meta: dict[str, Any] = {
        "name": out_dir.name,
        "device_id": journal.get_meta("device_id"),
        "device": journal.get_meta("device") or {},
        # The artifacts' precision and, for int8, how they were quantized (latbench.export.quantize).
        "precision": (journal.get_meta("device") or {}).get("precision") or settings.get("precision"),
        "quantization": journal.get_meta("quantization"),
        "latbench_version": latbench.__version__,
        "space": space_info,
        "resolution": resolution,
        "settings": settings,
        "consensus": rule.to_dict(),
        "measuring_rules": derived,
        "noise_profile": None if noise is None else noise.to_dict(),
        "latencies": {"latency_ms": "fast state: the consensus of the fastest agreeing rounds",
                      "typical_ms": "typical: the fast state times the entry's median/p2 inside its rounds times "
                                    f"the device's average state ({period_factor:.4f}: the mean over rounds of round "
                                    "median / fast, over the median within-round ratio); what tools that print "
                                    "averages or medians over runs report"},
        "plausibility": prule.to_dict(),
        "periods": built.periods.to_dict(),
        "anchors": {"keys": [config_from_fields(f).key for f in anchors], "fields": anchors,
                    "levels_ms": (base or {}).get("levels"), "base_session": (base or {}).get("session")},
        "time_base": {"method": "per-session factor: median over anchors of base level / session level",
                      "sessions": {s: f for s, f in factors.items()}},
        "flagged": {r["key"]: r["flags"] for r in block_rows if r["flags"]},
        "created": journal.get_meta("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sessions": journal.get_meta("sessions_report") or [],
        **measured_by(journal),
        **({"adapt": adapted} if adapted is not None else {}),
    }
    if journal.get_meta("created") is None:
        journal.set_meta("created", meta["created"])
    table = LatencyTable(pd.DataFrame(block_rows, columns=BLOCK_COLUMNS), pd.DataFrame(ops, columns=OP_COLUMNS),
                         pd.DataFrame(columns=MODEL_COLUMNS), meta, out_dir)
    _calibrate(table, journal, rule, factors, resolution, slow, verdicts, period_factor,
               noise.within_ratio if noise is not None else 1.0)
    return table


def _kind_typical(rows: list[dict[str, Any]]) -> None:
    """Each entry's typical latency with the within-round ratio of its kind (the median over the
    kind's entries) instead of its own: one entry's few rounds say little about the shape of its
    run-time distribution, its kind's many rounds say it well."""
    by_kind: dict[Any, list[float]] = {}
    for r in rows:
        if r.get("_within") is not None and math.isfinite(r["_within"]):
            by_kind.setdefault(r["kind"], []).append(r["_within"])
    for r in rows:
        own = r.pop("_within", None)
        ratios = by_kind.get(r["kind"])
        if own and ratios and math.isfinite(r["typical_ms"]):
            r["typical_ms"] = r["typical_ms"] / own * statistics.median(ratios)


def decide_entries(journal: Journal, rule: ConsensusRule, factors: dict[str, float], prule: PeriodRule,
                   confirm_by_period: bool) -> dict[str, Verdict]:
    """The verdict on every entry and calibration model of a journal, as the session decided it:
    the consensus, and with `confirm_by_period` a single fastest round taken in a fast period."""
    rows = {**journal.rows("block"), **journal.rows("model")}
    values = {k: round_values(rs, rule, factors) for k, rs in rows.items()}
    verdicts = {k: rule.decide(v) for k, v in values.items()}
    if confirm_by_period:
        anchors = journal.anchors()
        verdicts.update(confirmed_by_period(rows, values, verdicts, anchors, rule, prule))
        verdicts.update(divided_at_changes_of_state(rows, values, verdicts, anchors, rule, prule))
    return verdicts


def table_slow_periods(journal: Journal, rule: ConsensusRule, prule: PeriodRule,
                       factors: dict[str, float]) -> dict[str, float]:
    """Entries and calibration models whose value was taken only in slow periods."""
    rows = {**journal.rows("block"), **journal.rows("model")}
    values = {k: round_values(rs, rule, factors) for k, rs in rows.items()}
    verdicts = {k: rule.decide(v) for k, v in values.items()}
    return journal_slow_periods(rows, values, verdicts, journal.anchors(), rule, prule)


def measured_by(journal: Journal) -> dict[str, Any]:
    """meta.json's `devices`: every device that measured rounds of the table, with how many, and for a
    pooled build (several devices, latbench.measuring.farm) its relative speed against the fastest of
    the pool, its host and throughput; and `pool`: the rule the pool was admitted by."""
    counts: dict[str, int] = {}
    for per in journal.device_counts().values():
        for dev, n in per.items():
            counts[dev or "?"] = counts.get(dev or "?", 0) + n
    pool = journal.get_meta("pool") or {}
    farm = (journal.get_meta("farm") or {}).get("devices") or {}
    devices = {}
    for dev, n in sorted(counts.items()):
        judged = (pool.get("devices") or {}).get(dev) or {}
        devices[dev] = {"rounds": n, "relative_speed": judged.get("relative_speed"),
                        "relative_latency": judged.get("relative_latency"),
                        "host": (pool.get("hosts") or {}).get(dev) or (farm.get(dev) or {}).get("host"),
                        "per_min": (farm.get(dev) or {}).get("per_min")}
    out: dict[str, Any] = {"devices": devices}
    if pool:
        out["pool"] = {k: pool.get(k) for k in ("tolerance", "fastest", "rule", "session")}
    return out


def _calibrate(table: LatencyTable, journal: Journal, rule: ConsensusRule, factors: dict[str, float],
               resolution: int | None, slow: dict[str, float] | None = None,
               verdicts: dict[str, Verdict] | None = None, period_factor: float = 1.0,
               device_within: float = 1.0) -> None:
    """Fit the overhead model's scale on the whole models measured end to end (models.csv); models
    measured only in slow periods are left out of the fit while at least MIN_CALIBRATION_MODELS remain."""
    slow = slow or {}
    table.meta["overhead"] = {"empty_models": True, "scale": 1.0, "scales": {g: 1.0 for g in SCALE_GROUPS},
                              "calibrated": False, "calibrated_on": []}
    model = OverheadModel(table.latency_ms())
    typical_model = OverheadModel(table.typical_ms())
    model_rows, parts, measured, fit_keys = [], [], [], []
    typical_parts, typical_measured = [], []
    model_rows_all = journal.rows("model")
    models = journal_profile(model_rows_all, [], precision=rule.tolerance, floor_ms=rule.floor_ms,
                             pauses=journal.get_meta("pauses") or [])
    # Whole models' typical/fast: their own within-round ratio (runs of tens of ms average out
    # in-round noise that blocks' runs do not) times the device's average state read from every
    # round of the build. The models' rounds alone span a minute or so of it: on the simulated
    # vm-bursts device their own factor put 47 % of subnets within 5 % of the typical latency, the
    # build's state 100 % (benchmarks/bench_noise.py, seed 0).
    models_factor = (models.within_ratio if models is not None else device_within) * period_factor
    for key, rows in sorted(model_rows_all.items()):
        fields = rows[0].fields
        stats = entry_stats(rows, rule, factors, (verdicts or {}).get(key), period_factor)
        # A whole model's typical latency: its fast value times models_factor (pooled over every
        # model: one model's few rounds scatter). On this VM the blocks' rounds read median/p2
        # 1.12, whole models' 1.05, and the typical estimate read 8.7 % high when models were
        # given the blocks' within-round ratio.
        stats["typical_ms"] = stats["latency_ms"] * models_factor
        cand = candidate_from_fields(fields, resolution or 224)
        row = {"name": fields.get("name", key), "key": key, "role": "calibration", **stats,
               "content_hash": rows[-1].content_hash, "arch": fields.get("arch")}
        if cand is not None:
            row["params"] = cand.params()
            row["macs"] = cand.macs()
            blocks = cand.blocks()
            if model.covers(blocks) and math.isfinite(stats["latency_ms"]):
                fit_keys.append(key)
                parts.append(model.parts(blocks))
                measured.append(stats["latency_ms"])
                typical_parts.append(typical_model.parts(blocks))
                typical_measured.append(stats["typical_ms"])
        flags = ([] if stats["consensus"] else ["no-consensus"]) + (["slow-period"] if key in slow else [])
        row["flags"] = ",".join(flags) or None
        model_rows.append(row)
    left_out = [k for k in fit_keys if k in slow]
    if left_out and len(fit_keys) - len(left_out) >= MIN_CALIBRATION_MODELS:
        keep = [i for i, k in enumerate(fit_keys) if k not in slow]
        fit_keys, parts, measured, typical_parts, typical_measured = _take(
            keep, fit_keys, parts, measured, typical_parts, typical_measured)
    else:
        left_out = []
    if parts:
        # Models measured in a slow state the consensus did not see leave the fit too.
        scales, kept = robust_fit(parts, measured, MIN_CALIBRATION_MODELS)
        slow_fit = [fit_keys[i] for i in range(len(fit_keys)) if i not in kept]
        left_out += slow_fit
        fit_keys, parts, measured, typical_parts, typical_measured = _take(
            kept, fit_keys, parts, measured, typical_parts, typical_measured)
        for row in model_rows:
            if row["key"] in slow_fit:
                row["flags"] = ",".join(filter(None, [row["flags"], "slow-outlier"]))
    table.models = pd.DataFrame(model_rows, columns=MODEL_COLUMNS)
    if parts:
        names = [r["name"] for r in model_rows if r["key"] in fit_keys]
        fitted = [scaled(scales, p) for p in parts]
        table.meta["overhead"] = {
            "empty_models": True, "scale": scales["rest"], "scales": scales, "calibrated": True,
            "method": "sum(block - empty(shape)) + empty(input), attention mixers and the rest each times a scale "
                      "fitted (non-negative relative least squares) on whole models measured end to end"
                      + (" (strided attention mixers a scale of their own, scales.strided_attention)"
                         if STRIDED_ATTENTION in scales else "")
                      + (", plus the cold-weights cost in ms per million parameters (scales.weights)"
                         if scales.get(WEIGHTS) else ""),
            "calibrated_on": names,
            "fit_errors_pct": [100 * (f / m - 1) for f, m in zip(fitted, measured)],
            "left_out": [r["name"] for r in model_rows if r["key"] in left_out],
            # The typical latency is calibrated the same way, on the models' typical latencies.
            "typical_scales": fit_scales(typical_parts, typical_measured),
        }


def _take(indices: Sequence[int], *columns: Sequence[Any]) -> tuple[list[Any], ...]:
    """The items at `indices` of each of several parallel lists."""
    return tuple([column[i] for i in indices] for column in columns)


def repair_table(path: str | Path) -> LatencyTable:
    """Rederive a table's CSVs and meta.json from its journal (after damage, or to move a table
    to this latbench's schema); measures nothing."""
    path = Path(path)
    journal_path = path / "journal.sqlite"
    if not journal_path.is_file():
        raise UsageError(f"{path} has no journal.sqlite to rederive the table from; rebuild it with "
                         f"`latbench lut build ... --force --out {path}`")
    with Journal(journal_path) as journal:
        if not journal.rows("block"):
            raise UsageError(f"the journal of {path} holds no measurements; build the table with `latbench lut build`")
        table = derive_table(journal, path)
    table.save()
    return table


def candidate_from_fields(fields: dict[str, Any], resolution: int) -> Candidate | None:
    """The Candidate a journal row of a whole model was measured for (inverse of Candidate.fields)."""
    from latbench.space import Arch

    if fields.get("arch"):
        arch = Arch.from_dict(fields["arch"], source="journal")
        return Candidate(arch.label(), arch.resolution, arch=arch)
    if fields.get("model_name"):
        return Candidate(fields["name"], resolution, model_name=fields["model_name"])
    return None


@dataclass
class TablePlan:
    """What one table build measures: the blocks, the calibration models, where it goes."""

    out: Path
    resolution: int
    configs: list[BlockConfig]
    calibration: list[Candidate]
    space: Any = None  # the SearchSpace the table is built for (None: a --model/--arch table)


def plan_tables(*, space: Any = None, models: Sequence[str] = (), archs: Sequence[str] = (),
                resolutions: Sequence[int] | None = None, out: str | Path | None = None, device_id: str = "cpu",
                calibrate: int = 8, seed: int = 0, reference: bool = True,
                precision: str | None = None) -> list[TablePlan]:
    """The tables a build makes: one per resolution, for a search space (every block it can
    produce, S0 plus random subnets as calibration, MobileNetV2-1.0 whole as the MES unit unless
    `reference` is off) and/or named models and arch files (their blocks; measured whole as
    calibration, so every table is calibrated). `space` None means no space table; then the
    default space only names the table directory; `precision` (a non-default artifact precision)
    names the default directory apart."""
    from latbench.blocks.candidates import resolve_candidates, sample_candidates
    from latbench.blocks.configs import space_blocks
    from latbench.space import SearchSpace
    from latbench.tables.table import REFERENCE_MODEL, default_table_dir

    if space is None and not models and not archs:
        raise UsageError("say what to measure: --space [FILE], --model NAME or --arch FILE")
    if calibrate < 0:
        raise UsageError(f"--calibrate must be >= 0, got {calibrate}")
    naming = space or SearchSpace.default()
    resolutions = list(resolutions or naming.resolutions)
    if out is not None and len(resolutions) > 1:
        raise UsageError("--out names one table; give one --resolution or drop --out")
    models = list(models)
    if space is not None and reference and REFERENCE_MODEL not in models:
        models.append(REFERENCE_MODEL)  # MES's default latency unit must come from the same table
    targets = resolve_candidates(models + list(archs)) if (models or archs) else []
    plans = []
    for r in resolutions:
        if space is not None:
            space.check_resolution(r)
            configs = space_blocks(space, r)
            calib = sample_candidates(space, r, calibrate, seed, purpose="calibration")
        else:
            configs, calib = [], []
        at_r = []
        for t in targets:
            if t.resolution != r:
                t = resolve_candidates([t.source if t.source != "registry" else t.name], r)[0]
            if space is not None and t.arch is not None:
                space.validate(t.arch)
            configs += [c for c in t.blocks() if c not in configs]
            at_r.append(t)
        if space is None:
            # Models that decompose into blocks, measured whole, tell how the block sum relates
            # to the model: they calibrate a --model/--arch table.
            calib = [t for t in at_r if t.arch is not None]
        path = Path(out) if out is not None else default_table_dir(device_id, naming.name, r, precision=precision)
        plans.append(TablePlan(path, r, configs, calib, space))
    return plans
