"""The device's noise, measured, and the measuring rules that follow from it.

Rules tuned on one host fail on another: a 16-core Xeon VM spent its whole round budget without
ever meeting the 2 % tolerance chosen on a 2-core VM, because there whole rounds sat in a slow
state 20-60 % above the fast one for tens of seconds (../shared/MEASURING.md, finding 7). So a
measuring session first characterises the device from repeated anchor rounds (the *probe*),
refines that profile after every wave from all rounds it has, and derives its rules from it:

* tolerance: the stated precision (default 2 %) where the device's fast rounds agree that
  closely; otherwise the closest agreement it shows (twice the lower quartile of the entries'
  fastest-pair spreads), so no entry chases an agreement the device cannot give;
* rounds: the bound is the smallest number of rounds that gives 95 % of entries their quorum of
  fast rounds, given the share of rounds the device runs in its fast state;
* confirmation by period: where fast rounds are too rare for a quorum of two within that bound,
  a single fastest round is accepted when the measurements around it in time (other entries,
  anchors) show the device was in its fast state then (latbench.measuring.periods);
* spacing: an entry's extra round waits a quarter of a slow span (doubling with every further
  one), so they do not all fall in the same one; not where rounds are confirmed by their period
  (there the waiting cost a quarter of the build and bought nothing, see derive_rules);
* the typical latency: a round's median over its fast value, times how much slower than its fast
  state the device runs on average (the time-average of all rounds against their entries' fast
  values): what a user's benchmark tool prints on this device.

Heat is handled apart (HeatRule): a device that reports throttling, or whose anchors slow down
monotonically, is left idle until it reads normal again.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from latbench.core.errors import UsageError
from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.measurement import Measurement, percentile, relative_ci
from latbench.measuring.periods import ANCHORS_EXPLAIN, journal_anchors_explain

#: Marks (in Measurement.extra) an anchor read while an entry's next round waited for the device to
#: leave a slow state: such readings are taken more often the longer the device stays slow, so
#: the profile, which reads the device's average state from anchors at fixed intervals, skips them.
SPACING_POLL = "spacing_poll"
#: A reading this much above its key's fastest is in a slow state (profile statistics only).
SLOW_STATE = 0.10
#: Rounds an entry may get at most, whatever the profile says.
ROUND_CEILING = 12
#: Share of entries that must reach their quorum within the derived round bound.
COVERAGE = 0.95
#: A round should span this many slow stretches, and may be at most this much longer than planned.
STRETCHES_PER_ROUND = 1.5
MAX_ROUND_LENGTH = 3.0
#: Where rounds are the best of many (derive_rules), they sample this share of the plan's minimum
#: time, runs and warm-up, and stop there (no CI target): a fifth, so that on the simulated Xeon
#: trace 12 rounds an entry fit in 1.96-1.98x the quiet build's time.
BEST_OF_ROUND_LENGTH = 1 / 5
#: The CI target of a round's median (SamplingPolicy's default): rounds do not sample past their
#: minimum towards it ...
ROUND_CI_TARGET = 0.01
#: ... where more than this share of rounds missed it.
CI_MISSED_SHARE = 0.1
#: An entry's extra rounds wait at most this long for a slow span to pass (before doubling).
MAX_SEPARATION_S = 10.0
#: Rounds whose second-fastest lies within this many times the precision of the fastest (median
#: over entries) scatter evenly (not in two states): the tolerance widens to that scatter.
CONTINUOUS_SCATTER = 2.5
#: Below this share of fast runs in a round, its 2nd percentile is no longer a fast run.
MIN_FAST_RUNS = 0.05


@dataclass(frozen=True)
class Reading:
    """One round (an entry's or an anchor's) as the profile sees it."""

    at: float
    key: str
    measurement: Measurement
    anchor: bool = False


@dataclass(frozen=True)
class NoiseProfile:
    """How a device's timings scatter. Ratios are to each key's fastest round (its p2)."""

    readings: int  # rounds behind the profile (anchors and entries)
    keys: int  # keys with at least two rounds
    round_spread: float  # median over keys of slowest / fastest round - 1
    fast_agreement: float  # lower quartile over keys of the closest two first rounds' spread
    fast_share: float  # share of (non-fastest) rounds within the precision of their key's fastest
    within_ratio: float  # median over rounds of the round's median / its p2
    typical_factor: float  # mean over rounds of round median / key's fastest p2: typical vs fast state
    period_factor: float  # mean over rounds of round p2 / key's fastest p2: the device's average state
    slow_share: float  # share of runs more than SLOW_STATE above their key's fastest run
    slow_run: float  # mean length of slow stretches inside rounds, in samples
    slow_span_s: float  # mean length in time of runs of consecutive slow readings
    trend_per_min: float  # anchors' relative slowdown per minute (least squares; > 0 is slowing)
    throttling: bool | None = None  # the device's own report, when it gives one
    precision: float = 0.02  # the precision fast_share was counted against
    runs_per_round: float = 0.0  # median timed runs of a round
    second_gap: float = 0.0  # median over keys of the second-fastest of the first rounds / the fastest - 1
    #: 95 % relative uncertainty of typical_factor from how its readings scatter in time (0: unknown)
    typical_uncertainty: float = 0.0
    #: Scatter of entries' rounds left after dividing by the anchors' slowdown at their times, over
    #: the raw scatter (latbench.measuring.periods.anchors_explain; None: too few rounds to tell)
    anchors_explain: float | None = None
    #: share of rounds whose median's ~95 % CI is wider than ROUND_CI_TARGET (sampled to their time cap
    #: in vain)
    ci_missed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseProfile:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def summary(self) -> str:
        """One line for a terminal."""
        heat = {True: ", throttling reported", False: "", None: ""}[self.throttling]
        return (f"noise: rounds spread {self.round_spread:.1%} (fastest pair {self.fast_agreement:.1%}), "
                f"{self.fast_share:.0%} of rounds in the fast state, slow stretches {self.slow_share:.0%} of runs "
                f"(~{self.slow_run:.0f} runs long, slow spans ~{self.slow_span_s:.0f} s), typical/fast "
                f"{self.typical_factor:.3f}{self._typical_pm()}, trend {self.trend_per_min:+.1%}/min{heat} "
                f"[{self.readings} rounds]")

    def _typical_pm(self) -> str:
        return f" +-{self.typical_uncertainty:.1%}" if self.typical_uncertainty > 0 else ""


def p2(m: Measurement) -> float:
    return percentile(sorted(m.samples_ms), 2.0) if m.samples_ms else math.nan


def within_ratio(measurements: Sequence[Measurement]) -> float:
    """An entry's typical-to-fast ratio inside its rounds: the median over rounds of each round's
    median over its p2 (nan without samples)."""
    ratios = [percentile(sorted(m.samples_ms), 50.0) / p2(m) for m in measurements if m.samples_ms and p2(m) > 0]
    return statistics.median(ratios) if ratios else math.nan


def journal_profile(rows: Mapping[str, Sequence[Any]], anchors: Sequence[Any], *, precision: float = 0.02,
                    floor_ms: float = 0.0, throttling: bool | None = None,
                    pauses: Sequence[Mapping[str, Any]] = (), scheduled_rounds: int = 0) -> NoiseProfile | None:
    """The profile of everything a journal holds: entry rounds (key -> JournalRows) and anchor
    readings (AnchorRows), each anchor key apart per session (its level moves between sessions).
    Readings taken while the device was hot (`pauses`: from hot_from to the end of the pause) are
    left out: the profile describes the device in normal operation. `scheduled_rounds`: rounds every
    entry got by schedule, whatever its rounds said (the best-of rules: all of them; default the
    first FIRST_ROUNDS)."""
    hot = [(float(p.get("hot_from", p["at"])), float(p["at"]) + float(p["seconds"])) for p in pauses]

    def normal(at: float) -> bool:
        return not any(lo <= at <= hi for lo, hi in hot)

    kept = {k: [r for r in rs if normal(r.measured_at)] for k, rs in rows.items()}
    kept_anchors = [a for a in anchors if normal(a.measured_at)]
    readings = [Reading(r.measured_at, k, r.measurement) for k, rs in kept.items() for r in rs]
    readings += [Reading(a.measured_at, f"anchor:{a.key}@{a.session}", a.measurement, True) for a in kept_anchors
                 if not a.measurement.extra.get(SPACING_POLL)]
    profile = profile_of(readings, precision=precision, floor_ms=floor_ms, throttling=throttling,
                         scheduled_rounds=scheduled_rounds)
    if profile is None:
        return None
    explain = journal_anchors_explain(kept, kept_anchors, ConsensusRule(floor_ms=floor_ms))
    return replace(profile, anchors_explain=explain if math.isfinite(explain) else None)


#: The fast share is read from each key's first rounds only: later rounds of an entry are taken
#: because its first disagreed (a biased sample), and the fastest of many anchor readings is an
#: extreme no single round is expected to reach.
FIRST_ROUNDS = 3
#: A benchmark pass, in seconds of runs: the typical state is read from a round's consecutive
#: passes. A round longer than that (whole models: 1.5-4 s) straddles the device's state changes,
#: and its median drops the slower part, which has fewer runs: on the simulated big/little device
#: (1-4 s on a core 2.5x slower) the typical factor read 3.8-7.1 % low from round medians.
PASS_S = 0.25
#: A pass's median needs a few runs: a shorter tail joins the pass before it.
PASS_MIN_RUNS = 3


def pass_level(samples_ms: Sequence[float]) -> float:
    """A round's typical level: the time-weighted mean of the medians of its consecutive passes of
    PASS_S (in time order, as measured); the round's median where it is no longer than one."""
    passes: list[list[float]] = [[]]
    spent = 0.0
    for i, x in enumerate(samples_ms):
        passes[-1].append(x)
        spent += x
        if spent >= PASS_S * 1e3 and len(samples_ms) - i - 1 >= PASS_MIN_RUNS:
            passes.append([])
            spent = 0.0
    weights = [math.fsum(p) for p in passes]
    total = math.fsum(weights)
    if total <= 0:  # a timer too coarse for the runs: nothing to weigh by
        return percentile(sorted(samples_ms), 50.0)
    return math.fsum(w * percentile(sorted(p), 50.0) for w, p in zip(weights, passes)) / total


def profile_of(readings: Sequence[Reading], *, precision: float = 0.02, floor_ms: float = 0.0,
               throttling: bool | None = None, scheduled_rounds: int = 0) -> NoiseProfile | None:
    """The profile of a set of rounds (None when no key has two rounds). A round is fast when it
    lies within `precision` (or `floor_ms`) of its key's fastest first round."""
    by_key: dict[str, list[Reading]] = {}
    for r in readings:
        if r.measurement.samples_ms:
            by_key.setdefault(r.key, []).append(r)
    stat = {id(r): p2(r.measurement) for rs in by_key.values() for r in rs}  # each round's p2, sorted once
    fastest = {k: min(stat[id(r)] for r in rs) for k, rs in by_key.items() if len(rs) >= 2}
    fastest = {k: v for k, v in fastest.items() if v > 0 and math.isfinite(v)}
    if not fastest:
        return None
    spreads, pairs, others, within, states, gaps = [], [], [], [], [], []
    typical: list[tuple[float, float]] = []  # (time, round pass level / key's fastest p2)
    samples_slow, samples_all, runs = 0, 0, []
    for key, low in fastest.items():
        vals = sorted(stat[id(r)] for r in by_key[key])
        # Slow runs against the key's fastest runs (0.5th percentile of all its runs: a 2nd
        # percentile of one round can itself be a slow run; a lone lucky run is not the floor).
        floor = percentile(sorted(x for r in by_key[key] for x in r.measurement.samples_ms), 0.5)
        spreads.append(vals[-1] / vals[0] - 1)
        first = sorted(stat[id(r)] for r in sorted(by_key[key], key=lambda r: r.at)[:FIRST_ROUNDS])
        # The closest two first rounds: how well rounds in one state agree, whatever the state.
        pairs.append(min(b / a - 1 for a, b in zip(first, first[1:])))
        gaps.append(first[1] / first[0] - 1)
        others += [v <= first[0] * (1 + precision) or v - first[0] <= floor_ms for v in first[1:]]
        in_time = sorted(by_key[key], key=lambda r: r.at)
        for n, r in enumerate(in_time):
            s = r.measurement.samples_ms
            med = percentile(sorted(s), 50.0)
            within.append(med / stat[id(r)])
            # The device's average state from rounds taken when the schedule said, not because
            # they disagreed: an entry's first rounds, and every anchor reading (at fixed intervals).
            if n < max(FIRST_ROUNDS, scheduled_rounds) or by_key[key][0].anchor:
                typical.append((r.at, pass_level(s) / low))
                states.append(stat[id(r)] / low)
            slow = [x > floor * (1 + SLOW_STATE) for x in s]
            samples_slow += sum(slow)
            samples_all += len(slow)
            runs += _run_lengths(slow)
    # Slow spans in time: consecutive anchor readings above their fast level (anchors are read
    # at regular intervals and their levels rest on many readings; an entry whose own rounds
    # were all slow would read "fast" in a slow span). Without anchors, every reading.
    timeline = sorted((r.at, stat[id(r)] / fastest[r.key] - 1 > SLOW_STATE)
                      for k in fastest for r in by_key[k] if r.anchor)
    if len(timeline) < 3:
        timeline = sorted((r.at, stat[id(r)] / fastest[r.key] - 1 > SLOW_STATE)
                          for k in fastest for r in by_key[k])
    spans, start = [], None
    for at, slow in timeline:
        if slow and start is None:
            start = at
        elif not slow and start is not None:
            spans.append(at - start)
            start = None
    anchors = [(r.at, math.log(stat[id(r)] / fastest[r.key])) for k in fastest for r in by_key[k] if r.anchor]
    return NoiseProfile(
        readings=sum(len(by_key[k]) for k in fastest), keys=len(fastest),
        round_spread=statistics.median(spreads), fast_agreement=_quantile(pairs, 0.25),
        fast_share=sum(others) / len(others) if others else 1.0,
        within_ratio=statistics.median(within), typical_factor=statistics.fmean(v for _, v in typical),
        period_factor=statistics.fmean(states),
        slow_share=samples_slow / samples_all if samples_all else 0.0,
        slow_run=statistics.fmean(runs) if runs else 0.0,
        slow_span_s=statistics.fmean(spans) if spans else 0.0,
        trend_per_min=_slope_per_min(anchors), throttling=throttling, precision=precision,
        runs_per_round=statistics.median(len(r.measurement.samples_ms) for k in fastest for r in by_key[k]),
        second_gap=statistics.median(gaps), typical_uncertainty=typical_uncertainty(typical),
        ci_missed=statistics.fmean(relative_ci(r.measurement.samples_ms) > ROUND_CI_TARGET
                                   for k in fastest for r in by_key[k]))


#: The typical factor's uncertainty: its readings, in time order, fall into this many batches of
#: equal duration, and the batch means scatter as the device's slow states come and go. Readings
#: a few seconds apart share a state, so their own spread would claim far too much; batches as long
#: as a sixth of the build see whole slow spans (vm-bursts: 10-50 s, big/little: 1-4 s).
TYPICAL_BATCHES = 6
#: Student's t at 95 % (two-sided) by degrees of freedom: few batches, wide interval.
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def typical_uncertainty(points: Sequence[tuple[float, float]]) -> float:
    """95 % relative uncertainty of the mean of (time, ratio) readings by batch means over time
    (0 when there are too few readings or batches to say). A device whose average state a build
    cannot pin down (slow spans of tens of seconds, a quarter of the time on a little core) gets
    a wide one, and the build says so: no estimator sees the long-run average in a few minutes."""
    if len(points) < 2 * TYPICAL_BATCHES:
        return 0.0
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    if t1 <= t0:
        return 0.0
    width = (t1 - t0) / TYPICAL_BATCHES
    batches: dict[int, list[float]] = {}
    for t, v in points:
        batches.setdefault(min(int((t - t0) / width), TYPICAL_BATCHES - 1), []).append(v)
    means = [statistics.fmean(v) for v in batches.values()]
    if len(means) < 3:
        return 0.0
    se = statistics.stdev(means) / math.sqrt(len(means))
    return T_95[len(means) - 1] * se / statistics.fmean(v for _, v in points)


def _run_lengths(flags: Sequence[bool]) -> list[int]:
    out, n = [], 0
    for f in flags:
        if f:
            n += 1
        elif n:
            out.append(n)
            n = 0
    if n:
        out.append(n)
    return out


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return percentile(s, q * 100.0) if s else 0.0


#: A trend is only read from anchors spanning at least this long (a few seconds of readings
#: extrapolated to a minute would read noise as heat).
TREND_MIN_SPAN_S = 60.0


def _slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of log ratio against time, as a relative change per minute."""
    points = sorted(points)
    if len(points) < 3 or points[-1][0] - points[0][0] < TREND_MIN_SPAN_S:
        return 0.0
    t0 = points[0][0]
    xs = [(t - t0) / 60.0 for t, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var <= 0:
        return 0.0
    return math.expm1(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var)


# -- rules -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeasuringRules:
    """What a session applies: the consensus, whether a single fastest round confirmed by its
    period may stand for a quorum, and how far apart an entry's extra rounds are."""

    consensus: ConsensusRule
    confirm_by_period: bool = False
    min_separation_s: float = 2.0
    precision: float = 0.02  # what was asked for
    why: str = ""
    #: Rounds sample this many times longer than the plan's policies say (slow stretches inside
    #: rounds longer than a round can outlast).
    round_length: float = 1.0
    #: Whether rounds sample past their minimum towards the CI target of the median (False where
    #: more than CI_MISSED_SHARE of rounds ended at their time cap short of it: the extra samples
    #: bought nothing).
    extend_rounds: bool = True
    #: Rounds every entry gets by schedule, whatever its rounds say (the best-of rules; 0: only the
    #: plan's first rounds). A quorum among them still decides when a budget stops the build first.
    scheduled_rounds: int = 0
    #: Rounds of this rule's length that the caller's bound (rounds of the plan's length) leaves
    #: beyond the consensus' max_rounds: what a session may spend on entries it named slow-period
    #: (session.SLOW_EXTRA_ROUNDS) without measuring longer than the caller allowed. 0 where the
    #: rule takes the caller's bound whole (a quorum rule, rounds of a fixed number of runs).
    spare_rounds: int = 0

    @property
    def achievable(self) -> float:
        """The precision the device allows: the tolerance the rounds are held to."""
        return self.consensus.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"consensus": self.consensus.to_dict(), "confirm_by_period": self.confirm_by_period,
                "min_separation_s": round(self.min_separation_s, 3), "precision": self.precision,
                "achievable": self.achievable, "why": self.why, "round_length": round(self.round_length, 3),
                "extend_rounds": self.extend_rounds, "scheduled_rounds": self.scheduled_rounds,
                "spare_rounds": self.spare_rounds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeasuringRules:
        return cls(ConsensusRule.from_dict(data.get("consensus") or {}), bool(data.get("confirm_by_period")),
                   float(data.get("min_separation_s", 2.0)), float(data.get("precision", 0.02)),
                   str(data.get("why", "")), float(data.get("round_length", 1.0)),
                   bool(data.get("extend_rounds", True)), int(data.get("scheduled_rounds", 0)),
                   int(data.get("spare_rounds", 0)))


def rounds_for(share: float, quorum: int, coverage: float = COVERAGE) -> int:
    """Fewest rounds with which an entry gets `quorum` fast rounds with probability `coverage`,
    when each round is fast with probability `share` (a large number when it never does)."""
    share = min(max(share, 0.0), 1.0)
    if share <= 0:
        return 10**6
    for n in range(quorum, 200):
        miss = sum(math.comb(n, k) * share ** k * (1 - share) ** (n - k) for k in range(quorum))
        if 1 - miss >= coverage:
            return n
    return 10**6


def derive_rules(profile: NoiseProfile | None, precision: float, base: ConsensusRule,
                 base_separation_s: float = 2.0, short_rounds: bool = True) -> MeasuringRules:
    """The rules for a device with this profile, holding entries to `precision` where it can.
    `short_rounds`: whether rounds may be shortened (not with a fixed number of runs)."""
    if not 0 < precision < 0.5:
        raise UsageError(f"precision must be between 0 and 50 %, got {precision:.4g}")
    if profile is None:
        return MeasuringRules(replace(base, tolerance=precision), False, base_separation_s, precision,
                              "no profile yet: the stated precision")
    notes = []
    # Where the typical round ends at its time cap with its median still unsure (the Xeon VM trace:
    # runs alternate between two states 20-120 % apart in stretches of 10-30), sampling to the cap
    # only made rounds 2-3x longer (whole models 4 s against 1.7 s): rounds stop at their minimum.
    extend = profile.ci_missed <= CI_MISSED_SHARE
    if not extend:
        notes.append(f"{profile.ci_missed:.0%} of rounds short of their CI target: rounds stop at their minimum")
    # Fast rounds of one entry scatter by about the lower quartile of the fastest-pair spreads.
    achievable = min(0.10, max(precision, 2 * profile.fast_agreement))
    # Rounds that scatter evenly a little wider than the precision (the development VM on a busy
    # day: half the entries' two fastest of three rounds within 3 %, against 2 % asked) keep
    # the quorum at the scatter that half the entries meet in their first rounds: at 2 % most
    # entries ran to the round bound (552 rounds, 38 of 110 entries at 8, build unfinished at 7 min).
    continuous = precision < profile.second_gap <= CONTINUOUS_SCATTER * precision
    if continuous:
        achievable = max(achievable, profile.second_gap)
    if achievable > precision:
        notes.append(f"fast rounds agree only within {achievable:.1%}")
    share = profile.fast_share
    quorum = base.quorum
    needed = rounds_for(share, quorum)
    confirm = False
    if needed > base.max_rounds and not continuous:
        # A quorum of fast rounds would take too long: one fast round, confirmed by its period.
        confirm = True
        needed = rounds_for(share, 1)
        notes.append(f"{share:.0%} of rounds fast: one round confirmed by its period")
    # Where fast rounds are rare and the anchors do not explain the rounds' scatter (the Xeon VM
    # trace: its slow states are not the anchors'), nothing tells a fast round from a slow one,
    # and two slow rounds that happened to agree made 7 of 88 simulated entries 4-13 % too slow.
    # Such a device gets the best of many short rounds (BEST_OF_ROUND_LENGTH: scatter between rounds,
    # not within them, is what more samples would have to beat): every entry the rounds that give
    # 95 % of entries one fast round, the caller's bound counted in rounds of the plan's length.
    unexplained = profile.anchors_explain is not None and profile.anchors_explain > ANCHORS_EXPLAIN
    best_of = confirm and (unexplained or not extend)
    if best_of:
        length = BEST_OF_ROUND_LENGTH if short_rounds else 1.0
        k = int(min(ROUND_CEILING, base.max_rounds / length, max(base.min_rounds + 1, needed)))
        rule = replace(base, tolerance=achievable, max_rounds=max(k, base.min_rounds, base.quorum))
        notes[-1] = (f"{share:.0%} of rounds fast and the anchors do not explain the rest: the fastest of {k} "
                     + ("short rounds" if short_rounds else "rounds"))
        return MeasuringRules(rule, False, 0.0, precision, "; ".join(notes), length, False, k,
                              rounds_left(base.max_rounds, length, rule.max_rounds))
    # Where a quorum is within reach the bound stays as given (the rule chosen on the 2-core VM);
    # otherwise it is what 95 % of entries need for one confirmed fast round, plus one (never more
    # than the caller's bound).
    max_rounds = (base.max_rounds if not confirm
                  else int(min(base.max_rounds, ROUND_CEILING, max(base.min_rounds + 1, needed + 1))))
    # Spacing: where a quorum is within reach, an entry's extra round waits for a quarter of a slow
    # span. Where rounds are confirmed by their period the time stamps do that work, and waiting
    # only cost time: on the simulated vm-bursts and Xeon-trace devices, idle spacing took 25 % of
    # the build and left 89 / 86 % of entries within 3 % against 93 / 90 % without it.
    separation = 0.0 if confirm else min(MAX_SEPARATION_S, max(base_separation_s, profile.slow_span_s / 4))
    # A round must outlast a slow stretch several times over to see the fast state at all.
    length = 1.0
    if profile.runs_per_round > 0 and profile.slow_run * STRETCHES_PER_ROUND > profile.runs_per_round:
        length = min(MAX_ROUND_LENGTH, profile.slow_run * STRETCHES_PER_ROUND / profile.runs_per_round)
        notes.append(f"slow stretches of ~{profile.slow_run:.0f} runs: rounds {length:.1f}x longer")
    # Where fast runs are too few for the 2nd percentile to land on one, the fastest run is taken.
    statistic = base.statistic
    if profile.slow_share > 1 - MIN_FAST_RUNS and base.statistic not in ("min",):
        statistic = "min"
        notes.append(f"only {1 - profile.slow_share:.0%} of runs fast: per-round minimum")
    rule = replace(base, tolerance=achievable, max_rounds=max(max_rounds, base.min_rounds, base.quorum),
                   statistic=statistic)
    return MeasuringRules(rule, confirm, separation, precision,
                          "; ".join(notes) or f"device meets {precision:.1%} with a quorum of {quorum}", length,
                          extend, spare_rounds=rounds_left(base.max_rounds, length, rule.max_rounds))


def rounds_left(bound: int, length: float, taken: int) -> int:
    """Rounds `length` times the plan's that a bound of `bound` plan-length rounds leaves after `taken`."""
    return max(0, int(bound / length + 1e-9) - taken)


# -- heat --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeatRule:
    """When to stop and let the device cool: it reports throttling, or its anchors have read more
    than `threshold` above their levels in every reading (at least `readings` of them) for
    `span_s` or longer. A slow state that ends by itself (a busy neighbour, a frequency dip: on
    the simulated and measured hosts, tens of seconds) is not heat; a throttled device stays slow
    under load until it idles. It then idles in steps of `step_s` until an anchor reads within
    threshold / 2 (and no throttling is reported), at most `max_pause_s` per pause."""

    threshold: float = 0.15
    readings: int = 3
    span_s: float = 90.0
    step_s: float = 15.0
    max_pause_s: float = 300.0

    def __post_init__(self) -> None:
        if (not 0 < self.threshold < 1 or self.readings < 2 or self.span_s < 0 or self.step_s <= 0
                or self.max_pause_s < self.step_s):
            raise UsageError("heat rule needs 0 < threshold < 1, readings >= 2, span >= 0 and 0 < step <= max pause "
                             f"(got {self})")

    def trailing_slow(self, readings: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        """The last unbroken run of (time, anchor ratio) readings above the threshold, newest first."""
        slow = []
        for at, ratio in reversed(readings):
            if ratio <= 1 + self.threshold:
                break
            slow.append((at, ratio))
        return slow

    def longest_ended_slow(self, readings: Sequence[tuple[float, float]]) -> float:
        """The longest run of (time, anchor ratio) readings above the threshold that a reading at
        the level ended, in seconds from its first reading to its last (0 without one)."""
        longest, start, last = 0.0, None, None
        for at, ratio in readings:
            if ratio > 1 + self.threshold:
                start = at if start is None else start
                last = at
            elif start is not None and last is not None:
                longest, start = max(longest, last - start), None
        return longest

    def hot_since(self, readings: Sequence[tuple[float, float]], throttling: bool | None) -> float | None:
        """When the device became hot, from (time, anchor ratio) readings in order; None if it is not."""
        slow = [at for at, _ in self.trailing_slow(readings)]
        if len(slow) >= self.readings and slow[0] - slow[-1] >= self.span_s:
            return slow[-1]
        if throttling:
            return slow[-1] if slow else (readings[-1][0] if readings else 0.0)
        return None

    def cooled(self, ratio: float, throttling: bool | None) -> bool:
        return not throttling and ratio <= 1 + self.threshold / 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_precision(text: str | float) -> float:
    """'2%', '0.02' or 2 (percent when > 1) -> 0.02; UsageError otherwise."""
    raw = str(text).strip()
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise UsageError(f"--precision takes a percentage like 2% or 0.02, got {raw!r}") from None
    if raw.endswith("%") or value >= 1:
        value /= 100.0
    if not (math.isfinite(value) and 0 < value < 0.5):
        raise UsageError(f"--precision must be between 0 and 50 %, got {raw!r}")
    return value


def parse_duration(text: str | float) -> float:
    """'10m', '90s', '1.5h' or seconds -> seconds; UsageError otherwise."""
    raw = str(text).strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}
    unit = raw[-1:] if raw[-1:] in scale else "s"
    try:
        value = float(raw[:-1] if raw[-1:] in scale else raw) * scale[unit]
    except ValueError:
        raise UsageError(f"--budget takes a duration like 10m, 90s or 1h, got {raw!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"--budget must be a positive duration, got {raw!r}")
    return value
