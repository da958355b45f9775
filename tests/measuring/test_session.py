"""MeasuringSession on a scripted device: interleaving, anchors, consensus re-measurement, resume."""

from __future__ import annotations

import pytest
from scripted_device import ScriptedRunner

from latbench.blocks.configs import AttnConfig, FFNConfig
from latbench.core.errors import DeviceError, DeviceLost
from latbench.measuring.journal import Journal
from latbench.measuring.measurement import Measurement, SamplingPolicy
from latbench.measuring.session import (
    Job,
    LocalDispatcher,
    MeasuringPlan,
    MeasuringSession,
    Target,
    interleave,
)

BLOCKS = [FFNConfig(224, 3, 96, 2), FFNConfig(224, 3, 96, 3), FFNConfig(224, 4, 176, 4), AttnConfig(224, 4, 176)]
ANCHOR = FFNConfig(224, 3, 96, 4)
BASE = {c.key: 0.2 + 0.1 * i for i, c in enumerate(BLOCKS)} | {ANCHOR.key: 0.4}
FAST_PLAN = dict(min_separation_s=0.0, anchor_every=2)


def targets():
    return [Target.of(c, "block") for c in BLOCKS]


def session(runner, journal=None, **plan):
    return MeasuringSession(runner, MeasuringPlan(**{**FAST_PLAN, **plan}), journal=journal, export_jobs=1)


def test_two_disturbed_rounds_of_three_yield_the_undisturbed_value():
    runner = ScriptedRunner(BASE.__getitem__)
    key = BLOCKS[1].key
    runner.slow(key, 1.25, 1.0, 1.35)  # rounds 0 and 2 hit by bursts; round 1 clean
    res = session(runner).run(targets(), [Target.of(ANCHOR, "anchor")])
    v = res.verdicts[key]
    assert v.agreed and v.rounds == 4 and runner.measurements_of(key) == 4
    assert v.value == pytest.approx(BASE[key], rel=0.01)  # the median of round medians would say 1.25x
    assert all(res.verdicts[c.key].rounds == 3 for c in BLOCKS if c.key != key)
    assert [w["jobs"] for w in res.report["waves"]] == [12, 1]
    assert res.report["no_consensus"] == []


def test_rounds_are_interleaved_randomly_with_anchors_and_each_role_gets_its_policy():
    runner = ScriptedRunner(BASE.__getitem__)
    model_policy = SamplingPolicy.fixed(7, 1)
    ts = targets()
    ts[0] = Target.of(BLOCKS[0], "model")
    plan = dict(policies={"block": SamplingPolicy.fixed(5, 1), "model": model_policy,
                          "anchor": SamplingPolicy.fixed(3, 1)})
    session(runner, **plan).run(ts, [Target.of(ANCHOR, "anchor")])
    labels = [c[0] for c in runner.calls]
    work = [k for k in labels if k != ANCHOR.key]
    assert labels[0] == ANCHOR.key and labels[-1] == ANCHOR.key
    # Every round visits every block before the next round starts, in a fresh order.
    rounds = [work[i:i + 4] for i in range(0, 12, 4)]
    assert all(sorted(r) == sorted(BASE_KEYS) for r in rounds) and len({tuple(r) for r in rounds}) > 1
    # An anchor after every second block.
    gaps = [i for i, k in enumerate(labels) if k == ANCHOR.key]
    assert all(b - a <= 3 for a, b in zip(gaps, gaps[1:]))
    for label, policy, _ in runner.calls:
        expect = {ANCHOR.key: 3, BLOCKS[0].key: 7}.get(label, 5)
        assert policy.runs == expect


@pytest.mark.parametrize("anchor_every", [1, 3, 4, 7])
def test_a_wave_run_in_parts_reads_its_anchors_as_the_whole_wave_would(anchor_every):
    """The session runs a wave in parts (to read the device again between them); where anchors
    fall and which one is read must not move: one extra anchor per part left a simulated entry 34 % off."""
    policy = SamplingPolicy.fixed(5, 1)
    jobs = [Job(f"k{i}", 0, "block", policy) for i in range(23)]
    anchors = [Job(f"a{i}", 0, "anchor", policy) for i in range(3)]
    whole = [(j.key, a) for j, a in interleave(jobs, anchors, anchor_every)]
    step = anchor_every * 2  # parts end where the whole wave reads an anchor
    dispatcher = LocalDispatcher(ScriptedRunner(lambda key: 0.2))
    dispatcher.measure = lambda job: Measurement(job.key, [0.2] * 5)  # the order is what is checked
    seen = []
    for n, start in enumerate(range(0, len(jobs), step)):
        dispatcher.execute(jobs[start:start + step], anchors, anchor_every,
                           lambda res, is_anchor: seen.append((res.job.key, is_anchor)), part=n)
    assert seen == whole


BASE_KEYS = [c.key for c in BLOCKS]


def test_an_unplugged_device_loses_nothing_and_a_rerun_measures_only_the_rest(tmp_path):
    path = tmp_path / "journal.sqlite"
    runner = ScriptedRunner(BASE.__getitem__, lost_after=7)
    with Journal(path) as journal, pytest.raises(DeviceLost) as lost:
        session(runner, journal).run(targets(), [Target.of(ANCHOR, "anchor")])
    with Journal(path) as journal:
        first = {(k, r.round) for k, rows in journal.rows().items() for r in rows}
    assert 0 < len(first) < 12
    assert lost.value.unmeasured  # what was still to do
    again = ScriptedRunner(BASE.__getitem__)
    with Journal(path) as journal:
        res = session(again, journal).run(targets(), [Target.of(ANCHOR, "anchor")])
        rows = journal.rows()
    assert sum(1 for c in again.calls if c[0] != ANCHOR.key) == 12 - len(first)
    assert sorted((k, r.round) for k, rs in rows.items() for r in rs) == sorted(
        (c.key, r) for c in BLOCKS for r in range(3))
    assert len({r.session for rs in rows.values() for r in rs}) == 2
    assert all(v.agreed for v in res.verdicts.values())
    # Nothing left: a third run measures nothing at all, anchors included.
    idle = ScriptedRunner(BASE.__getitem__)
    with Journal(path) as journal:
        res = session(idle, journal).run(targets(), [Target.of(ANCHOR, "anchor")])
    assert idle.calls == [] and res.measured == []


def test_a_failing_benchmark_stops_the_session_after_committing_what_was_done(tmp_path):
    runner = ScriptedRunner(BASE.__getitem__, fail={BLOCKS[2].key})
    with Journal(tmp_path / "j.sqlite") as journal:
        with pytest.raises(DeviceError, match="benchmark failed"):
            session(runner, journal).run(targets())
        done = journal.rows()
    assert BLOCKS[2].key not in done and sum(len(v) for v in done.values()) == len(runner.calls) - 1


def test_recheck_asks_for_more_rounds_and_extra_rounds_are_separated_in_time(tmp_path):
    runner = ScriptedRunner(BASE.__getitem__, sleep_s=0.005)
    key = BLOCKS[3].key
    asked = []

    def recheck(verdicts):
        more = [key] if verdicts[key].rounds < 5 else []
        asked.append(more)
        return more

    with Journal(tmp_path / "j.sqlite") as journal:
        res = MeasuringSession(runner, MeasuringPlan(anchor_every=2, min_separation_s=0.3), journal=journal,
                               recheck=recheck, export_jobs=1).run(targets(), [Target.of(ANCHOR, "anchor")])
        rows = journal.rows()[key]
    assert res.verdicts[key].rounds == 5 and len(asked) >= 3
    # Each extra round waited for the separation (the gap was filled with anchor readings).
    assert rows[3].measured_at - rows[2].measured_at >= 0.3
    assert rows[4].measured_at - rows[3].measured_at >= 0.3
    assert len(res.anchors) > 6


def test_every_round_after_the_first_gets_a_renewed_instance():
    runner = ScriptedRunner(BASE.__getitem__)
    session(runner).run(targets(), [Target.of(ANCHOR, "anchor")])
    for c in BLOCKS:
        assert runner.renewed.count(c.key) == runner.measurements_of(c.key) - 1
    assert runner.renewed.count(ANCHOR.key) == runner.measurements_of(ANCHOR.key) - 1


def test_a_resumed_session_whose_later_wave_reopens_an_entry_finished_earlier(tmp_path):
    """The crash seen on a second host: a resumed build's second wave asked for another round of
    an entry finished in the earlier session, which had no prepared artifact (KeyError)."""
    path = tmp_path / "journal.sqlite"
    done, rest = BLOCKS[:2], BLOCKS[2:]
    with Journal(path) as journal:
        session(ScriptedRunner(BASE.__getitem__), journal).run([Target.of(c, "block") for c in done],
                                                                [Target.of(ANCHOR, "anchor")])
    reopened = done[0].key

    def recheck(verdicts):  # re-opens a finished entry once the first wave has measured the rest
        return [reopened] if all(verdicts[c.key].rounds >= 3 for c in rest) else []

    again = ScriptedRunner(BASE.__getitem__)
    with Journal(path) as journal:
        s = MeasuringSession(again, MeasuringPlan(**FAST_PLAN), journal=journal, export_jobs=1, recheck=recheck)
        res = s.run(targets(), [Target.of(ANCHOR, "anchor")])
        rows = journal.rows()
    assert [w["jobs"] for w in res.report["waves"]][:2] == [6, 1]  # wave 0: the rest; wave 1: the re-opened
    assert again.measurements_of(reopened) >= 1 and again.measurements_of(done[1].key) == 0
    assert sorted(r.round for r in rows[reopened]) == list(range(len(rows[reopened])))
    assert len(rows[reopened]) >= 4 and res.verdicts[reopened].value == pytest.approx(BASE[reopened], rel=0.01)
