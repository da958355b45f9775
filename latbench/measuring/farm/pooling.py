"""May these devices share one table? Their speeds, compared on what they all measured.

Devices of one model are not equally fast: a unit runs warmer, another has background load or an
older OS build. The measuring session already puts each device of a session on the table's time
base by its anchors (latbench.measuring.timebase: a factor per session and device), so a uniform
difference of a few per cent is corrected. A device much slower than the others is another
matter: whatever slows it (throttling, a different memory configuration, a busy phone) does not
slow every kind of block alike, and one factor cannot correct it.

So before entries are measured every device reads every anchor a quorum of times, and after the
first wave the rounds of entries measured on several devices are compared too. Each device's
*relative latency* is the median over the shared anchors (or entries) of its level over the
fastest device's level (1.0 for the fastest). A device whose relative latency exceeds 1 + the
pooling tolerance (default 5 %, the same bound that flags a drifting anchor within a session,
and well above the 2 % within which rounds of one entry must agree) is refused.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.timebase import level_of

DEFAULT_TOLERANCE = 0.05
#: Entries two devices both measured before their comparison counts.
MIN_SHARED_ENTRIES = 3


@dataclass
class PoolVerdict:
    """Relative latencies of the devices of a pool and whether they may share a table."""

    tolerance: float
    fastest: str | None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # farm id -> why

    @property
    def ok(self) -> bool:
        return not self.refused

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "fastest": self.fastest, "devices": self.devices,
                "refused": self.refused,
                "rule": f"devices are pooled when each is at most {self.tolerance:.0%} slower than the fastest, "
                        f"by the median over the anchors (and over entries {MIN_SHARED_ENTRIES}+ shared) of level "
                        f"ratios; within that, each device is put on the table's time base by its anchors"}

    def message(self) -> str:
        """One line: who is slower than whom by how much."""
        worst = max(self.refused, key=lambda d: self._latency(d))
        return self.refused[worst] + (f" (and {len(self.refused) - 1} more device(s))" if len(self.refused) > 1 else "")

    def _latency(self, fid: str) -> float:
        d = self.devices[fid]
        return max(x for x in (d.get("relative_latency"), d.get("shared_relative_latency")) if x is not None)


def relative_latencies(values: Mapping[str, Mapping[str, float]], min_keys: int = 1) -> dict[str, tuple[float, int]]:
    """device -> (median over the keys it shares with the reference device of its value / the
    reference's, keys compared), scaled so the fastest device gets 1.0. The reference is the
    device with the most keys; devices sharing fewer than `min_keys` with it are left out, and so
    is everything when fewer than two devices remain."""
    devices = [d for d, v in values.items() if v]
    if len(devices) < 2:
        return {}
    ref = max(devices, key=lambda d: len(values[d]))
    raw: dict[str, tuple[float, int]] = {}
    for d in devices:
        ratios = [values[d][k] / values[ref][k] for k in values[d] if k in values[ref] and values[ref][k] > 0]
        if len(ratios) >= min_keys:
            raw[d] = (statistics.median(ratios), len(ratios))
    if len(raw) < 2:
        return {}
    fastest = min(r for r, _ in raw.values())
    return {d: (r / fastest, n) for d, (r, n) in raw.items()}


def compare_devices(anchors: Mapping[str, Mapping[str, Sequence[float]]],
                    entries: Mapping[str, Mapping[str, Sequence[float]]], rule: ConsensusRule,
                    tolerance: float = DEFAULT_TOLERANCE) -> PoolVerdict:
    """The verdict on a pool from the round values (the rule's statistic, ms) of its anchor
    readings (device -> anchor key -> values) and of entries measured on several devices
    (entry key -> device -> values)."""
    levels = {d: {k: level_of(v, rule) for k, v in per.items() if v} for d, per in anchors.items()}
    by_anchor = relative_latencies(levels)
    shared: dict[str, dict[str, float]] = {}
    for key, per in entries.items():
        if sum(1 for v in per.values() if v) >= 2:
            for d, values in per.items():
                if values:
                    shared.setdefault(d, {})[key] = min(values)  # the least disturbed round
    by_entry = relative_latencies(shared, MIN_SHARED_ENTRIES)
    verdict = PoolVerdict(tolerance, min(by_anchor, key=lambda d: by_anchor[d][0]) if by_anchor else None)
    for d in sorted(set(levels) | set(shared)):
        rel, n = by_anchor.get(d, (None, 0))
        srel, sn = by_entry.get(d, (None, 0))
        verdict.devices[d] = {"relative_latency": rel, "relative_speed": None if rel is None else 1 / rel,
                              "anchors_compared": n, "anchor_readings": sum(len(v) for v in anchors.get(d, {}).values()),
                              "shared_relative_latency": srel, "shared_entries": sn}
        for basis, value, count in (("anchors", rel, n), ("entries measured on both", srel, sn)):
            if value is not None and value - 1 > tolerance and d not in verdict.refused:
                verdict.refused[d] = (f"{d} is {value - 1:.1%} slower than the fastest device of the pool on the "
                                      f"{basis} ({count} compared), beyond the {tolerance:.0%} pooling tolerance")
    return verdict
