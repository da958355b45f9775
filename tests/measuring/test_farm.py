"""The device farm on a private local Ray instance: scripted devices (a fixed cost per measurement)
in their own Ray actors, measured through the one MeasuringSession.

Sharding, rounds of an entry on different devices, journal rows carrying their device, anchors per
device, the pooling check (refusal in one line; a slightly slower device put on the time base),
a device lost mid-build with its work reassigned, and zero lost or duplicated journal rows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from latbench.measuring.farm.names import apply_ray_environment

# Before anything imports ray (it reads these once, at import): loopback only, no usage stats.
apply_ray_environment(loopback=True)

ray = pytest.importorskip("ray", reason="the device farm needs the 'cluster' extra")

from farm_devices import scripted  # noqa: E402

from latbench.blocks.configs import AttnConfig, FFNConfig  # noqa: E402
from latbench.core.errors import UsageError  # noqa: E402
from latbench.measuring.consensus import ConsensusRule  # noqa: E402
from latbench.measuring.farm.cluster import open_local_farm, start_local  # noqa: E402
from latbench.measuring.farm.dispatcher import PoolCheck  # noqa: E402
from latbench.measuring.journal import Journal  # noqa: E402
from latbench.measuring.session import MeasuringPlan, MeasuringSession, Target  # noqa: E402
from latbench.measuring.timebase import session_factors  # noqa: E402
from latbench.tables.build import measured_by  # noqa: E402

FAKES = Path(__file__).resolve().parents[1] / "fakes"
BLOCKS = [FFNConfig(224, 3, 96, 2), FFNConfig(224, 3, 96, 3), FFNConfig(224, 4, 176, 4), AttnConfig(224, 4, 176),
          FFNConfig(224, 4, 176, 3), FFNConfig(224, 3, 96, 4)]
ANCHORS = [AttnConfig(224, 3, 96)]
RULE = ConsensusRule()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One private Ray instance for the module; device actors import the fakes from tests/fakes."""
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAKES), os.environ.get("PYTHONPATH")) if p)
    stop = start_local()
    yield
    stop()


def farm(speeds: dict[str, float], *, pool: bool = True, **options):
    openers = {d: scripted(d, speed=s, sleep_s=0.02, **options.get(d, {})) for d, s in speeds.items()}
    return open_local_farm(list(speeds), openers, pool=PoolCheck(RULE) if pool else None)


def build(dispatcher, journal: Journal, rounds: int = 3):
    session = MeasuringSession(dispatcher, MeasuringPlan(rounds=rounds, min_separation_s=0.0, anchor_every=3),
                               journal=journal, export_jobs=1,
                               time_base=lambda j, s: session_factors(j, RULE, current=s))
    return session.run([Target.of(c, "block") for c in BLOCKS], [Target.of(a, "anchor") for a in ANCHORS])


def journal_rows(journal: Journal) -> list[tuple[str, int, str]]:
    return sorted(journal.db.execute("SELECT key, round, device FROM measurements").fetchall())


def assert_every_round_once(journal: Journal, rounds: int = 3) -> None:
    """Zero lost, zero duplicated: exactly one row per (key, round) the build asked for."""
    keys = sorted((k, r) for k, r, _ in journal_rows(journal))
    assert keys == sorted((c.key, r) for c in BLOCKS for r in range(rounds))


def test_rounds_are_sharded_and_each_entry_is_measured_on_several_devices():
    with farm({"scripted:A": 1.0, "scripted:B": 1.0}) as f:
        journal = Journal(":memory:")
        res = build(f, journal)
        report = f.report()
    assert_every_round_once(journal)
    rows = journal_rows(journal)
    per_device = {d: sum(1 for *_, dev in rows if dev == d) for d in ("scripted:A", "scripted:B")}
    assert sum(per_device.values()) == 18 and min(per_device.values()) >= 6  # both measured a fair share
    for c in BLOCKS:  # three rounds on two devices: never all on one
        assert {dev for k, _, dev in rows if k == c.key} == {"scripted:A", "scripted:B"}
    # Every device read the anchors itself, journalled per (session, device).
    anchor_devices = {a.device for a in journal.anchors(res.session)}
    assert anchor_devices == {"scripted:A", "scripted:B"}
    assert report["devices"]["scripted:A"]["jobs"] == per_device["scripted:A"]
    assert report["pool"]["refused"] == {} and not any(d["gone"] for d in report["devices"].values())


def test_a_device_slower_beyond_the_noise_is_refused_before_any_entry_is_measured():
    with farm({"scripted:A": 1.0, "scripted:B": 1.0, "scripted:C": 1.3}) as f:
        journal = Journal(":memory:")
        with pytest.raises(UsageError) as refused:
            build(f, journal)
        assert journal_rows(journal) == []  # only anchor readings were taken
        assert {a.device for a in journal.anchors()} == {"scripted:A", "scripted:B", "scripted:C"}
    msg = str(refused.value)
    assert "\n" not in msg and "scripted:C is 30.0% slower" in msg and "--separate-tables" in msg


def test_a_slightly_slower_device_is_pooled_on_the_time_base_and_meta_lists_relative_speeds():
    with farm({"scripted:A": 1.0, "scripted:B": 1.0}) as f:
        equal = build(f, Journal(":memory:"))
    with farm({"scripted:A": 1.0, "scripted:B": 1.03}) as f:
        journal = Journal(":memory:")
        res = build(f, journal)
        meta = measured_by(journal)
    # B's rounds are 3 % slow; on the time base (its first device's: A or B, whichever read its anchors
    # first) every entry is the equal-devices value times one common factor, whatever mix of A's and
    # B's rounds it has.
    ratios = [res.value(c.key) / equal.value(c.key) for c in BLOCKS]
    assert max(ratios) / min(ratios) == pytest.approx(1.0, abs=0.002)
    assert ratios[0] == pytest.approx(1.0, abs=0.002) or ratios[0] == pytest.approx(1.03, abs=0.002)
    assert set(meta["devices"]) == {"scripted:A", "scripted:B"}
    assert meta["devices"]["scripted:A"]["relative_speed"] == pytest.approx(1.0)
    assert meta["devices"]["scripted:B"]["relative_speed"] == pytest.approx(1 / 1.03, rel=1e-3)
    assert sum(d["rounds"] for d in meta["devices"].values()) == 18
    assert meta["pool"]["tolerance"] == 0.05 and meta["pool"]["fastest"] == "scripted:A"


def test_a_device_lost_mid_build_has_its_work_reassigned_and_nothing_is_lost_or_doubled():
    with farm({"scripted:A": 1.0, "scripted:B": 1.0}, **{"scripted:B": {"lost_after": 6}}) as f:
        journal = Journal(":memory:")
        build(f, journal)
        report = f.report()
    assert_every_round_once(journal)
    b = report["devices"]["scripted:B"]
    assert b["gone"] and "unplugged" in b["gone"]
    # B's six measurements include its anchor readings; what it never finished went to A.
    assert sum(1 for *_, dev in journal_rows(journal) if dev == "scripted:B") == b["jobs"] < 6
    assert report["devices"]["scripted:A"]["jobs"] == 18 - b["jobs"]


def test_separate_devices_may_differ_and_each_split_dispatcher_measures_alone():
    with farm({"scripted:A": 1.0, "scripted:B": 1.5}, pool=False) as f:
        parts = f.split()
        assert [p.device_id for p in parts] == ["scripted:A", "scripted:B"]
        a, b = Journal(":memory:"), Journal(":memory:")
        build(parts[0], a, rounds=1)
        build(parts[1], b, rounds=1)
    assert {dev for *_, dev in journal_rows(a)} == {"scripted:A"}
    assert {dev for *_, dev in journal_rows(b)} == {"scripted:B"}


def test_devices_of_different_models_are_not_pooled():
    openers = {"scripted:A": scripted("scripted:A"), "scripted:X": scripted("scripted:X", model="other")}
    with pytest.raises(UsageError, match=r"device_model: .*--separate-tables"):
        open_local_farm(list(openers), openers, pool=PoolCheck(RULE))
