"""Slow periods: spans in which the whole device ran slower, for longer than a round.

Measured on a quiet 2-core VM (benchmarks/bench_lut.py, README measuring notes): the host
switches between a fast state and a slow one about 30-35 % slower (the same factor for blocks
and whole models), and the slow state held 60-76 % of a build's rounds, in spans of several
rounds. Two rounds of an entry taken in one slow span agree with each other, so a consensus of
rounds cannot see it when none of the entry's rounds fell in a fast span: 24 of 96 entries of an
"undisturbed" build were 8-35 % too slow that way, and so were calibration models.

The other entries measured around a round share its period. So for each round an entry's value
rests on, the *period ratio* is the median, over the measurements nearest in time (other entries'
rounds and anchor readings on the same device), of each one's round value over its own accepted
value. When every round behind an entry's value has a period ratio above 1 + `threshold`, the
value was taken only in slow spans: the entry gets more rounds, later, and is flagged
`slow-period` if it still has no round from an ordinary span when its rounds run out. Replayed on
that build's journal, the rule (4 nearest within 10 s, 10 %) named 23 of the 24 wrong entries and
2 of the 72 right ones.

That view needs other entries measured in other states. A session of few entries (an adapt's
twenty: its waves last seconds) can take every round of every entry inside one slow spell; then
each round agrees with its neighbours and only the anchors, read on past the spell, show it: a
simulated vm-bursts device slow for the first 78 s of an 85 s adapt gave every measured entry
33 % high. Where a journal has at most `few_entries` entries, an entry is also named when, near
each of its member rounds, an anchor read more than `threshold` above its own fastest reading in
the session (`anchor_slow_keys`).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from latbench.core.errors import UsageError
from latbench.measuring.consensus import ConsensusRule, Verdict
from latbench.measuring.journal import AnchorRow, JournalRow
from latbench.measuring.timebase import anchor_levels


@dataclass(frozen=True)
class PeriodRule:
    neighbours: int = 4  # measurements nearest in time that say what period a round was in
    max_gap_s: float = 10.0  # ... at most this far away
    threshold: float = 0.10  # a period this much slower than usual is a slow period
    min_neighbours: int = 2  # fewer neighbours than this: the period is unknown (not slow)
    #: Journals of at most this many entries are also read by their anchors alone. Replayed on full
    #: builds (110 entries) the anchors' view named 85 and 49 entries of simulated vm-bursts builds
    #: (the neighbours' view 10 and 0), 22 of a Xeon-trace one, 12 and 24 of this VM's `cpu
    #: --threads 2` and litert int8 builds: there the neighbours' view does the work.
    few_entries: int = 40

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.min_neighbours < 1 or self.max_gap_s <= 0 or not 0 < self.threshold < 1:
            raise UsageError("slow-period rule needs neighbours >= 1, min_neighbours >= 1, max_gap_s > 0 and "
                             f"0 < threshold < 1 (got {self})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rule": (
            f"a value resting only on rounds whose {self.neighbours} nearest measurements (within "
            f"{self.max_gap_s:g} s, other entries and anchors) read over {self.threshold:.0%} above their own "
            f"accepted values was taken in a slow period: more rounds, later; then flagged slow-period; with at "
            f"most {self.few_entries} entries, also where the anchor readings nearest every such round read over "
            f"{self.threshold:.0%} above their fastest")}


@dataclass(frozen=True)
class Reading:
    """One measurement as the period check sees it: when, on which device, of what, and how it
    compares with what that key's rounds settled on (round value / accepted value)."""

    at: float
    device: str | None
    key: str
    ratio: float


def period_ratios(readings: Sequence[Reading], rule: PeriodRule) -> list[float | None]:
    """Per reading, the median ratio of its nearest other-key readings on the same device (None
    when fewer than rule.min_neighbours are within rule.max_gap_s)."""
    by_device: dict[str | None, list[Reading]] = {}
    for r in readings:
        by_device.setdefault(r.device, []).append(r)
    for rs in by_device.values():
        rs.sort(key=lambda r: r.at)
    times = {d: [r.at for r in rs] for d, rs in by_device.items()}
    out: list[float | None] = []
    for r in readings:
        rs, ts = by_device[r.device], times[r.device]
        i = bisect.bisect_left(ts, r.at)
        lo, hi = i - 1, i
        near: list[float] = []
        while len(near) < rule.neighbours and (lo >= 0 or hi < len(rs)):
            # Step to whichever side is nearer in time; skip the key's own rounds.
            take_lo = hi >= len(rs) or (lo >= 0 and r.at - ts[lo] <= ts[hi] - r.at)
            j = lo if take_lo else hi
            if take_lo:
                lo -= 1
            else:
                hi += 1
            if abs(ts[j] - r.at) > rule.max_gap_s:
                if take_lo:
                    lo = -1
                else:
                    hi = len(rs)
                continue
            if rs[j].key != r.key:
                near.append(rs[j].ratio)
        out.append(statistics.median(near) if len(near) >= rule.min_neighbours else None)
    return out


def slow_period_keys(rounds: Mapping[str, Sequence[Reading]], members: Mapping[str, Sequence[int]],
                     rule: PeriodRule, extra: Sequence[Reading] = ()) -> dict[str, float]:
    """Keys whose accepted value rests only on rounds taken in slow periods, with the lowest
    period ratio among those rounds. `rounds`: key -> its readings, in round order; `members`:
    key -> indices of the rounds its value comes from; `extra`: other readings (anchors)."""
    flat = [r for rs in rounds.values() for r in rs] + list(extra)
    ratios = dict(zip(map(id, flat), period_ratios(flat, rule)))
    # Neighbours only: adding the anchors' own view (the slower of the two) caught more slow-state
    # entries on simulated devices, but on the development VM it named 95 of 110 entries and ran
    # them all to the round bound (714 rounds for 417); the anchors serve period confirmation.
    out: dict[str, float] = {}
    for key, idx in members.items():
        rs = rounds.get(key) or []
        known = [ratios[id(rs[i])] for i in idx if i < len(rs)]
        if not known or any(p is None for p in known):
            continue  # a round of unknown period may be an ordinary one
        lowest = min(p for p in known if p is not None)
        if lowest > 1 + rule.threshold:
            out[key] = lowest
    return out


def journal_slow_periods(rows: Mapping[str, Sequence[JournalRow]], values: Mapping[str, Sequence[float]],
                         verdicts: Mapping[str, Verdict], anchors: Sequence[AnchorRow], consensus: ConsensusRule,
                         rule: PeriodRule) -> dict[str, float]:
    """slow_period_keys for journal rows (key -> rounds), their round values on the time base and
    verdicts, with the anchor readings as further neighbours, each against its level in its session."""
    readings, members, extra = _journal_readings(rows, values, verdicts, anchors, consensus)
    named = slow_period_keys(readings, members, rule, extra)
    if len(rows) <= rule.few_entries:
        named = {**anchor_slow_keys(rows, members, anchors, consensus, rule), **named}
    return named


def anchor_slow_keys(rows: Mapping[str, Sequence[JournalRow]], members: Mapping[str, Sequence[int]],
                     anchors: Sequence[AnchorRow], consensus: ConsensusRule, rule: PeriodRule) -> dict[str, float]:
    """Keys whose every member round was taken while the anchors read slow: for each round, the
    reading of each anchor nearest it (within rule.max_gap_s, at least rule.min_neighbours anchors)
    over that anchor's fastest reading in its session on its device, the largest of those more
    than rule.threshold above 1. The fastest reading, not the anchor's level: an anchor read only
    in the slow spell agrees with itself there (a ratio of 1 that says nothing), and slowdown-only
    noise leaves the fastest reading the least disturbed; hence the largest, not the median (on a
    simulated vm-bursts adapt whose anchors but one never left the spell, the median named 1 of
    19 slow entries, the largest all 19). A burst in one reading names an entry only where one
    lies near each of its member rounds. Values: the lowest such ratio among the member rounds."""
    read = [(a, v) for a in anchors if math.isfinite(v := consensus.round_value(a.measurement)) and v > 0]
    fastest: dict[tuple[str, str | None, str], float] = {}
    for a, v in read:
        k = (a.session, a.device, a.key)
        fastest[k] = min(fastest.get(k, math.inf), v)
    lines: dict[str | None, list[tuple[float, str, float]]] = {}
    for a, v in read:
        lines.setdefault(a.device, []).append((a.measured_at, a.key, v / fastest[(a.session, a.device, a.key)]))
    for line in lines.values():
        line.sort()
    out: dict[str, float] = {}
    for key, idx in members.items():
        rs = rows.get(key) or []
        ratios = [_anchors_nearest(lines.get(rs[i].device) or [], rs[i].measured_at, rule) for i in idx if i < len(rs)]
        if ratios and all(q is not None and q > 1 + rule.threshold for q in ratios):
            out[key] = min(q for q in ratios if q is not None)
    return out


def _anchors_nearest(line: Sequence[tuple[float, str, float]], at: float, rule: PeriodRule) -> float | None:
    """The largest over anchors of the ratio of each one's reading nearest `at` (within
    rule.max_gap_s); None with fewer than rule.min_neighbours anchors."""
    i = bisect.bisect_left(line, (at,))
    nearest: dict[str, tuple[float, float]] = {}
    for side in (range(i - 1, -1, -1), range(i, len(line))):
        for j in side:
            t, key, ratio = line[j]
            gap = abs(t - at)
            if gap > rule.max_gap_s:
                break
            if key not in nearest or gap < nearest[key][0]:
                nearest[key] = (gap, ratio)
    if len(nearest) < rule.min_neighbours:
        return None
    return max(r for _, r in nearest.values())


def confirmed_by_period(rows: Mapping[str, Sequence[JournalRow]], values: Mapping[str, Sequence[float]],
                        verdicts: Mapping[str, Verdict], anchors: Sequence[AnchorRow], consensus: ConsensusRule,
                        rule: PeriodRule) -> dict[str, Verdict]:
    """Entries without a quorum whose fastest round, taken while the anchors around it read the
    device in its fast state, is confirmed by another round taken in a slow state once that
    round is divided by how slow the anchors around it read.

    On a device that spends most of its time in a slow state (the Xeon VM's rounds: a sixth fast)
    a quorum of fast rounds costs many rounds, but its slow state slows every entry alike: a slow
    round over the anchors' slowdown at its time is a second measurement of the fast value. The
    fastest round must itself sit between fast anchor readings, so two slow rounds never confirm
    each other, and the value is the fastest round as measured (nothing normalised is stored).
    Where the anchors explain the device (`anchors_explain`), an entry without a fast round is
    also decided by NORMALISED_QUORUM rounds taken in steady slow states that agree over the
    anchors' slowdown (seeds 0 / 1 / 2 of the simulated vm-bursts build: 2.12 / 1.71 / 1.39x the
    quiet build's time before, 1.98 / 1.56 / 1.40x after; entries within 3 % 99 / 97 / 99 % before,
    95 / 97 / 98 % after)."""
    pending = {k: v for k, v in verdicts.items() if not v.agreed and v.rounds >= consensus.min_rounds}
    agreed = {k: v for k, v in verdicts.items() if v.agreed and v.rounds >= consensus.min_rounds}
    if not pending and not agreed:
        return {}
    timelines = _anchor_timelines(_anchor_readings(anchors, consensus))
    fast_bound = 1 + 1.5 * consensus.tolerance
    out: dict[str, Verdict] = {}
    explain = anchors_explain(rows, values, timelines, rule)
    explained = explain <= ANCHORS_EXPLAIN
    unexplained = math.isfinite(explain) and not explained
    for key, v in agreed.items() if explained else ():
        # A consensus of rounds that all fell in one slow state (they agree with each other: the
        # simulated vm-bursts device's slow state is a steady +30 %) is the slow state's value.
        # When the anchors read every member round slow, the rounds over the anchors' slowdown
        # at their times say where the fast state is; the lower value stands.
        rs, vals = rows.get(key) or [], values.get(key) or []
        if len(rs) != len(vals):
            continue
        # Only readings on both sides of a round that agree say what state it was in (a round
        # between a fast and a slow reading may be in either: taken as slow, such rounds made
        # simulated entries 10 % too fast).
        # A member round of unknown state agrees with the others, so it shares their state: a
        # quorum of members read steadily slow (and none fast) is enough.
        ratios = [_steady_ratio(timelines.get(r.device) or [], r.measured_at, rule, consensus.tolerance) for r in rs]
        known = [ratios[i] for i in v.members if ratios[i] is not None]
        if len(known) < consensus.quorum or any(q <= fast_bound for q in known):
            continue
        normalised = [x / q for x, q in zip(vals, ratios) if q and math.isfinite(x) and x > 0]
        if len(normalised) >= consensus.min_rounds:
            value = statistics.median(normalised)
            if value < v.value * (1 - consensus.tolerance):
                out[key] = Verdict(value, True, v.members, v.rounds, v.spread, False)
    for key, v in pending.items():
        rs, vals = rows.get(key) or [], values.get(key) or []
        finite = [(x, i) for i, x in enumerate(vals) if math.isfinite(x) and x > 0]
        if not finite or len(rs) != len(vals):
            continue
        fastest, i = min(finite)
        line = timelines.get(rs[i].device) or []
        in_fast_state = _anchors_fast(line, rs[i].measured_at, rule, fast_bound)
        for x, j in finite if in_fast_state else ():
            if j == i:
                continue
            slow = _anchor_ratio(timelines.get(rs[j].device) or [], rs[j].measured_at, rule)
            if slow is None or slow <= fast_bound:
                continue  # a round in a fast state already had its say in the consensus
            if abs(x / slow / fastest - 1) <= consensus.tolerance:
                out[key] = Verdict(fastest, True, tuple(sorted((i, j))), v.rounds, x / slow / fastest - 1, False)
                break
        if key not in out and explained:
            # A quorum of rounds taken while the anchors around each read the device steadily
            # slow: over the anchors' slowdown at their times they agree on the fast value, so
            # waiting for a fast round of the entry itself only costs rounds (on the simulated
            # vm-bursts device a fifth of rounds are fast, and such entries ran to the bound).
            normalised = sorted(x / q for x, j in finite
                                if (q := _steady_ratio(timelines.get(rs[j].device) or [], rs[j].measured_at,
                                                       rule, consensus.tolerance)) and q > fast_bound)
            if len(normalised) >= NORMALISED_QUORUM:
                lowest = normalised[:NORMALISED_QUORUM]
                if lowest[-1] <= lowest[0] * (1 + consensus.tolerance):
                    value = min(fastest, statistics.median(lowest))
                    out[key] = Verdict(value, True, (i,), v.rounds, lowest[-1] / lowest[0] - 1, False)
        if key not in out and not v.needs_more and not unexplained:
            # Rounds exhausted without agreement (flagged no-consensus): its fastest round may
            # itself be slow if the device was slow whenever the entry was measured. Each round
            # over the anchors' slowdown at its time estimates the fast value too; the lower of
            # the two stands (noise only slows, so neither is too fast but by the anchors' noise).
            # Not where the anchors are known not to explain the device: on the Xeon VM trace that
            # made flagged entries 4-8 % too fast.
            normalised = [x / r for x, j in finite
                          if (r := _anchor_ratio(timelines.get(rs[j].device) or [], rs[j].measured_at, rule))]
            if len(normalised) >= consensus.quorum:
                value = min(fastest, statistics.median(normalised))
                out[key] = Verdict(value, False, (i,), v.rounds, v.spread, False)
    return out


def divided_at_changes_of_state(rows: Mapping[str, Sequence[JournalRow]], values: Mapping[str, Sequence[float]],
                                verdicts: Mapping[str, Verdict], anchors: Sequence[AnchorRow],
                                consensus: ConsensusRule, rule: PeriodRule) -> dict[str, Verdict]:
    """Agreed entries whose agreeing rounds fell at changes of state (the anchor readings on
    their two sides disagree, so the state is unknown) and whose rounds taken in a steady slow
    state, over the anchors' slowdown, put the fast value a slow period's worth (rule.threshold)
    below the consensus: the consensus is the slow state's, and the median of those rounds stands.
    Needs at least a quorum of such rounds (agreeing within the tolerance when only a quorum), and
    a device whose anchors explain its scatter (simulated vm-bursts: an entry whose eight rounds
    all fell in 10-50 s slow spans stayed +32 %).

    For a table's derivation only: in a running session the entry stays named slow-period and
    gets its later rounds (a fast one may still come); taken there, the lower value read the
    entry's rounds as slow neighbours of the others', named more of them and lengthened simulated
    builds (vm-bursts seed 3: 1.71 -> 1.99x)."""
    agreed = {k: v for k, v in verdicts.items() if v.agreed and v.rounds >= consensus.min_rounds}
    if not agreed:
        return {}
    timelines = _anchor_timelines(_anchor_readings(anchors, consensus))
    if anchors_explain(rows, values, timelines, rule) > ANCHORS_EXPLAIN:
        return {}
    fast_bound = 1 + 1.5 * consensus.tolerance
    out: dict[str, Verdict] = {}
    for key, v in agreed.items():
        rs, vals = rows.get(key) or [], values.get(key) or []
        if len(rs) != len(vals):
            continue
        ratios = [_steady_ratio(timelines.get(r.device) or [], r.measured_at, rule, consensus.tolerance) for r in rs]
        known = [ratios[i] for i in v.members if ratios[i] is not None]
        if len(known) >= consensus.quorum or any(q <= fast_bound for q in known):
            continue  # enough members of known state: confirmed_by_period's case
        slow = sorted(x / q for x, q in zip(vals, ratios) if q and q > fast_bound and math.isfinite(x) and x > 0)
        if len(slow) < consensus.quorum or (len(slow) == consensus.quorum
                                            and slow[-1] > slow[0] * (1 + consensus.tolerance)):
            continue
        value = statistics.median(slow)
        if value < v.value * (1 - rule.threshold):
            out[key] = Verdict(value, True, v.members, v.rounds, v.spread, False)
    return out


#: Rounds taken in a steady slow state that must agree, over the anchors' slowdown, before they
#: stand for an entry's fast value without a fast round of its own.
NORMALISED_QUORUM = 3

#: The anchors' slowdown stands for an entry's only where dividing by it removes at least a
#: quarter of the scatter of entries' rounds (median over entries of the rounds' log standard
#: deviation, divided / raw). Measured: simulated vm-bursts (device-wide bursts) 0.59, the Xeon VM
#: trace 0.92 (its slow states are not shared: normalising made values 14-16 % too fast), the
#: development VM 1.05.
ANCHORS_EXPLAIN = 0.75


def anchors_explain(rows: Mapping[str, Sequence[JournalRow]], values: Mapping[str, Sequence[float]],
                    timelines: Mapping[str | None, Sequence[Reading]], rule: PeriodRule) -> float:
    """How much of the scatter of entries' rounds the anchors' slowdown at their times leaves
    (1: none explained; inf: too few entries with three rounds of known period to tell)."""
    raw, norm = [], []
    for key, rs in rows.items():
        vals = values.get(key) or []
        pairs = [(math.log(x), math.log(x / q)) for r, x in zip(rs, vals)
                 if math.isfinite(x) and x > 0
                 and (q := _anchor_ratio(timelines.get(r.device) or [], r.measured_at, rule))]
        if len(pairs) >= 3:
            raw.append(statistics.pstdev(p for p, _ in pairs))
            norm.append(statistics.pstdev(n for _, n in pairs))
    if len(raw) < 10 or statistics.median(raw) <= 0:
        return math.inf
    return statistics.median(norm) / statistics.median(raw)


def _anchor_timelines(extra: Sequence[Reading]) -> dict[str | None, list[Reading]]:
    by_device: dict[str | None, list[Reading]] = {}
    for r in sorted(extra, key=lambda r: r.at):
        if r.key.startswith("anchor:"):
            by_device.setdefault(r.device, []).append(r)
    return by_device


def _anchor_ratio(anchors: Sequence[Reading], at: float, rule: PeriodRule) -> float | None:
    """How slow the device read around `at`: the median of the anchor readings just before and
    just after it (within max_gap_s; None without any). On the simulated devices this caught more
    slow-state entries than requiring both readings slow (99 against 93 % of vm-bursts entries
    within 3 %); its cost is extra rounds where single anchor readings are noisy (rounds of a few
    runs)."""
    near = _near_anchors(anchors, at, rule)
    return statistics.median(near) if near else None


def _steady_ratio(anchors: Sequence[Reading], at: float, rule: PeriodRule, tolerance: float) -> float | None:
    """How slow the device read around `at` when the anchor readings just before and just after
    it (both, within max_gap_s) agree within 2 x `tolerance`: their mean; None otherwise."""
    near = _near_anchors(anchors, at, rule)
    if len(near) != 2 or max(near) > min(near) * (1 + 2 * tolerance):
        return None
    return statistics.fmean(near)


def _anchors_fast(anchors: Sequence[Reading], at: float, rule: PeriodRule, bound: float) -> bool:
    """Whether the anchor readings just before and just after `at` (both, within rule.max_gap_s)
    read within `bound` of their levels: the device was fast on both sides of the round."""
    near = _near_anchors(anchors, at, rule)
    return len(near) == 2 and all(ratio <= bound for ratio in near)


def _near_anchors(anchors: Sequence[Reading], at: float, rule: PeriodRule) -> list[float]:
    """The ratios of the anchor readings just before and just after `at` (in time order) that
    lie within rule.max_gap_s of it: none, one or two."""
    i = bisect.bisect_left([a.at for a in anchors], at)
    return [a.ratio for a in anchors[max(0, i - 1):i + 1] if abs(a.at - at) <= rule.max_gap_s]


def _journal_readings(rows: Mapping[str, Sequence[JournalRow]], values: Mapping[str, Sequence[float]],
                      verdicts: Mapping[str, Verdict], anchors: Sequence[AnchorRow],
                      consensus: ConsensusRule) -> tuple[dict[str, list[Reading]], dict[str, tuple[int, ...]],
                                                         list[Reading]]:
    readings: dict[str, list[Reading]] = {}
    members: dict[str, tuple[int, ...]] = {}
    for key, rs in rows.items():
        v = verdicts.get(key)
        if v is None or not rs or not math.isfinite(v.value) or v.value <= 0:
            continue
        readings[key] = [Reading(r.measured_at, r.device, key, x / v.value) for r, x in zip(rs, values[key])]
        members[key] = v.members
    return readings, members, _anchor_readings(anchors, consensus)


def _anchor_readings(anchors: Sequence[AnchorRow], consensus: ConsensusRule) -> list[Reading]:
    """Every anchor reading as its ratio to the anchor's level in its session (keys `anchor:...`)."""
    by_session: dict[tuple[str, str | None], list[Any]] = {}
    for a in anchors:
        by_session.setdefault((a.session, a.device), []).append(a)
    extra = []
    for group in by_session.values():
        levels = anchor_levels(group, consensus)
        extra += [Reading(a.measured_at, a.device, "anchor:" + a.key, consensus.round_value(a.measurement) / levels[a.key])
                  for a in group if levels.get(a.key)]
    return extra


def journal_anchors_explain(rows: Mapping[str, Sequence[JournalRow]], anchors: Sequence[AnchorRow],
                            consensus: ConsensusRule, rule: PeriodRule | None = None) -> float:
    """`anchors_explain` of a journal's entry rounds and anchor readings (round values as measured,
    without session factors: what a noise profile reads)."""
    values = {k: [consensus.round_value(r.measurement) for r in rs] for k, rs in rows.items()}
    timelines = _anchor_timelines(_anchor_readings(anchors, consensus))
    return anchors_explain(rows, values, timelines, rule or PeriodRule())
