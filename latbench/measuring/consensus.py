"""When is a latency accepted? Per-round statistics and the consensus of rounds.

Noise on a shared host or a phone is slowdown-only and bursty: neighbours, memory-bandwidth
contention, frequency drops and thermal throttling make runs slower, never faster, and a slowdown
often lasts a whole round. So:

* each round (one measurement: warm-up plus many timed runs) is summarised by a *low* statistic
  of its samples, which ignores the part of a round a burst hit;
* a latency is accepted only when the fastest rounds agree: the fastest round and at least
  `quorum - 1` others lie within `tolerance` of it. The accepted value is the median of those
  agreeing rounds. Two disturbed rounds that happen to agree with each other, above a faster
  one, do not make a consensus: the measuring session schedules more rounds, later and
  interleaved with other work, up to `max_rounds`;
* an entry whose rounds never agree is flagged; its value is then the fastest round: with
  slowdown-only noise the fastest round is the one least disturbed (measured: the lowest
  agreeing pair of slower rounds was wrong by 20-50 % where the fastest was within 2 %).

The statistic (p2: the 2nd percentile of a round's samples), the tolerance (2 %) and the quorum
(2) were chosen by measurement on a noisy 2-core host (benchmarks/study_round_statistics.py; the
README's measuring notes give the figures) and are recorded in every table's meta.json.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from latbench.core.errors import UsageError
from latbench.measuring.measurement import Measurement, percentile

#: Per-round statistics a rule may use: the name and the percentile of the round's samples.
ROUND_STATISTICS = {"median": 50.0, "p25": 25.0, "p10": 10.0, "p5": 5.0, "p2": 2.0, "min": 0.0}


@dataclass(frozen=True)
class Verdict:
    """What the rounds of one entry say."""

    value: float  # the accepted (or, without consensus, the fallback) latency, ms
    agreed: bool
    members: tuple[int, ...]  # indices (into the values given) of the rounds the value comes from
    rounds: int
    spread: float  # relative spread of the member rounds (max / min - 1)
    needs_more: bool  # no consensus yet and the rule allows another round

    @property
    def agreement(self) -> str:
        """'k/n': how many of the rounds agree with the fastest."""
        return f"{len(self.members) if self.agreed else 0}/{self.rounds}"

    def to_dict(self) -> dict[str, Any]:
        return {"value_ms": self.value, "agreed": self.agreed, "members": list(self.members),
                "rounds": self.rounds, "spread": self.spread, "agreement": self.agreement}


@dataclass(frozen=True)
class ConsensusRule:
    statistic: str = "p2"
    tolerance: float = 0.02
    quorum: int = 2
    min_rounds: int = 3
    max_rounds: int = 8
    #: Rounds this close in absolute terms agree whatever their ratio: entries of a few tens of
    #: microseconds (the empty models) would otherwise never agree within a relative tolerance.
    floor_ms: float = 0.002

    def __post_init__(self) -> None:
        if self.statistic not in ROUND_STATISTICS:
            raise UsageError(f"unknown round statistic {self.statistic!r}: one of {', '.join(ROUND_STATISTICS)}")
        if not 0 < self.tolerance < 1:
            raise UsageError(f"consensus tolerance must be in (0, 1), got {self.tolerance}")
        if self.quorum < 1 or self.min_rounds < 1 or self.max_rounds < max(self.min_rounds, self.quorum):
            raise UsageError("consensus needs quorum >= 1, min_rounds >= 1 and max_rounds >= both "
                             f"(got quorum {self.quorum}, rounds {self.min_rounds}..{self.max_rounds})")

    @classmethod
    def for_rounds(cls, rounds: int, max_rounds: int | None = None, **changes: Any) -> ConsensusRule:
        """The default rule for a caller asking for `rounds` rounds: fewer rounds lower the quorum
        and the minimum with them (one round is accepted as it is)."""
        d = cls(**changes)
        rounds = max(1, rounds)
        return cls(**{**changes, "quorum": min(d.quorum, rounds), "min_rounds": min(d.min_rounds, rounds),
                      "max_rounds": max(max_rounds or d.max_rounds, rounds)})

    def round_value(self, m: Measurement) -> float:
        """The statistic of one round's samples (ms)."""
        if not m.samples_ms:
            return math.nan
        return percentile(sorted(m.samples_ms), ROUND_STATISTICS[self.statistic])

    def decide(self, values: Sequence[float]) -> Verdict:
        """The verdict on one entry's round values (already on one time base)."""
        vals = [float(v) for v in values]
        finite = sorted((v, i) for i, v in enumerate(vals) if math.isfinite(v) and v > 0)
        n = len(vals)
        if not finite:
            return Verdict(math.nan, False, (), n, math.nan, n < self.max_rounds)
        fastest = finite[0][0]
        members = [i for v, i in finite if self._agree(fastest, v)]
        agreed = len(members) >= self.quorum and n >= self.min_rounds
        if not agreed and n >= self.min_rounds:
            members = [finite[0][1]]  # the least disturbed round
        value = statistics.median(vals[i] for i in members)
        spread = max(vals[i] for i in members) / min(vals[i] for i in members) - 1
        needs_more = not agreed and n < self.max_rounds
        return Verdict(value, agreed, tuple(sorted(members)), n, spread, needs_more)

    def _agree(self, low: float, high: float) -> bool:
        return high <= low * (1 + self.tolerance) or high - low <= self.floor_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "rule": (f"per-round {self.statistic}; accepted when the fastest round and at least "
                              f"{self.quorum - 1} other(s) agree within {self.tolerance:.0%} (or {self.floor_ms * 1e3:g} us); otherwise more "
                              f"rounds, later, up to {self.max_rounds}; then flagged")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConsensusRule:
        known = {k: data[k] for k in ("statistic", "tolerance", "quorum", "min_rounds", "max_rounds", "floor_ms")
                 if k in data}
        return cls(**known)
