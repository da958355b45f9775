"""The device's noise profile, the rules derived from it, cool-down pauses and the time budget."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from scripted_device import ScriptedRunner

from latbench.blocks.configs import AttnConfig, FFNConfig
from latbench.core.errors import UsageError
from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.journal import AnchorRow, Journal
from latbench.measuring.measurement import THROTTLING_WARNING, Measurement, SamplingPolicy
from latbench.measuring.noise import (
    BEST_OF_ROUND_LENGTH,
    PASS_S,
    ROUND_CEILING,
    SPACING_POLL,
    HeatRule,
    MeasuringRules,
    Reading,
    derive_rules,
    journal_profile,
    parse_duration,
    parse_precision,
    pass_level,
    profile_of,
    rounds_for,
    typical_uncertainty,
)
from latbench.measuring.periods import ANCHORS_EXPLAIN
from latbench.measuring.session import (
    MAX_WAIT_S,
    MIN_SHORT_RUNS,
    POLL_S,
    REREAD_EVERY,
    SHORT_ROUND_CI,
    SLOW_EXTRA_SPACING_S,
    Job,
    MeasuringPlan,
    MeasuringSession,
    Target,
    probe_noise,
)

BLOCKS = [FFNConfig(224, 3, 96, 2), FFNConfig(224, 3, 96, 3), FFNConfig(224, 4, 176, 4), AttnConfig(224, 4, 176)]
ANCHOR = FFNConfig(224, 3, 96, 4)
BASE = {c.key: 0.2 + 0.1 * i for i, c in enumerate(BLOCKS)} | {ANCHOR.key: 0.4}


def rounds(key: str, factors: list[float], *, base: float = 1.0, start: float = 0.0, spread: float = 0.002,
           anchor: bool = False) -> list[Reading]:
    """Rounds of one key, one per factor (its slowdown), 10 s apart, with a narrow sample spread."""
    return [Reading(start + 10 * i, key, Measurement(key, [base * f * (1 + spread * (j % 10)) for j in range(50)]),
                    anchor) for i, f in enumerate(factors)]


def test_a_quiet_device_keeps_the_stated_precision_and_the_given_bound():
    readings = [r for k in range(6) for r in rounds(f"k{k}", [1.0, 1.004, 1.008], start=k)]
    profile = profile_of(readings)
    assert profile.fast_share == 1.0 and profile.round_spread < 0.01 and profile.keys == 6
    rules = derive_rules(profile, 0.02, ConsensusRule())
    assert rules.consensus.tolerance == 0.02 and rules.consensus.max_rounds == 8 and not rules.confirm_by_period
    assert "meets 2.0%" in rules.why
    assert rules.spare_rounds == 0  # a quorum rule takes the caller's bound whole
    assert MeasuringRules.from_dict(rules.to_dict()) == rules


def _rare_fast_profile():
    """30 % of rounds fast, the rest 20-60 % slower (the Xeon VM's rounds)."""
    rng = random.Random(1)
    readings = [r for k in range(40) for r in
                rounds(f"k{k}", [1.0] + [1.0 if rng.random() < 0.3 else 1.2 + 0.4 * rng.random() for _ in range(4)],
                       start=k)]
    return profile_of(readings)


def test_a_device_whose_fast_state_is_rare_confirms_single_rounds_by_their_period():
    profile = _rare_fast_profile()
    assert 0.15 < profile.fast_share < 0.45 and profile.period_factor > 1.1 and profile.slow_share > 0.4
    rules = derive_rules(profile, 0.02, ConsensusRule())
    assert rules.confirm_by_period and "confirmed by its period" in rules.why
    assert rules.consensus.min_rounds < rules.consensus.max_rounds <= 8  # never past the caller's bound
    assert rules.round_length > 1 and rules.spare_rounds == 0  # longer rounds: the caller's 8 are spent


@pytest.mark.parametrize("why", ["anchors", "ci"])
def test_rare_fast_rounds_the_anchors_cannot_tell_get_the_best_of_many_short_rounds(why):
    profile = _rare_fast_profile()
    # Where the anchors explain the rounds and rounds meet their CI: period confirmation as before.
    explained = replace(profile, anchors_explain=0.6, ci_missed=0.0)
    assert derive_rules(explained, 0.02, ConsensusRule()).confirm_by_period
    # Anchors that leave most of the scatter, or rounds that mostly end short of their CI target
    # (two states mixed inside them): nothing tells a fast round, so every entry gets K short ones.
    blind = replace(profile, anchors_explain=0.9) if why == "anchors" else replace(profile, ci_missed=0.4)
    rules = derive_rules(blind, 0.02, ConsensusRule())
    k = min(ROUND_CEILING, rounds_for(profile.fast_share, 1))
    assert not rules.confirm_by_period and rules.scheduled_rounds == rules.consensus.max_rounds == k
    assert rules.consensus.min_rounds == 3  # a quorum still decides an entry a budget stopped short of k
    assert rules.round_length == BEST_OF_ROUND_LENGTH < 1 and not rules.extend_rounds
    assert f"the fastest of {k} short rounds" in rules.why
    # The caller's bound counts in rounds of the plan's length: 2 long rounds allow 10 short ones.
    tight = derive_rules(blind, 0.02, ConsensusRule(min_rounds=2, max_rounds=2))
    assert tight.scheduled_rounds == tight.consensus.max_rounds == min(k, round(2 / BEST_OF_ROUND_LENGTH))
    # ... and what they leave is spare (for entries named slow-period): 8 long rounds are 40 short.
    assert rules.spare_rounds == round(8 / BEST_OF_ROUND_LENGTH) - k > 0
    assert tight.spare_rounds == round(2 / BEST_OF_ROUND_LENGTH) - tight.consensus.max_rounds
    # Rounds of a fixed number of runs cannot be shortened: the bound holds as given, none spare.
    fixed = derive_rules(blind, 0.02, ConsensusRule(min_rounds=2, max_rounds=2), short_rounds=False)
    assert fixed.consensus.max_rounds == 2 and fixed.round_length == 1.0 and "fastest of 2 rounds" in fixed.why
    assert fixed.spare_rounds == 0
    # Unknown (too few rounds to tell) is not "unexplained".
    assert derive_rules(replace(profile, anchors_explain=None), 0.02, ConsensusRule()).confirm_by_period


def test_where_every_round_is_scheduled_all_of_them_read_the_typical_state():
    # Each entry's first three rounds fell in a fast spell, its next three in a slow one (+50 %).
    readings = [r for k in range(4) for r in rounds(f"k{k}", [1.0, 1.0, 1.0, 1.5, 1.5, 1.5], start=k)]
    first = profile_of(readings)
    every = profile_of(readings, scheduled_rounds=6)
    # Later rounds are taken because the first disagreed (a biased sample) unless the rule fixes
    # their number: then they are as much the device's state as the first.
    assert first.typical_factor == pytest.approx(1.0, abs=0.02)
    assert every.typical_factor == pytest.approx(1.25, abs=0.02)
    best_of = derive_rules(replace(_rare_fast_profile(), anchors_explain=0.9), 0.02, ConsensusRule())
    assert best_of.scheduled_rounds == best_of.consensus.max_rounds > 3
    assert derive_rules(first, 0.02, ConsensusRule()).scheduled_rounds == 0


def test_a_round_longer_than_a_pass_reads_the_time_it_spent_slow():
    # A whole model's 2 s round, 20 ms a run in the fast state for its first second and 50 ms a run
    # (a little core) for its second: 50 fast runs and 20 slow ones. Its median is the fast state,
    # though it spent half its time slow; its passes of PASS_S say so.
    runs = [20.0] * 50 + [50.0] * 20
    assert sorted(runs)[len(runs) // 2] == 20.0
    assert pass_level(runs) == pytest.approx(35.0, rel=0.05)
    # A block's round no longer than one pass, and a steady long one, read their median.
    assert pass_level([1.0, 1.1, 5.0]) == 1.1
    steady = [20.0 + (i % 3) * 0.1 for i in range(200)]
    assert pass_level(steady) == pytest.approx(20.1, abs=0.01)
    # A tail too short for a median joins the pass before it.
    assert pass_level([PASS_S * 1e3] + [1.0, 1.0]) == 1.0
    assert pass_level([0.0, 0.0, 0.0]) == 0.0  # a timer too coarse to weigh by
    # The profile's typical state follows: rounds of four keys, half their time slow, read ~1.75.
    readings = [Reading(10.0 * i + k, f"k{k}", Measurement(f"k{k}", runs if i else [20.0] * 70))
                for k in range(4) for i in range(3)]
    assert profile_of(readings).typical_factor == pytest.approx((1.0 + 2 * 1.75) / 3, rel=0.03)


def test_rounds_short_of_their_ci_target_stop_at_their_minimum():
    # Rounds whose runs alternate between two states 1.5x apart: the median's CI never narrows.
    mixed = [Reading(10.0 * i + k, f"k{k}", Measurement(f"k{k}", [1.0 if (j // 10) % 2 else 1.5 for j in range(60)]))
             for k in range(4) for i in range(3)]
    profile = profile_of(mixed)
    assert profile.ci_missed == 1.0
    rules = derive_rules(profile, 0.02, ConsensusRule())
    assert not rules.extend_rounds and "short of their CI target" in rules.why
    steady = profile_of([r for k in range(4) for r in rounds(f"k{k}", [1.0, 1.004, 1.008], start=k)])
    assert steady.ci_missed == 0.0 and derive_rules(steady, 0.02, ConsensusRule()).extend_rounds


class NoisyAfterProbeRunner(ScriptedRunner):
    """Quiet while the session probes (its first `quiet_calls` measurements); then every round's
    runs alternate between the fast state and one 60 % slower, so no round's median gets within
    its CI target however long it samples."""

    def __init__(self, *args, quiet_calls: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.quiet_calls = quiet_calls

    def measure(self, prepared, policy=None, *, profile=False):
        m = super().measure(prepared, policy, profile=profile)
        if len(self.calls) <= self.quiet_calls:
            return m
        return Measurement(m.label, [x * (1.6 if (i // 3) % 2 else 1.0) for i, x in enumerate(m.samples_ms)],
                           provenance=m.provenance)


def test_a_device_noisy_after_its_probe_stops_extending_rounds_within_the_first_wave():
    """The probe (two anchor rounds) met a quiet minute: rounds would sample to their cap for a CI
    the noise never gives, the whole first wave long (the demo on this VM: 285 s of a 120 s
    budget). Read again after each part of REREAD_EVERY jobs, the rest stop at their minimum."""
    blocks = [FFNConfig(224, stage, width, e) for stage, width in ((3, 120), (3, 144), (4, 176), (4, 224))
              for e in (2, 3, 4)]
    runner = NoisyAfterProbeRunner(lambda key: 0.3, quiet_calls=2)
    session = hot_session(runner, precision=0.02, probe_rounds=2, heat=None)
    session.run([Target.of(c, "block") for c in blocks], [Target.of(ANCHOR, "anchor")])
    targets = [policy.target_ci for label, policy, _ in runner.calls if label != ANCHOR.key]
    first = REREAD_EVERY  # anchor_every 2: the first part is 30 jobs
    assert len(targets) > first and set(targets[:first]) == {0.01}  # the probe said: sample on
    assert set(targets[first:len(blocks) * 3]) == {SHORT_ROUND_CI}  # the rest of the first wave: stop
    assert not session.rules.extend_rounds and "short of their CI target" in session.rules.why


def test_the_profile_says_whether_the_anchors_explain_the_rounds(tmp_path):
    # Entries and an anchor slowed down together (a device-wide state): dividing by the anchor's
    # slowdown removes the scatter. Entries slowed on their own: it removes nothing.
    def journal_of(shared: bool) -> tuple[dict, list]:
        with Journal(tmp_path / f"j{shared}.sqlite") as j:
            sid = j.start_session("build", "dev", {}, at=0.0)
            state = [1.0, 1.3, 1.0, 1.5, 1.1, 1.0] * 3
            for t, f in enumerate(state):
                j.record_anchor(sid, "dev", t, ANCHOR.key, Measurement(ANCHOR.key, [0.4 * f] * 20), at=10.0 * t)
            for k in range(12):
                for r in range(4):
                    t = 1 + 4 * r + (k % 3)
                    own = [1.0, 1.4, 1.2, 1.0][(r + k) % 4]
                    f = state[t] if shared else own
                    j.record(f"k{k}", r, "block", {}, Measurement(f"k{k}", [0.2 * f] * 20), None,
                             at=10.0 * t + 5.0, session=sid, device="dev")
            return j.rows("block"), j.anchors()

    explained = journal_profile(*journal_of(True))
    alone = journal_profile(*journal_of(False))
    assert explained.anchors_explain < 0.5 < ANCHORS_EXPLAIN < 0.9 < alone.anchors_explain


def test_a_device_whose_fast_rounds_scatter_gets_the_closest_agreement_it_shows():
    # Every key's rounds 4 % apart: the closest two rounds of any entry are 4 % apart.
    readings = [r for k in range(30) for r in rounds(f"k{k}", [1.0, 1.04, 1.08], start=k)]
    profile = profile_of(readings, precision=0.02)
    assert profile.fast_agreement == pytest.approx(0.04, abs=0.002)
    rules = derive_rules(profile, 0.02, ConsensusRule())
    assert rules.achievable == pytest.approx(0.08, abs=0.004)
    assert "agree only within" in rules.why


def test_rounds_that_scatter_evenly_a_little_wider_than_asked_keep_a_quorum_at_their_scatter():
    """The development VM on a busy day: half the entries' two fastest of three rounds within
    about 3 %, a continuum rather than two states. The tolerance widens to that scatter and the
    quorum stays (no confirmation by period, whose anchors cannot see a continuum)."""
    rng = random.Random(2)
    readings = [r for k in range(40) for r in rounds(f"k{k}", [1.0] + [1.0 + 0.06 * rng.random() for _ in range(2)],
                                                        start=k)]
    profile = profile_of(readings, precision=0.02)
    assert 0.02 < profile.second_gap < 0.05
    rules = derive_rules(profile, 0.02, ConsensusRule())
    assert rules.achievable == pytest.approx(max(profile.second_gap, 2 * profile.fast_agreement, 0.02))
    assert not rules.confirm_by_period and rules.consensus.max_rounds == 8 and rules.min_separation_s >= 2.0
    # Two states far apart (a slow state 20-60 % up) are not a continuum: the tolerance stays.
    states = [r for k in range(40) for r in rounds(f"k{k}", [1.0] + [1.0 if rng.random() < 0.3 else 1.2 + 0.4 * rng.random()
                                                                     for _ in range(4)], start=k)]
    wide = derive_rules(profile_of(states), 0.02, ConsensusRule())
    assert wide.confirm_by_period and wide.min_separation_s == 0.0  # confirmation by period does not wait


def test_rounds_for_the_quorum():
    assert rounds_for(1.0, 2) == 2 and rounds_for(0.0, 1) >= 10**6
    assert rounds_for(0.7, 2) == 5  # 1 - 0.3^5 - 5*0.7*0.3^4 = 0.969
    assert rounds_for(0.3, 1) == 9  # 1 - 0.7^9 = 0.960


def test_the_profile_keeps_the_typical_state_and_the_trend():
    # An anchor slowing by 10 % a minute over 5 minutes, read every 10 s.
    readings = rounds("anchor:a", [1.1 ** (i / 6) for i in range(31)], anchor=True)
    profile = profile_of(readings)
    assert profile.trend_per_min == pytest.approx(0.10, abs=0.01)
    assert profile.typical_factor > profile.period_factor > 1.0
    short = profile_of(rounds("anchor:a", [1.0, 1.2, 1.4], anchor=True))  # 20 s of readings: no trend read
    assert short.trend_per_min == 0.0


def test_the_typical_state_is_as_uncertain_as_its_slow_spans_are_long():
    # 60 readings 5 s apart. Alternating fast/slow every reading: each sixth of the build sees
    # both states equally, the average is pinned. Slow for 50 s then fast for 50 s: each sixth
    # sits mostly in one state, and the average of 5 minutes is a guess of a few percent.
    flicker = [(5.0 * i, 1.3 if i % 2 else 1.0) for i in range(60)]
    spans = [(5.0 * i, 1.3 if (i // 10) % 2 else 1.0) for i in range(60)]
    assert typical_uncertainty(flicker) < 0.005
    assert typical_uncertainty(spans) > 0.05
    assert typical_uncertainty(flicker[:5]) == 0.0  # too few readings to say
    profile = profile_of(rounds("anchor:a", [1.3 if (i // 10) % 2 else 1.0 for i in range(60)], anchor=True)
                         + rounds("k", [1.0, 1.01, 1.3]))
    assert profile.typical_uncertainty > 0.05 and "+-" in profile.summary()


@pytest.mark.parametrize("text, value", [("2%", 0.02), ("0.5%", 0.005), ("0.03", 0.03), ("3", 0.03)])
def test_precision_parses(text, value):
    assert parse_precision(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "0", "-1%", "60%", "nan"])
def test_bad_precision_is_one_line(text):
    with pytest.raises(UsageError, match="--precision") as e:
        parse_precision(text)
    assert "\n" not in str(e.value)


def test_durations_parse_and_bad_ones_are_refused():
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    for bad in ("soon", "0m", "-5s", "inf"):
        with pytest.raises(UsageError, match="--budget"):
            parse_duration(bad)


def test_heat_rule_wants_a_lasting_slowdown_or_a_report():
    rule = HeatRule(threshold=0.15, readings=3, span_s=90.0)
    every_10s = lambda ratios: [(10.0 * i, r) for i, r in enumerate(ratios)]  # noqa: E731
    # Slow for 100 s without a break: hot since the first slow reading.
    assert rule.hot_since(every_10s([1.0] + [1.3] * 11), None) == 10.0
    # A slow state of 50 s that ended, then another just begun: not heat.
    assert rule.hot_since(every_10s([1.3] * 5 + [1.0] + [1.3] * 4), None) is None
    assert rule.hot_since(every_10s([1.3] * 5), None) is None  # 40 s: a slow spell, not yet heat
    assert rule.hot_since(every_10s([1.0, 1.0]), True) == 10.0  # reported: at once
    assert not rule.cooled(1.0, True) and rule.cooled(1.05, False) and not rule.cooled(1.1, False)
    # The longest slow stretch that ended by itself: 40 s (not the 30 s one still going on).
    assert rule.longest_ended_slow(every_10s([1.0, 1.3, 1.0] + [1.3] * 5 + [1.0] + [1.3] * 4)) == 40.0
    assert rule.longest_ended_slow(every_10s([1.0] + [1.3] * 4)) == 0.0
    with pytest.raises(UsageError):
        HeatRule(threshold=0)


class HotRunner(ScriptedRunner):
    """A scripted device on a virtual clock that heats up under load: each measured second adds
    heat, idling removes it (all of `heat_after_s` in `cool_s`). Once the heat reaches
    `heat_after_s` it runs `factor` slower until it has cooled down completely. With `reports`
    it says so (as Android's thermal status does) and marks its measurements throttled."""

    def __init__(self, *args, heat_after_s: float = 40.0, cool_s: float = 30.0, factor: float = 1.35,
                 reports: bool = True, **kw) -> None:
        super().__init__(*args, **kw)
        self.t, self.heat, self.throttled_now = 1_000_000.0, 0.0, False
        self.heat_after_s, self.cool_s, self.factor, self.reports = heat_after_s, cool_s, factor, reports
        self.idled: list[float] = []

    def now(self) -> float:
        return self.t

    def idle(self, seconds: float) -> None:
        self.idled.append(seconds)
        self.t += seconds
        self.heat = max(0.0, self.heat - seconds * self.heat_after_s / self.cool_s)
        if self.heat == 0.0:
            self.throttled_now = False

    def throttling(self) -> bool | None:
        return self.throttled_now if self.reports else None

    def measure(self, prepared, policy=None, *, profile=False):
        hot = self.throttled_now
        self.speed = self.factor if hot else 1.0
        m = super().measure(prepared, policy, profile=profile)
        self.t += 1.0
        self.heat += 1.0
        self.throttled_now = self.throttled_now or self.heat >= self.heat_after_s
        if hot and self.reports:
            m = Measurement(m.label, m.samples_ms, provenance=m.provenance,
                            warnings=[f"{THROTTLING_WARNING}: thermal status light during the run"])
        return m


def hot_session(runner, journal=None, **plan):
    plan = MeasuringPlan(**{"min_separation_s": 0.0, "anchor_every": 2, "precision": 0.02, "probe_rounds": 2,
                            "heat": HeatRule(step_s=10.0, max_pause_s=120.0, span_s=5.0), **plan})
    return MeasuringSession(runner, plan, journal=journal, export_jobs=1)


@pytest.mark.parametrize("reports", [True, False], ids=["thermal-status", "anchors-only"])
def test_a_throttling_device_is_left_to_cool_and_its_hot_rounds_never_set_a_value(reports):
    runner = HotRunner(BASE.__getitem__, reports=reports, heat_after_s=15.0)
    with Journal(":memory:") as journal:
        res = hot_session(runner, journal, rounds=6).run([Target.of(c, "block") for c in BLOCKS],
                                                         [Target.of(ANCHOR, "anchor")])
        pauses = journal.get_meta("pauses")
    assert res.report["pauses"] and pauses == res.report["pauses"]  # journalled
    assert sum(runner.idled) >= runner.cool_s and all(p["seconds"] >= 10 for p in pauses)
    assert all(p["after_ratio"] <= 1 + 0.15 / 2 for p in pauses)  # resumed once the device read normal
    for c in BLOCKS:  # every value from cool rounds
        assert res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.02)
    if reports:
        assert res.report["throttled"]  # the hot rounds are named, not hidden


def test_a_device_that_heats_in_the_last_rounds_is_caught_when_the_build_ends(monkeypatch):
    """Too short a heat for the rule's span before the work runs out, though a third of it (a
    simulated phone that heated in a build's last 80 s set its typical latency 14 % high): the session idles at the end, sees
    the device read normal again, records the pause and measures the hot entries again."""
    from latbench.measuring import session as session_module

    def run():
        runner = HotRunner(BASE.__getitem__, reports=False, heat_after_s=12.0, cool_s=20.0)
        with Journal(":memory:") as journal:
            res = hot_session(runner, journal, heat=HeatRule(step_s=10.0, max_pause_s=120.0, span_s=15.0)).run(
                [Target.of(c, "block") for c in BLOCKS], [Target.of(ANCHOR, "anchor")])
            return res, journal.get_meta("pauses") or [], runner

    res, pauses, runner = run()
    [pause] = pauses
    assert pause["hot_from"] < pause["at"] and pause["after_ratio"] <= 1 + 0.15 / 2 and runner.idled
    assert sum(v.rounds for v in res.verdicts.values()) > 3 * len(BLOCKS)  # hot entries measured again
    for c in BLOCKS:
        assert res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.02)
    assert res.report["noise_profile"]["typical_factor"] < 1.05  # hot readings left the profile
    monkeypatch.setattr(session_module, "END_CHECK_STEPS", 0)  # without the check: nothing seen
    res, pauses, _ = run()
    assert pauses == [] and res.report["noise_profile"]["typical_factor"] > 1.05


class SpellRunner(HotRunner):
    """A device that a busy neighbour slows `factor` times for `spell_s` seconds from the moment
    it first goes idle (whatever runs on it meanwhile); it never heats."""

    def __init__(self, *args, spell_s: float, **kw) -> None:
        super().__init__(*args, heat_after_s=10**9, **kw)
        self.spell_s, self.spell_until = spell_s, None

    def idle(self, seconds: float) -> None:
        if self.spell_until is None:
            self.spell_until = self.t + self.spell_s
        super().idle(seconds)

    def measure(self, prepared, policy=None, *, profile=False):
        slow = self.spell_until is not None and self.t < self.spell_until
        m = super().measure(prepared, policy, profile=profile)
        return Measurement(m.label, [x * self.factor for x in m.samples_ms], provenance=m.provenance) if slow else m


def spaced_run(spell_s: float):
    """BLOCKS[0] needs a fourth round, to be taken 30 s after its third; the device idles meanwhile
    (anchors measured all along kept a simulated phone under load until it throttled)."""
    runner = SpellRunner(BASE.__getitem__, spell_s=spell_s)
    runner.slow(BLOCKS[0].key, 1.3, 1.0, 1.5, 1.0)
    with Journal(":memory:") as journal:
        res = hot_session(runner, journal, precision=None, min_separation_s=30.0, probe_rounds=0, heat=None).run(
            [Target.of(c, "block") for c in BLOCKS], [Target.of(ANCHOR, "anchor")])
        polls = [a for a in journal.anchors() if a.measurement.extra.get(SPACING_POLL)]
    assert res.verdicts[BLOCKS[0].key].rounds == 4 and res.verdicts[BLOCKS[0].key].agreed
    for c in BLOCKS:
        assert res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.02)
    return runner, polls


def run_to_the_end(runner):
    """Six rounds of BLOCKS under the default heat rule's span (90 s): the result and its pauses."""
    with Journal(":memory:") as journal:
        res = hot_session(runner, journal, rounds=6, heat=HeatRule(step_s=10.0)).run(
            [Target.of(c, "block") for c in BLOCKS], [Target.of(ANCHOR, "anchor")])
        return res, journal.get_meta("pauses") or []


def heating(heat_after_s):
    """A phone that throttles after `heat_after_s` of load, its anchors the only sign."""
    return HotRunner(BASE.__getitem__, reports=False, heat_after_s=heat_after_s, cool_s=20.0)


def test_a_slowdown_over_a_sixth_of_the_heat_span_at_the_end_is_looked_at():
    """With the default heat rule (90 s span), a device that begins to throttle some 20 s before
    the work runs out (the heat rule itself never fires) is still caught at the end: with a third
    of the span as the bar, a simulated phone like it kept its typical latency 4 % high."""
    res, pauses = run_to_the_end(heating(22.0))
    [pause] = pauses
    assert 15.0 <= pause["at"] - pause["hot_from"] < 30.0  # slow for between a sixth and a third of the span
    assert res.report["noise_profile"]["typical_factor"] < 1.05
    for c in BLOCKS:
        assert res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.02)
    res, pauses = run_to_the_end(heating(10**9))  # a device that never heats: no idling at the end
    assert pauses == []


def test_a_slow_state_the_anchors_never_showed_before_is_looked_at_at_the_end_however_short():
    """Steady anchors, then slow for only 6-12 s when the work runs out (under a sixth of the heat
    span): a device that had no slow spell all build has none to end by itself, so it is looked at
    (a simulated phone like it kept its typical latency 4 % high)."""
    for heat_after_s in (26.0, 30.0):
        res, pauses = run_to_the_end(heating(heat_after_s))
        [pause] = pauses
        assert pause["at"] - pause["hot_from"] < 15.0  # a sixth of the default span: 15 s
        assert res.report["noise_profile"]["typical_factor"] < 1.02
        for c in BLOCKS:
            assert res.verdicts[c.key].value == pytest.approx(BASE[c.key], rel=0.02)


def test_a_short_slow_stretch_at_the_end_of_a_device_with_slow_spells_is_not_waited_on():
    """A device whose anchors read slow before and recovered by themselves (a VM's neighbours)
    ends a build in one of its slow spells: under a sixth of the heat span, no idling."""
    class SpellsRunner(HotRunner):
        def measure(self, prepared, policy=None, *, profile=False):
            m = super().measure(prepared, policy, profile=profile)
            t = self.t - 1_000_000.0
            slow = 10.0 <= t < 18.0 or t >= 31.0  # a spell early on, another from 31 s to the end
            return Measurement(m.label, [x * 1.35 for x in m.samples_ms], provenance=m.provenance) if slow else m

    runner = SpellsRunner(BASE.__getitem__, reports=False, heat_after_s=10**9)
    res, pauses = run_to_the_end(runner)
    assert pauses == [] and runner.idled == []
    assert res.report["noise_profile"]["slow_share"] > 0


def test_a_slow_stretch_at_the_end_no_longer_than_the_devices_own_spells_is_not_waited_on():
    """A device whose anchors read a 32 s spell that ended by itself ends the build in another, over
    a sixth of the heat span but no longer: one more spell, no idling (a simulated VM's 10-50 s
    spells: the check idled 92 s, its anchors landing in the next spells). A trailing stretch
    longer than any spell before is still looked at."""
    def spells(first_end: float, last_from: float):
        class SpellsRunner(HotRunner):
            def measure(self, prepared, policy=None, *, profile=False):
                m = super().measure(prepared, policy, profile=profile)
                t = self.t - 1_000_000.0
                slow = 3.0 <= t < first_end or t >= last_from
                return Measurement(m.label, [x * 1.35 for x in m.samples_ms], provenance=m.provenance) if slow else m

        return SpellsRunner(BASE.__getitem__, reports=False, heat_after_s=10**9)

    step = HeatRule(step_s=10.0).step_s
    runner = spells(35.0, 38.0)
    res, pauses = run_to_the_end(runner)
    assert pauses == [] and step not in runner.idled  # spacing polls only
    assert res.report["noise_profile"]["slow_share"] > 0
    runner = spells(25.0, 30.0)  # the last stretch outlasts the 22 s spell: looked at
    run_to_the_end(runner)
    assert runner.idled.count(step) >= 1


def test_an_extra_round_waits_with_the_device_idle_until_an_anchor_reads_fast():
    # The device is in its fast state: one idle step, one anchor that reads at its level, go.
    runner, polls = spaced_run(spell_s=0.0)
    assert runner.idled == [POLL_S] and len(polls) == 1
    # A neighbour slows the whole device for 9 s: the wait goes on while the anchors read slow
    # and ends with the first that reads fast, long before the 30 s.
    runner, polls = spaced_run(spell_s=9.0)
    assert runner.idled == [POLL_S] * 4 and len(polls) == 4
    level = polls[-1].measurement.median
    assert [round(p.measurement.median / level, 2) for p in polls] == [1.35, 1.35, 1.35, 1.0]


def test_spacing_polls_only_anchors_that_have_read_both_states():
    """An anchor read only inside a slow spell has the spell for its level: its readings there
    look fast. Where another anchor has read the device fast and slow, only that one is polled;
    where none has (a quiet device), all are, except before rounds beyond the rule's bound."""
    other = FFNConfig(224, 2, 80, 4)
    jobs = [Job(ANCHOR.key, 0, "anchor", SamplingPolicy()), Job(other.key, 0, "anchor", SamplingPolicy())]
    with Journal(":memory:") as journal:
        session = MeasuringSession(ScriptedRunner(BASE.__getitem__), MeasuringPlan(), journal=journal, export_jobs=1)
        session.session = journal.start_session("build", "d", at=0.0)

        def read(seq: int, key: str, ms: float) -> None:
            journal.record_anchor(session.session, "d", seq, key, Measurement(key, [ms] * 20), at=float(seq))

        for seq, (a, b) in enumerate([(0.52, 0.26), (0.53, 0.26), (0.52, 0.262)]):  # both in one (slow) state
            read(2 * seq, ANCHOR.key, a)
            read(2 * seq + 1, other.key, b)
        within, beyond = [Job(BLOCKS[0].key, 3, "block", SamplingPolicy())], [Job(BLOCKS[0].key, 8, "block", SamplingPolicy())]
        assert session._anchors_to_poll(within, jobs) == jobs
        assert session._anchors_to_poll(beyond, jobs) == []  # past the rule's bound (8): idled out
        read(10, ANCHOR.key, 0.40)  # the spell ends for ANCHOR's readings: 30 % faster
        assert session._anchors_to_poll(within, jobs) == session._anchors_to_poll(beyond, jobs) == jobs[:1]


def test_a_round_beyond_the_bound_idles_out_its_wait_where_no_anchor_has_read_both_states():
    """A round an entry named slow-period takes beyond its rule's bound (few-entry sessions) waits
    at least SLOW_EXTRA_SPACING_S, doubled per round, even under rules with no spacing. Where the
    anchors have only read one state, the one they read may be the spell: their reading at their
    level says nothing, so the wait is idled out instead of polled."""
    other = FFNConfig(224, 2, 80, 4)
    anchors = [Job(ANCHOR.key, 0, "anchor", SamplingPolicy()), Job(other.key, 0, "anchor", SamplingPolicy())]

    def wait(readings: list[tuple[float, float]]) -> tuple[list[float], int]:
        runner = HotRunner({**BASE, other.key: 0.26}.__getitem__, heat_after_s=10**9)
        plan = MeasuringPlan(min_separation_s=0.0, consensus=ConsensusRule(max_rounds=3), probe_rounds=0)
        with Journal(":memory:") as journal:
            session = MeasuringSession(runner, plan, journal=journal, export_jobs=1)
            session.session = journal.start_session("build", "d", at=0.0)
            for seq, (a, b) in enumerate(readings):
                for i, (key, ms) in enumerate(((ANCHOR.key, a), (other.key, b))):
                    journal.record_anchor(session.session, "d", 2 * seq + i, key, Measurement(key, [ms] * 20),
                                          at=runner.now() - 10 + seq)
            session._make_ready([], extra=[ANCHOR, other])
            session._last_end = {BLOCKS[0].key: runner.now()}
            session._separate([Job(BLOCKS[0].key, 6, "block", SamplingPolicy())], anchors)
            return runner.idled, len(runner.calls)

    expected = min(MAX_WAIT_S, SLOW_EXTRA_SPACING_S * 2 ** 3)  # round 6: three past the plan's 3
    one_state = [(0.52, 0.26), (0.53, 0.26), (0.52, 0.262)]
    assert wait(one_state) == ([expected], 0)
    # An anchor that has read the device fast and slow is polled: the wait ends once it reads fast.
    idled, polls = wait([*one_state, (0.40, 0.26)])
    assert polls >= 1 and idled[0] == POLL_S and sum(idled) <= expected


def test_anchors_read_while_waiting_stay_out_of_the_noise_profile():
    """They are read more often the longer the device stays slow: counted, they would make its
    average state look slower than it is."""
    def anchor(seq: int, at: float, factor: float, poll: bool = False) -> AnchorRow:
        m = Measurement(ANCHOR.key, [0.4 * factor * (1 + 0.002 * (j % 10)) for j in range(50)],
                        extra={SPACING_POLL: True} if poll else {})
        return AnchorRow("s", None, seq, ANCHOR.key, m, at)

    steady = [anchor(i, 10.0 * i, 1.0 if i % 2 else 1.1) for i in range(8)]
    polls = [anchor(8 + i, 80.0 + 2 * i, 1.3, poll=True) for i in range(10)]
    alone = journal_profile({}, steady)
    assert journal_profile({}, steady + polls) == alone
    assert journal_profile({}, steady + [replace(p, measurement=Measurement(p.key, p.measurement.samples_ms))
                                         for p in polls]).typical_factor > alone.typical_factor + 0.05


def test_a_device_that_never_cools_is_paused_at_most_the_rule_allows():
    runner = HotRunner(BASE.__getitem__, heat_after_s=10.0, cool_s=10**9)
    res = hot_session(runner, rounds=3, heat=HeatRule(step_s=10.0, max_pause_s=30.0, span_s=5.0)).run(
        [Target.of(c, "block") for c in BLOCKS], [Target.of(ANCHOR, "anchor")])
    # At most the rule's 30 s of idling, plus the anchor readings (1 s each) taken between steps.
    assert res.report["pauses"] and all(p["seconds"] <= 30.0 + 3.0 for p in res.report["pauses"])
    assert all(res.verdicts[c.key].rounds >= 3 for c in BLOCKS)  # it still finished its work


def test_a_budget_stops_new_waves_and_says_what_was_reached():
    runner = HotRunner(BASE.__getitem__, heat_after_s=10**9)
    for c in BLOCKS:
        runner.slow(c.key, 1.3, 1.0, 1.5, 1.2, 1.4, 1.25)  # no consensus before round 5
    # The given rule (no period confirmation), so nothing agrees before round 5.
    res = hot_session(runner, rounds=3, budget_s=20.0, precision=None).run([Target.of(c, "block") for c in BLOCKS],
                                                           [Target.of(ANCHOR, "anchor")])
    budget = res.report["budget"]
    assert budget["stopped"] and budget["used_s"] >= 20.0 and budget["agreed"] < budget["entries"] == 4
    assert all(res.verdicts[c.key].rounds < 6 for c in BLOCKS)


def test_the_probe_profiles_a_device_alone():
    runner = HotRunner(BASE.__getitem__, heat_after_s=10**9)
    out = probe_noise(runner, [ANCHOR, BLOCKS[0]], 3, MeasuringPlan(precision=0.02))
    assert out["readings"] == 6 and out["profile"]["keys"] == 2 and out["profile"]["fast_share"] == 1.0
    assert out["rules"]["achievable"] == 0.02 and out["seconds"] >= 6.0  # on the device's clock
    assert {c[0] for c in runner.calls} == {ANCHOR.key, BLOCKS[0].key}


def test_long_slow_stretches_lengthen_rounds_and_rare_fast_runs_take_the_minimum():
    def stretchy(key: str, start: float) -> list[Reading]:
        # 40 runs a round; the first 30 in a slow stretch (1.5x), then 10 fast ones.
        samples = [1.5] * 30 + [1.0] * 10
        return [Reading(start + 10 * i, key, Measurement(key, samples)) for i in range(3)]

    profile = profile_of([r for k in range(5) for r in stretchy(f"k{k}", k)])
    assert profile.slow_run == 30 and profile.runs_per_round == 40
    rules = derive_rules(profile, 0.02, ConsensusRule())
    # A round should outlast a slow stretch one and a half times: 45 runs, 1.125x the 40 it has.
    assert rules.round_length == pytest.approx(1.125) and "rounds 1.1x longer" in rules.why
    assert rules.consensus.statistic == "p2"  # a quarter of the runs fast: the 2nd percentile is one
    rare = [Reading(10.0 * i, f"k{k}", Measurement(f"k{k}", [1.5] * 99 + [1.0])) for k in range(3) for i in range(3)]
    rules = derive_rules(profile_of(rare), 0.02, ConsensusRule())
    assert rules.consensus.statistic == "min" and "per-round minimum" in rules.why


def test_longer_rounds_reach_the_runner_policy():
    runner = HotRunner(BASE.__getitem__, heat_after_s=10**9)
    session = hot_session(runner, rounds=3)
    from dataclasses import replace as dc_replace

    session.rules = dc_replace(session.rules, round_length=2.0)
    base = session.plan.policy("block")
    longer = session._policy("block")
    assert longer.time_cap_s == pytest.approx(2 * base.time_cap_s) and longer.min_runs == 2 * base.min_runs


def test_scheduled_rounds_are_taken_whatever_the_quorum_says_and_a_budget_still_leaves_a_verdict():
    runner = HotRunner(BASE.__getitem__, heat_after_s=10**9)  # a quiet device: three rounds agree
    session = hot_session(runner, rounds=3, precision=None)
    from dataclasses import replace as dc_replace

    session.rules = dc_replace(session.rules, scheduled_rounds=5,
                               consensus=replace(session.rules.consensus, max_rounds=5))
    res = session.run([Target.of(c, "block") for c in BLOCKS], [Target.of(ANCHOR, "anchor")])
    assert all(res.verdicts[c.key].rounds == 5 and res.verdicts[c.key].agreed for c in BLOCKS)
    # A budget spent in the first wave (the probe alone takes 2 s): the quorum of its three rounds decides.
    runner = HotRunner(BASE.__getitem__, heat_after_s=10**9)
    session = hot_session(runner, rounds=3, precision=None, budget_s=3.0)
    session.rules = dc_replace(session.rules, scheduled_rounds=5,
                               consensus=replace(session.rules.consensus, max_rounds=5))
    res = session.run([Target.of(c, "block") for c in BLOCKS], [Target.of(ANCHOR, "anchor")])
    assert all(res.verdicts[c.key].rounds == 3 and res.verdicts[c.key].agreed for c in BLOCKS)


def test_short_rounds_and_rounds_without_ci_extension_reach_the_runner_policy():
    runner = HotRunner(BASE.__getitem__, heat_after_s=10**9)
    session = hot_session(runner, rounds=3)
    from dataclasses import replace as dc_replace

    base = session.plan.policy("block")
    session.rules = dc_replace(session.rules, extend_rounds=False)
    capped = session._policy("block")
    assert capped.target_ci >= 1.0 and capped.min_time_s == base.min_time_s and capped.min_runs == base.min_runs
    session.rules = dc_replace(session.rules, round_length=0.2, extend_rounds=False)
    short = session._policy("block")
    assert short.min_time_s == pytest.approx(0.2 * base.min_time_s) and short.target_ci >= 1.0
    assert short.min_runs == max(MIN_SHORT_RUNS, int(0.2 * base.min_runs)) < base.min_runs
    assert short.warmup_runs < base.warmup_runs and short.warmup_time_s == pytest.approx(0.2 * base.warmup_time_s)
    # Anchors read as often in time: five times as many short jobs between two readings.
    assert session._anchor_every() == 5 * session.plan.anchor_every
    # A short round stops as soon as its minimum is met, whatever its median's CI.
    samples = [1.0, 1.5] * (short.min_runs // 2 + 1)
    assert short.stop_reason(samples, short.min_time_s) == "ci"
    assert base.stop_reason(samples, base.min_time_s) is None
