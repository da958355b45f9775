"""One time base across sessions: anchors measured in every session say how fast the device was.

A host or phone is not equally fast on every day (or every hour): a table built in the morning
and re-checked, extended or validated in the afternoon must compare like with like. Every
session measures the table's anchor blocks alongside its own work; an anchor's *level* in a
session is the consensus of its readings there. The table's base session fixes the reference
levels; any other session's rounds are multiplied by median over anchors of reference / level.
Within a session nothing is normalised: bursts are shorter than the gaps between anchor
readings, and an anchor of one kind does not see the slowdowns that hit another (see the
README's measuring notes for the measurements behind this choice).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.journal import AnchorRow, Journal


def anchor_levels(anchors: Sequence[AnchorRow], rule: ConsensusRule) -> dict[str, float]:
    """Each anchor's level in a set of readings: the consensus of its readings (the fastest
    reading when there are fewer than a quorum)."""
    by: dict[str, list[float]] = {}
    for a in anchors:
        by.setdefault(a.key, []).append(rule.round_value(a.measurement))
    return {key: level_of(values, rule) for key, values in by.items()}


def level_of(values: Sequence[float], rule: ConsensusRule) -> float:
    """One anchor's level from its readings' round values: their consensus, or the fastest
    reading when there are fewer than a quorum."""
    return rule.decide(values).value if len(values) >= rule.quorum else min(values)


def session_factor(levels: Mapping[str, float], reference: Mapping[str, float]) -> float | None:
    """The factor that puts a session whose anchors read `levels` on the time base where they
    read `reference`: the median over shared anchors of reference / level (None without any)."""
    ratios = [reference[k] / levels[k] for k in levels if k in reference and levels[k] > 0 and reference[k] > 0]
    return statistics.median(ratios) if ratios else None


def group_factor(anchors: Sequence[AnchorRow], rule: ConsensusRule, reference: Mapping[str, float]) -> float | None:
    """The factor of one session on one device: the median over anchors whose level is a consensus
    (read at least `rule.quorum` times). A short session (a build killed a few measurements in, a
    resume with little left) may have single readings only, and one taken in a burst would move
    every round of the session: then the largest of their ratios (with slowdown-only noise the
    fastest reading is the least disturbed), and no factor from one reading alone, which cannot
    tell a burst from a slower session."""
    counts: dict[str, int] = {}
    for a in anchors:
        counts[a.key] = counts.get(a.key, 0) + 1
    levels = anchor_levels(anchors, rule)
    confirmed = session_factor({k: v for k, v in levels.items() if counts[k] >= rule.quorum}, reference)
    if confirmed is not None or len(anchors) < rule.quorum:
        return confirmed
    ratios = [reference[k] / v for k, v in levels.items() if k in reference and v > 0 and reference[k] > 0]
    return max(ratios) if ratios else None


def timebase_key(session: str | None, device: str | None) -> str:
    """What a time-base factor belongs to: one device in one session (several devices can measure
    in one session, each at its own speed)."""
    return f"{session or ''}@{device or ''}"


def by_session(journal: Journal) -> dict[str, list[AnchorRow]]:
    """Anchor readings per (session, device), keyed by timebase_key."""
    out: dict[str, list[AnchorRow]] = {}
    for a in journal.anchors():
        out.setdefault(timebase_key(a.session, a.device), []).append(a)
    return out


def base_levels(journal: Journal, rule: ConsensusRule, *, exclude: str | None = None) -> dict[str, Any] | None:
    """The journal's reference: the first session and device (not in session `exclude`, one still
    running) whose anchors were read at least `rule.min_rounds` times. Once found it is kept in
    the journal, so later sessions never move the table's time base."""
    saved = journal.get_meta("time_base")
    if saved and saved.get("levels"):
        return saved
    base = _first_base(by_session(journal), rule, lambda session: session != exclude)
    if base is not None:
        journal.set_meta("time_base", base)
    return base


def _first_base(groups: dict[str, list[AnchorRow]], rule: ConsensusRule, eligible) -> dict[str, Any] | None:
    for group, rows in groups.items():
        if not eligible(rows[0].session):
            continue
        counts: dict[str, int] = {}
        for a in rows:
            counts[a.key] = counts.get(a.key, 0) + 1
        if counts and max(counts.values()) >= rule.min_rounds:
            return {"session": group, "levels": anchor_levels(rows, rule), "readings": len(rows)}
    return None


def session_factors(journal: Journal, rule: ConsensusRule, *, current: str | None = None) -> dict[str, float]:
    """timebase_key(session, device) -> factor onto the journal's time base (1.0 for the base;
    groups without anchor readings are left as they are). `current`, a session still running,
    never becomes the base; while a journal has no base yet, the devices of `current` are put on
    the time base of its first device (provisionally, nothing is kept), so the rounds of one entry
    measured on several devices compare like with like from the first wave on."""
    groups = by_session(journal)
    base = base_levels(journal, rule, exclude=current)
    if base is None and current is not None:
        base = _first_base(groups, rule, lambda session: session == current)
    if base is None:
        return {}
    out = {}
    for group, rows in groups.items():
        if group == base["session"] or rows[0].session == base["session"]:  # (older journals: a session id)
            out[group] = 1.0
            continue
        f = group_factor(rows, rule, base["levels"])
        if f is not None:
            out[group] = f
    return out
