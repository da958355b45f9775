"""Slow periods: a value taken only while the whole device was slow is re-measured (and flagged if it stays)."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
from scripted_device import ScriptedRunner

import latbench.measuring.session as session_module
from latbench.blocks.configs import AttnConfig, FFNConfig
from latbench.core.errors import UsageError
from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.journal import Journal
from latbench.measuring.periods import PeriodRule, Reading, period_ratios, slow_period_keys
from latbench.measuring.session import MeasuringPlan, MeasuringSession, Target

RULE = PeriodRule()


def readings(key: str, ratios: list[float], start: float = 0.0, step: float = 1.0, device: str = "d") -> list[Reading]:
    return [Reading(start + i * step, device, key, r) for i, r in enumerate(ratios)]


def test_period_ratio_is_the_median_of_the_nearest_other_keys_on_the_same_device():
    own = Reading(10.0, "d", "a", 1.0)
    others = [Reading(9.0, "d", "b", 1.3), Reading(11.0, "d", "c", 1.35), Reading(8.5, "d", "a", 1.0),
              Reading(12.0, "d", "e", 1.28), Reading(7.0, "d", "f", 1.0), Reading(30.0, "d", "g", 5.0),
              Reading(10.1, "other-device", "h", 9.0)]
    ratios = period_ratios([own, *others], RULE)
    # nearest four of other keys on device d: b (1 s), c (1 s), e (2 s), f (3 s); a's own round is skipped
    assert ratios[0] == pytest.approx((1.3 + 1.28) / 2)
    # g has no neighbour within 10 s; h none on its device
    assert ratios[6] is None and ratios[7] is None


def test_a_value_resting_only_on_slow_period_rounds_is_named():
    # Around t=0..2 the other keys read 30 % above their own values: a slow period.
    slow_env = readings("x", [1.3, 1.0, 1.31], start=-0.5) + readings("y", [1.32, 1.0, 1.3], start=0.5)
    rounds = {"k": readings("k", [1.0, 1.01, 1.0]), "x": slow_env[:3], "y": slow_env[3:]}
    named = slow_period_keys(rounds, {"k": (0, 2), "x": (1,), "y": (1,)}, RULE)
    assert set(named) == {"k"} and named["k"] > 1.1
    # The same value with one member round in an ordinary period is trusted.
    calm = {"k": rounds["k"], "x": readings("x", [1.0, 1.0, 1.0], start=-0.5), "y": rounds["y"]}
    assert slow_period_keys(calm, {"k": (0, 2)}, RULE) == {}
    # Without neighbours the period is unknown: not named.
    assert slow_period_keys({"k": rounds["k"]}, {"k": (0, 1, 2)}, RULE) == {}


def test_rule_is_checked_and_recorded():
    with pytest.raises(UsageError, match="slow-period rule"):
        PeriodRule(threshold=0)
    assert "slow period" in RULE.to_dict()["rule"] and RULE.to_dict()["neighbours"] == 4


BLOCKS = [FFNConfig(224, 3, 96, 2), FFNConfig(224, 3, 96, 3), FFNConfig(224, 4, 176, 4), AttnConfig(224, 4, 176),
          FFNConfig(224, 4, 176, 2), FFNConfig(224, 4, 176, 3)]
ANCHOR = FFNConfig(224, 3, 96, 4)
BASE = {c.key: 0.2 + 0.1 * i for i, c in enumerate(BLOCKS)} | {ANCHOR.key: 0.4}
KEY = BLOCKS[1].key


def run(periods: PeriodRule | None, slow_calls: set[int], tmp_path, name: str):
    runner = ScriptedRunner(BASE.__getitem__)
    runner.period_calls = slow_calls
    plan = MeasuringPlan(min_separation_s=0.0, anchor_every=2, seed=3, periods=periods)
    with Journal(tmp_path / f"{name}.sqlite") as journal:
        res = MeasuringSession(runner, plan, journal=journal, export_jobs=1).run(
            [Target.of(c, "block") for c in BLOCKS], [Target.of(ANCHOR, "anchor")])
    return runner, res


def test_a_block_measured_only_in_slow_periods_gets_rounds_until_an_ordinary_one(tmp_path):
    # Learn where the first wave puts KEY's three rounds (the order is fixed by the seed), then slow the
    # whole device around each of them: the calls from two before to two after.
    recorder, _ = run(None, set(), tmp_path, "order")
    wave0 = len(BLOCKS) * 3 + len(BLOCKS) * 3 // 2
    positions = [i for i, c in enumerate(recorder.calls[:wave0]) if c[0] == KEY][:3]
    slow = {i for p in positions for i in range(p - 2, p + 3) if 0 <= i < wave0}

    # Without the check, the three slow rounds agree with each other and the slow value is accepted.
    _, blind = run(None, slow, tmp_path, "blind")
    assert blind.verdicts[KEY].agreed and blind.verdicts[KEY].value == pytest.approx(1.3 * BASE[KEY], rel=0.01)

    runner, res = run(RULE, slow, tmp_path, "checked")
    v = res.verdicts[KEY]
    assert v.rounds > 3 and runner.measurements_of(KEY) == v.rounds
    assert v.agreed and v.value == pytest.approx(BASE[KEY], rel=0.01)
    assert res.report["slow_period"] == [] and res.report["no_consensus"] == []
    for c in BLOCKS:  # every other block settles on its ordinary value too
        assert res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.01)


def test_a_block_left_in_slow_periods_when_its_rounds_run_out_is_reported(tmp_path):
    recorder, _ = run(None, set(), tmp_path, "order")
    wave0 = len(BLOCKS) * 3 + len(BLOCKS) * 3 // 2
    positions = [i for i, c in enumerate(recorder.calls[:wave0]) if c[0] == KEY][:3]
    runner = ScriptedRunner(BASE.__getitem__)
    runner.period_calls = {i for p in positions for i in range(p - 2, p + 3) if 0 <= i < wave0}
    plan = MeasuringPlan(min_separation_s=0.0, anchor_every=2, seed=3, periods=RULE,
                         consensus=ConsensusRule(max_rounds=3))  # no round to spare
    res = MeasuringSession(runner, plan, export_jobs=1).run([Target.of(c, "block") for c in BLOCKS],
                                                            [Target.of(ANCHOR, "anchor")])
    assert res.verdicts[KEY].rounds == 3 and KEY in res.report["slow_period"]


def test_a_slow_round_over_its_anchors_confirms_a_fast_one_but_two_slow_rounds_never_agree():
    """Period confirmation (rules derived for a device whose fast state is rare): the fastest round,
    taken between fast anchor readings, is confirmed by a round taken in a slow state once that
    round is divided by the anchors' slowdown around it."""
    from latbench.measuring.consensus import Verdict
    from latbench.measuring.journal import AnchorRow, JournalRow
    from latbench.measuring.measurement import Measurement
    from latbench.measuring.periods import confirmed_by_period

    def m(ms):
        return Measurement("x", [ms] * 20)

    # Anchor "a" (level 1.0 ms) read every 5 s: fast until 20 s, 30 % slow from 20 s to 60 s.
    anchors = [AnchorRow("s", "d", i, "a", m(1.0 if not 20 <= 5 * i < 60 else 1.3), 5.0 * i) for i in range(16)]
    anchors += [AnchorRow("s", "d", 100 + i, "a", m(1.0), 0.5 + 5.0 * i) for i in range(3)]  # the level's quorum
    rule = ConsensusRule()

    def verdicts(times, values):
        rows = {"k": [JournalRow("k", r, "block", {}, m(v), None, t, "d", "s")
                      for r, (t, v) in enumerate(zip(times, values))]}
        vals = {"k": [rule.round_value(r.measurement) for r in rows["k"]]}
        decided = {"k": rule.decide(vals["k"])}
        return decided, confirmed_by_period(rows, vals, decided, anchors, rule, RULE)

    decided, confirmed = verdicts([12.0, 32.0, 47.0], [0.50, 0.651, 0.70])  # fast, slow (0.651/1.3), slower
    assert not decided["k"].agreed
    assert isinstance(confirmed["k"], Verdict) and confirmed["k"].value == pytest.approx(0.50)
    assert confirmed["k"].members == (0, 1) and confirmed["k"].agreed
    # Every round slow: the fastest is not between fast anchors, nothing is confirmed.
    assert verdicts([27.0, 37.0, 52.0], [0.65, 0.70, 0.72])[1] == {}
    # A fast round whose slow partner does not fit the anchors' slowdown (a burst of its own): no.
    assert verdicts([12.0, 32.0, 47.0], [0.50, 0.75, 0.76])[1] == {}


def test_an_entry_out_of_rounds_takes_its_rounds_over_the_anchors_slowdown():
    """Rounds exhausted, every one taken while the device was 30 % slow: the fastest round alone
    would be 30 % off; each round over the anchors' slowdown at its time is not."""
    from latbench.measuring.journal import AnchorRow, JournalRow
    from latbench.measuring.measurement import Measurement
    from latbench.measuring.periods import confirmed_by_period

    def m(ms):
        return Measurement("x", [ms] * 20)

    anchors = [AnchorRow("s", "d", i, "a", m(1.0 if not 20 <= 5 * i < 60 else 1.3), 5.0 * i) for i in range(16)]
    anchors += [AnchorRow("s", "d", 100 + i, "a", m(1.0), 0.5 + 5.0 * i) for i in range(3)]
    rule = ConsensusRule(max_rounds=3)
    rows = {"k": [JournalRow("k", r, "block", {}, m(v), None, t, "d", "s")
                  for r, (t, v) in enumerate(zip([27.0, 37.0, 52.0], [0.66, 0.70, 0.74]))]}
    vals = {"k": [rule.round_value(r.measurement) for r in rows["k"]]}
    decided = {"k": rule.decide(vals["k"])}
    assert not decided["k"].agreed and not decided["k"].needs_more and decided["k"].value == pytest.approx(0.66)
    [(key, verdict)] = confirmed_by_period(rows, vals, decided, anchors, rule, RULE).items()
    assert not verdict.agreed  # still flagged: no two rounds agreed
    assert verdict.value == pytest.approx(statistics.median([0.66 / 1.3, 0.70 / 1.3, 0.74 / 1.3]))


def _slow_consensus(slow_rounds_seen_by_anchors: bool, late_times: tuple[float, ...] = (27.0, 37.0, 107.0),
                    late_factors: tuple[float, ...] | None = None, second_slow: float = 1.3,
                    decide: str = "confirmed_by_period"):
    """Twelve entries, three rounds each, on a device whose anchors read it 30 % slow from 20 to
    60 s and `second_slow` from 100 to 140 s; eleven entries have one slow round, one entry
    ("late") has all its rounds slow (`late_factors`, default: agreeing with each other)."""
    from latbench.measuring import periods
    from latbench.measuring.journal import AnchorRow, JournalRow
    from latbench.measuring.measurement import Measurement

    def m(ms):
        return Measurement("x", [ms] * 20)

    def slow(t):
        return 20 <= t < 60 or 100 <= t < 140

    def state(t):
        return second_slow if 100 <= t < 140 else 1.3 if slow(t) else 1.0

    anchors = [AnchorRow("s", "d", i, "a", m(state(5.0 * i)), 5.0 * i) for i in range(32)]
    anchors += [AnchorRow("s", "d", 100 + i, "a", m(1.0), 0.5 + 5.0 * i) for i in range(3)]
    rule = ConsensusRule()
    plan = {f"k{i}": ([12.0 + i, 32.0 + i, 82.0 + i] if slow_rounds_seen_by_anchors else [12.0 + i, 72.0 + i, 82.0 + i],
                      [1.0, 1.3, 1.0]) for i in range(11)}
    plan["late"] = (list(late_times), list(late_factors or [1.3, 1.31] + [1.3] * (len(late_times) - 2)))
    rows = {k: [JournalRow(k, r, "block", {}, m(0.5 * f), None, t, "d", "s") for r, (t, f) in enumerate(zip(*tf))]
            for k, tf in plan.items()}
    vals = {k: [rule.round_value(r.measurement) for r in rs] for k, rs in rows.items()}
    decided = {k: rule.decide(v) for k, v in vals.items()}
    if late_factors is None:
        assert decided["late"].agreed and decided["late"].value == pytest.approx(0.65, rel=0.01)
    return getattr(periods, decide)(rows, vals, decided, anchors, rule, RULE)


def test_a_consensus_of_slow_rounds_is_divided_by_the_anchors_where_they_explain_the_device():
    """All of an entry's rounds fell in slow states that agree with each other (the simulated
    vm-bursts device): its consensus is the slow state's value. Where the anchors' slowdown
    explains the scatter of the other entries' rounds, the rounds over it stand instead."""
    from latbench.measuring.periods import ANCHORS_EXPLAIN

    out = _slow_consensus(True)
    assert set(out) == {"late"} and out["late"].agreed
    assert out["late"].value == pytest.approx(0.5, rel=0.01)
    assert ANCHORS_EXPLAIN < 1


def test_a_slow_consensus_with_one_round_at_a_change_of_state_is_divided_too():
    """One of four agreeing rounds fell between a slow and a fast anchor reading (state unknown): it
    agrees with the three the anchors saw steadily slow, so it shares their state: still divided
    (before, one round of unknown state kept the whole slow consensus; a simulated vm-bursts entry
    stayed +32 % so)."""
    out = _slow_consensus(True, late_times=(27.0, 37.0, 58.0, 107.0))
    assert set(out) == {"late"} and out["late"].value == pytest.approx(0.5, rel=0.01)


def test_a_slow_consensus_of_rounds_at_changes_of_state_is_divided_by_the_entrys_steadily_slow_rounds():
    """Both agreeing rounds fell at changes of state (their anchors disagree: unknown state); the
    entry's other rounds were taken in a steady slow state and, over the anchors' slowdown, put
    the fast value a slow period's worth below the consensus: the consensus is the slow state's
    (a simulated vm-bursts entry whose eight rounds all fell in slow spans stayed +32 %)."""
    late = (58.0, 98.0, 107.0, 117.0)  # anchors: 55 slow / 60 fast, 95 fast / 100 slow, then steadily slow
    slow = {"late_factors": (1.3, 1.305, 1.34, 1.35), "second_slow": 1.34}
    out = _slow_consensus(True, late, **slow, decide="divided_at_changes_of_state")
    assert set(out) == {"late"} and out["late"].agreed
    assert out["late"].value == pytest.approx(0.5, rel=0.01)
    # A running session leaves it (it stays named slow-period and gets its later rounds).
    assert _slow_consensus(True, late, **slow) == {}
    # Rounds at the changes that were fast (the steady slow ones, over the anchors, agree with
    # them): the consensus stands.
    fast = {"late_factors": (1.0, 1.005, 1.34, 1.35), "second_slow": 1.34}
    assert _slow_consensus(True, late, **fast, decide="divided_at_changes_of_state") == {}
    # One steadily slow round is not enough to overrule two agreeing rounds.
    one = {"late_factors": (1.3, 1.305, 1.34), "second_slow": 1.34}
    assert _slow_consensus(True, late[:3], **one, decide="divided_at_changes_of_state") == {}
    # Nor where the anchors do not explain the device.
    assert _slow_consensus(False, late, **slow, decide="divided_at_changes_of_state") == {}
    # Members of known slow state are confirmed_by_period's: this one leaves them.
    assert _slow_consensus(True, decide="divided_at_changes_of_state") == {}


def test_a_slow_consensus_stands_where_the_anchors_do_not_explain_the_device():
    """The others' slow rounds fell while the anchors read fast (slow states of their own, the
    Xeon VM's trace): dividing by the anchors would make values too fast, so nothing changes."""
    assert _slow_consensus(False) == {}


def test_three_rounds_in_steady_slow_states_that_agree_over_the_anchors_stand_without_a_fast_round():
    """No fast round and no consensus: one round in a 30 % slow state, two in a 45 % slow one. Each
    was taken between two anchor readings that agree on the slowdown; over it the three agree on
    the fast value, so the entry needs no more rounds (on the simulated vm-bursts device a fifth of
    rounds are fast and such entries ran to the round bound)."""
    from latbench.measuring.periods import NORMALISED_QUORUM

    late = (27.0, 107.0, 117.0)
    out = _slow_consensus(True, late, late_factors=(1.3, 1.45, 1.46), second_slow=1.45)
    assert NORMALISED_QUORUM == 3 and set(out) == {"late"}
    assert out["late"].agreed and out["late"].value == pytest.approx(0.5, rel=0.01)
    # Only two of them agree (the third slower than its anchors say: a burst of its own): more rounds.
    assert _slow_consensus(True, late, late_factors=(1.3, 1.45, 1.6), second_slow=1.45) == {}
    # A round at a change of state (its anchors disagree: 1.3 before, 1.0 after) does not count
    # towards the three, though over the median of its anchors (1.15) it would agree.
    assert _slow_consensus(True, (27.0, 58.0, 117.0), late_factors=(1.3, 1.15, 1.46), second_slow=1.45) == {}
    # Where the anchors do not explain the device, the rounds keep waiting for a fast one.
    assert _slow_consensus(False, late, late_factors=(1.3, 1.45, 1.46), second_slow=1.45) == {}


def _one_spell(entries: int = 5, rule: PeriodRule = RULE, burst_only: bool = False) -> dict[str, float]:
    """`entries` entries whose three rounds (at 6-40 s) all fell in one slow spell and agree with
    each other; anchor a read every 10 s, 30 % slow until 45 s and fast at 50 s; anchor b read at
    5-45 s, slow throughout (it never saw the fast state).
    `burst_only`: anchor a reads fast throughout but for one burst at 10 s."""
    from latbench.measuring.journal import AnchorRow, JournalRow
    from latbench.measuring.measurement import Measurement
    from latbench.measuring.periods import journal_slow_periods

    def m(ms):
        return Measurement("x", [ms] * 20)

    def a_state(t):
        return (1.3 if t == 10 else 1.0) if burst_only else (1.3 if t < 45 else 1.0)

    anchors = [AnchorRow("s", "d", i, "a", m(a_state(10.0 * i)), 10.0 * i) for i in range(6)]
    anchors += [AnchorRow("s", "d", 10 + i, "b", m(2.6), 5.0 + 10 * i) for i in range(5)]
    consensus = ConsensusRule()
    rows = {f"k{i}": [JournalRow(f"k{i}", r, "block", {}, m(0.5 * 1.3), None, 6.0 + i + 12 * r, "d", "s")
                      for r in range(3)] for i in range(entries)}
    vals = {k: [consensus.round_value(r.measurement) for r in rs] for k, rs in rows.items()}
    decided = {k: consensus.decide(v) for k, v in vals.items()}
    assert all(v.agreed for v in decided.values())  # the slow rounds agree: a consensus of the spell
    return journal_slow_periods(rows, vals, decided, anchors, consensus, rule)


def test_a_session_of_few_entries_inside_one_slow_spell_is_named_by_its_anchors():
    """An adapt's few entries can take every round inside one slow spell: their rounds agree with
    each other and with their neighbours, so only the anchors, read past the spell, show it."""
    named = _one_spell()
    assert set(named) == {f"k{i}" for i in range(5)} and all(v == pytest.approx(1.3) for v in named.values())
    # Anchor b never read fast (its ratios are 1): the other anchor's reading is enough.
    # The neighbours' view alone is blind to it, and a full build's journal (more entries than
    # few_entries) keeps to that view.
    assert _one_spell(rule=PeriodRule(few_entries=4)) == {}
    # Where the anchors near the rounds read at their fastest, nothing is named; one burst near
    # one round of each entry (the other rounds read fast) names nothing either.
    assert _one_spell(burst_only=True) == {}


def test_a_slow_spell_ending_before_the_session_gives_the_entries_rounds_at_their_ordinary_value(tmp_path):
    """In a live session: every entry's first three rounds fall in a slow spell that ends just
    before the first wave does; the anchors read after it name them, and their later rounds
    settle on the ordinary values."""
    anchors = [Target.of(ANCHOR, "anchor"), Target.of(FFNConfig(224, 2, 80, 4), "anchor")]
    base = {**BASE, anchors[1].key: 0.3}

    def session(slow: set[int], name: str, rule: PeriodRule):
        runner = ScriptedRunner(base.__getitem__, clock_step_s=1.0)
        runner.period_calls = slow
        plan = MeasuringPlan(min_separation_s=0.0, anchor_every=2, seed=3, periods=rule, probe_rounds=0)
        with Journal(tmp_path / f"{name}.sqlite") as journal:
            res = MeasuringSession(runner, plan, journal=journal, export_jobs=1).run(
                [Target.of(c, "block") for c in BLOCKS], anchors)
        return runner, res

    recorder, _ = session(set(), "order", RULE)
    entry_calls = [i for i, c in enumerate(recorder.calls) if c[0] in BASE and c[0] not in (a.key for a in anchors)]
    last = entry_calls[len(BLOCKS) * 3 - 1]  # the first wave's last entry round
    slow = set(range(0, last + 1))
    _, blind = session(slow, "blind", PeriodRule(few_entries=0))
    assert all(v.value == pytest.approx(1.3 * BASE[k], rel=0.01) for k, v in blind.verdicts.items())
    runner, res = session(slow, "checked", RULE)
    assert any(c[0] in (a.key for a in anchors) for c in runner.calls[last + 1:])  # anchors read past the spell
    for c in BLOCKS:
        assert res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.01)
        assert res.verdicts[c.key].rounds > 3


def with_spare_rounds(session: MeasuringSession, spare: int) -> MeasuringSession:
    """The session's rules leave `spare` rounds beyond their bound (a best-of rule under the
    caller's bound: noise.derive_rules)."""
    session.rules = replace(session.rules, spare_rounds=spare)
    return session


def test_entries_named_in_a_few_entry_session_take_the_rounds_their_rule_leaves(tmp_path):
    """Rules that take the fastest of N short rounds keep no spacing: an adapt's entries named
    slow-period after all N fell in one spell kept their slow values. In a session of few
    entries they now take up to SLOW_EXTRA_ROUNDS more, spaced, of the rounds the caller's bound
    leaves, and settle on their ordinary values; never more than it leaves."""
    anchors = [Target.of(ANCHOR, "anchor"), Target.of(FFNConfig(224, 2, 80, 4), "anchor")]
    base = {**BASE, anchors[1].key: 0.3}

    def session(slow: set[int], name: str, spare: int):
        runner = ScriptedRunner(base.__getitem__, clock_step_s=1.0)
        runner.period_calls = slow
        plan = MeasuringPlan(min_separation_s=0.0, anchor_every=2, seed=3, periods=RULE, probe_rounds=0,
                             consensus=ConsensusRule(max_rounds=3))
        with Journal(tmp_path / f"{name}.sqlite") as journal:
            res = with_spare_rounds(MeasuringSession(runner, plan, journal=journal, export_jobs=1), spare).run(
                [Target.of(c, "block") for c in BLOCKS], anchors)
        return runner, res

    recorder, _ = session(set(), "order", 0)
    entry_calls = [i for i, c in enumerate(recorder.calls) if c[0] in BASE and c[0] not in (a.key for a in anchors)]
    slow = set(range(0, entry_calls[len(BLOCKS) * 3 - 1] + 1))  # the first wave, up to its last entry round
    _, bounded = session(slow, "bounded", 0)  # the caller's bound taken whole: nothing beyond it
    assert all(v.rounds == 3 and v.value == pytest.approx(1.3 * BASE[k], rel=0.01) for k, v in bounded.verdicts.items())
    named = set(bounded.report["slow_period"])
    assert len(named) >= len(BLOCKS) // 2
    _, res = session(slow, "extended", 37)
    for key in named:
        assert res.verdicts[key].value == pytest.approx(BASE[key], rel=0.01)
        assert 3 < res.verdicts[key].rounds <= 3 + session_module.SLOW_EXTRA_ROUNDS
    assert res.report["slow_period"] == []
    _, one = session(slow, "one", 1)
    assert all(v.rounds <= 4 for v in one.verdicts.values()) and any(one.verdicts[k].rounds == 4 for k in named)


def test_rounds_beyond_the_bound_stop_when_they_find_nothing_faster(tmp_path):
    """Anchors that read slow around every round (a device with short bursts) name entries whose
    rounds were fast all along: each takes SLOW_EXTRA_JUDGED_AFTER rounds beyond the bound, finds
    nothing faster, and the session takes no more."""
    anchors = [Target.of(ANCHOR, "anchor"), Target.of(FFNConfig(224, 2, 80, 4), "anchor")]
    runner = ScriptedRunner({**BASE, anchors[1].key: 0.3}.__getitem__, clock_step_s=1.0)
    for a in anchors:
        runner.slow(a.key, 1.0, *[1.3] * 200)
    plan = MeasuringPlan(min_separation_s=0.0, anchor_every=2, seed=3, periods=RULE, probe_rounds=0,
                         consensus=ConsensusRule(max_rounds=3))
    with Journal(tmp_path / "bursts.sqlite") as journal:
        res = with_spare_rounds(MeasuringSession(runner, plan, journal=journal, export_jobs=1), 37).run(
            [Target.of(c, "block") for c in BLOCKS], anchors)
    named = res.report["slow_period"]
    assert named  # the anchors' view names them ...
    for c in BLOCKS:
        assert res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.01)  # ... though they are right
        assert res.verdicts[c.key].rounds <= 3 + session_module.SLOW_EXTRA_JUDGED_AFTER
    assert all(res.verdicts[k].rounds == 3 + session_module.SLOW_EXTRA_JUDGED_AFTER for k in named)
    assert session_module.SLOW_EXTRA_JUDGED_AFTER < session_module.SLOW_EXTRA_ROUNDS


def _level_session(tmp_path, name: str, slow: set[int]):
    """A build's session of six blocks and two anchors, on a device whose clock moves 1 s per
    measurement and by its idle time; `slow`: the calls taken in a slow state. Under a best-of
    rule's bound (37 spare rounds)."""
    anchors = [Target.of(ANCHOR, "anchor"), Target.of(FFNConfig(224, 2, 80, 4), "anchor")]
    runner = ScriptedRunner({**BASE, anchors[1].key: 0.3}.__getitem__, clock_step_s=1.0)
    runner.period_calls = slow
    plan = MeasuringPlan(min_separation_s=0.0, anchor_every=2, seed=3, periods=RULE, probe_rounds=0,
                         consensus=ConsensusRule(max_rounds=3))
    with Journal(tmp_path / f"{name}.sqlite") as journal:
        res = with_spare_rounds(MeasuringSession(runner, plan, journal=journal, export_jobs=1, purpose="build"),
                                37).run([Target.of(c, "block") for c in BLOCKS], anchors)
    return runner, res


def test_a_short_session_on_a_steady_device_reads_its_anchors_until_the_level_span(tmp_path, monkeypatch):
    """A session that ends before LEVEL_SPAN_S reads its anchors, idling between, until then; on a
    steady device nothing changes and nothing is measured again."""
    monkeypatch.delenv(session_module.LEVEL_SPAN_ENV, raising=False)  # the default
    runner, res = _level_session(tmp_path, "steady", set())
    check = res.report["level_check"]
    assert check["faster"] is False and check["span_s"] == session_module.LEVEL_SPAN_S
    assert check["from_s"] < 40 and check["to_s"] >= session_module.LEVEL_SPAN_S
    for c in BLOCKS:
        assert res.verdicts[c.key].rounds == 3 and res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.01)
    last_round = max(i for i, c in enumerate(runner.calls) if c[0] in {b.key for b in BLOCKS})
    assert len(runner.calls) - last_round > 10  # anchors read, idling between, after the last round

    monkeypatch.setenv(session_module.LEVEL_SPAN_ENV, "0")  # a lab's steady device: no check
    quick, res = _level_session(tmp_path, "unchecked", set())
    assert res.report["level_check"] is None and len(quick.calls) < len(runner.calls)
    monkeypatch.setenv(session_module.LEVEL_SPAN_ENV, "20")  # a session longer than the span: none
    _, res = _level_session(tmp_path, "long-enough", set())
    assert res.report["level_check"] is None


def test_a_short_session_inside_one_slow_spell_is_measured_again_once_its_anchors_read_faster(tmp_path, monkeypatch):
    """Every round of every entry and every anchor reading falls in one slow spell that outlasts
    the waves (a simulated vm-bursts adapt, 39 s inside a 30 % spell: a table 34 % off, nothing
    flagged). The anchors read at the end find the device faster; the entries are named and
    measured again at their ordinary values."""
    monkeypatch.setenv(session_module.LEVEL_SPAN_ENV, "0")
    recorder, _ = _level_session(tmp_path, "order", set())
    slow = set(range(len(recorder.calls) + 3))  # the spell ends a few readings into the check
    _, blind = _level_session(tmp_path, "blind", slow)
    assert all(v.value == pytest.approx(1.3 * BASE[k], rel=0.01) for k, v in blind.verdicts.items())
    assert blind.report["slow_period"] == []  # nothing flagged: the anchors agree with themselves

    monkeypatch.delenv(session_module.LEVEL_SPAN_ENV)
    runner, res = _level_session(tmp_path, "checked", slow)
    assert res.report["level_check"]["faster"] is True
    assert res.report["level_check"]["to_s"] < session_module.LEVEL_SPAN_S  # stopped at the faster reading
    for c in BLOCKS:
        assert res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.01)
        assert res.verdicts[c.key].rounds > 3
    assert res.report["slow_period"] == []


def test_a_level_span_that_is_not_seconds_is_refused_before_anything_is_measured(monkeypatch):
    monkeypatch.setenv(session_module.LEVEL_SPAN_ENV, "a minute")
    runner = ScriptedRunner(BASE.__getitem__)
    with pytest.raises(UsageError, match=r"LATBENCH_LEVEL_SPAN_S .*seconds.*'a minute'") as err:
        MeasuringSession(runner, MeasuringPlan())
    assert "\n" not in str(err.value) and runner.calls == []


def test_only_a_builds_session_checks_its_level(tmp_path, monkeypatch):
    """Validations, checks and profiles compare on a time base of their own: their sessions read
    no anchors beyond their work."""
    monkeypatch.delenv(session_module.LEVEL_SPAN_ENV, raising=False)
    anchors = [Target.of(ANCHOR, "anchor")]
    runner = ScriptedRunner(BASE.__getitem__, clock_step_s=1.0)
    plan = MeasuringPlan(min_separation_s=0.0, anchor_every=2, seed=3, periods=RULE, probe_rounds=0)
    res = MeasuringSession(runner, plan, export_jobs=1, purpose="models-pass0").run(
        [Target.of(c, "block") for c in BLOCKS], anchors)
    assert res.report["level_check"] is None and runner.now() - runner._epoch < 60
