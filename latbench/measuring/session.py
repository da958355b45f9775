"""One measuring session: export -> prepare -> interleaved rounds -> consensus -> journal.

Every command that measures goes through `MeasuringSession`: building and checking a table,
validating it, `mes report --measure` and `profile`. A session

1. exports what it measures through the content-addressed cache (once per artifact);
2. prepares each artifact on the device (through a `Dispatcher`: one local runner, or a farm);
3. measures in *waves*: each wave visits the (key, round) pairs still needed in a fresh random
   order, with anchor measurements every `anchor_every` targets, and commits every result to
   the journal the moment it is taken (a killed session loses nothing; a rerun measures only
   what the journal lacks);
4. after each wave, asks the consensus rule which entries' rounds agree; entries without
   consensus (and entries a caller-supplied check calls implausible) get another round in the
   next wave, up to the rule's bound, so rounds of one entry are taken at different times;
5. returns the rows, the verdicts and a report (anchor drift, throttling, failures, timings).

The sampling policy of each role (block, model, anchor) is handed to the runner with every
measurement; nothing is patched onto the runner.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any, Protocol

from latbench.core.errors import DeviceLost, ExportError, UsageError
from latbench.core.progress import ProgressFn, no_progress
from latbench.measuring.consensus import ConsensusRule, Verdict
from latbench.measuring.journal import AnchorRow, Journal, JournalRow
from latbench.measuring.measurement import Measurement, SamplingPolicy
from latbench.measuring.noise import (
    SLOW_STATE,
    SPACING_POLL,
    HeatRule,
    MeasuringRules,
    NoiseProfile,
    derive_rules,
    journal_profile,
)
from latbench.measuring.periods import PeriodRule, confirmed_by_period, journal_slow_periods
from latbench.measuring.timebase import anchor_levels, base_levels, timebase_key

#: The longest an extra round waits after the entry's previous one (the doubling stops there).
MAX_WAIT_S = 16.0
#: Rounds an entry named slow-period may take beyond the rule's bound in a session of few entries,
#: and the least spacing of each (doubled per round, up to MAX_WAIT_S): with waits of 16 s its
#: rounds then span over a minute, longer than the slow spells of the simulated vm-bursts device.
SLOW_EXTRA_ROUNDS = 4
SLOW_EXTRA_SPACING_S = 2.0
#: ... and the rounds beyond the bound an entry takes before they must have found something faster.
SLOW_EXTRA_JUDGED_AFTER = 2
#: While waiting to space an entry's rounds, an anchor is read this often to see whether the
#: device is still slow (on a phone: a round of well under a second per two idle seconds).
POLL_S = 2.0
#: A session that ends sooner than this after its first reading reads its anchors, idling between,
#: until then (or until one reads faster than ever before): a slow state that lasts from its start
#: to its end is otherwise the device's level for everything it measured. A simulated vm-bursts
#: device gave an adapt that ended in 39 s inside a 30 % slow spell a table 34 % off, nothing
#: flagged. Longer than every slow stretch in this VM's full builds (at most 38 s over 1,900 s of
#: anchor readings) and than the simulated device's single spells (10-50 s), but no bound: its
#: chained spells outlast it in 3.4 % of 60 s windows (80 and 99 s at seeds 0 and 11), and a `cpu
#: --threads 2` adapt here ran its whole minute in a state 1.5x slow (the next one saw such a state
#: last 64 s; stop 42). $LATBENCH_LEVEL_SPAN_S overrides it (seconds; 0: no check).
LEVEL_SPAN_S = 60.0
LEVEL_SPAN_ENV = "LATBENCH_LEVEL_SPAN_S"
#: Idle steps (of HeatRule.step_s) a build ending with slow anchors waits to see it cool.
END_CHECK_STEPS = 6
#: ... when its anchors read slow for this share of the heat rule's span at least (15 s of the
#: default 90 s), or in a state they never read before. A simulated phone that began to throttle
#: in a build's last 16 s (four anchor readings) set its typical latency 4 % high when this was a
#: third (seeds 1 and 2 of bench_noise); this VM's slow spells of 10-15 s stay under it, and a
#: longer one that ends by itself costs one idle step and a round for what it measured.
END_SLOW_SHARE = 1 / 6
#: A wave on a dispatcher that measures its jobs one at a time, in order, runs in parts of this
#: many jobs, and whether rounds sample on towards their CI target is read again from the device
#: between them (the rest of the rules change between waves only).
REREAD_EVERY = 30
#: Short rounds (rules' round_length < 1) take at least this many runs, whatever the plan's minimum
#: times the length: their statistic (a low percentile) must still rest on several runs.
MIN_SHORT_RUNS = 8
#: ... and at least this many warm-up runs (a fresh session's first runs are its slowest)
MIN_SHORT_WARMUP = 3
#: ... and stop once the plan's shortened minimum is met: a CI target every round meets.
SHORT_ROUND_CI = 1.0

#: Default sampling per role: many short measurements beat one long one on a drifting device.
DEFAULT_POLICIES: dict[str, SamplingPolicy] = {
    "block": SamplingPolicy(warmup_runs=10, warmup_time_s=0.05, time_cap_s=1.5, min_time_s=0.3),
    "model": SamplingPolicy(warmup_runs=10, warmup_time_s=0.1, time_cap_s=4.0, min_time_s=0.3),
    "anchor": SamplingPolicy(warmup_runs=10, warmup_time_s=0.05, time_cap_s=1.0, min_time_s=0.3),
}


@dataclass(frozen=True)
class Target:
    """One thing to measure: an exportable item (BlockConfig, Candidate) under a role."""

    key: str
    item: Any
    role: str  # "block", "model" or "anchor"

    @classmethod
    def of(cls, item: Any, role: str) -> Target:
        return cls(item.key, item, role)


@dataclass(frozen=True)
class Artifact:
    key: str
    path: Path
    content_hash: str


@dataclass(frozen=True)
class ArtifactItem:
    """An artifact given as a file (.onnx, .mlpackage, .tflite): measured as it is, never exported."""

    path: Path
    content_hash: str

    @classmethod
    def of(cls, path: Path) -> ArtifactItem:
        from latbench.core.hashing import tree_sha256

        return cls(Path(path), tree_sha256(path))

    @property
    def key(self) -> str:
        return f"file-{self.path.stem}-{self.content_hash[:12]}"

    def fields(self) -> dict[str, Any]:
        return {"kind": "artifact", "path": str(self.path), "content_hash": self.content_hash}


@dataclass(frozen=True)
class Job:
    """One (key, round) measurement a dispatcher runs."""

    key: str
    round: int
    role: str
    policy: SamplingPolicy
    profile: bool = False


@dataclass(frozen=True)
class JobResult:
    job: Job
    device: str
    measurement: Measurement


@dataclass
class MeasuringPlan:
    """How a session samples and when it accepts a latency."""

    rounds: int = 3  # rounds every target gets; consensus may ask for more, up to consensus.max_rounds
    consensus: ConsensusRule = field(default_factory=ConsensusRule)
    policies: dict[str, SamplingPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    anchor_every: int = 12
    seed: int = 0
    profile: bool = False  # per-op breakdown in the first round of every target
    #: An extra round of an entry waits at least this long after its previous round (anchors
    #: fill the gap), so a burst that spoiled one round is less likely to spoil the next.
    min_separation_s: float = 2.0
    drift_tolerance: float = 0.05
    #: Entries whose value was taken only in slow periods get more rounds (None: no such check).
    periods: PeriodRule | None = field(default_factory=PeriodRule)
    #: Rules derived from the device's noise profile, holding entries to this precision where the
    #: device allows (latbench.measuring.noise); None: `consensus` as given.
    precision: float | None = None
    #: Anchor rounds (per anchor) the session starts with to profile the device.
    probe_rounds: int = 0
    #: Device seconds after which no further wave starts; the report states what was reached.
    budget_s: float | None = None
    #: Cool-down pauses for a device that throttles (None: never pause).
    heat: HeatRule | None = None

    def policy(self, role: str) -> SamplingPolicy:
        return self.policies.get(role) or self.policies.get("block") or SamplingPolicy()

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "consensus": self.consensus.to_dict(), "anchor_every": self.anchor_every,
                "seed": self.seed, "profile": self.profile, "min_separation_s": self.min_separation_s,
                "periods": None if self.periods is None else self.periods.to_dict(),
                "precision": self.precision, "probe_rounds": self.probe_rounds, "budget_s": self.budget_s,
                "heat": None if self.heat is None else self.heat.to_dict(),
                "policies": {k: p.to_dict() for k, p in self.policies.items()}}


class Dispatcher(Protocol):
    """Where jobs run: one local runner (LocalDispatcher) or several devices."""

    artifact_format: str
    device_id: str

    def describe(self) -> dict[str, Any]: ...

    def prepare(self, artifacts: Mapping[str, Artifact], progress: ProgressFn) -> None: ...

    def execute(self, jobs: Sequence[Job], anchors: Sequence[Job], anchor_every: int,
                on_result: Callable[[JobResult, bool], None]) -> Sequence[Job] | None:
        """Run `jobs` (interleaving anchor jobs, rotating through `anchors`: first, after every
        `anchor_every` jobs and last, on every device measured); call on_result(result, is_anchor)
        as each finishes. Return the jobs left pending on purpose (a detached remote service),
        which ends the session without deciding them; None or [] when all were measured.

        Optional: `attach(journal, session)`, called once the session has started, for
        dispatchers that keep their own records in the journal (remote job ids, devices)."""
        ...


def interleave(jobs: Sequence[Job], anchors: Sequence[Job], anchor_every: int, *, lead: bool = True,
               turn: int = 0) -> list[tuple[Job, bool]]:
    """The order a dispatcher runs a wave in, as (job, is_anchor): an anchor first, one after
    every `anchor_every` jobs and one last, rotating through `anchors` from the `turn`-th. Without
    `lead`, no anchor first (a wave's later part: the part before ended with one)."""
    order: list[tuple[Job, bool]] = []

    def anchor() -> None:
        nonlocal turn
        if anchors:
            order.append((anchors[turn % len(anchors)], True))
            turn += 1

    if lead:
        anchor()
    for i, job in enumerate(jobs):
        order.append((job, False))
        if (i + 1) % anchor_every == 0 and i + 1 < len(jobs):
            anchor()
    if jobs:
        anchor()
    return order


def device_clock(device: Any) -> Callable[[], float]:
    """The clock of a runner or dispatcher (Runner.now; wall time for those without one)."""
    return getattr(device, "now", None) or time.time


def device_idle(device: Any) -> Callable[[float], None]:
    """How to leave a runner or dispatcher without load for some seconds (Runner.idle)."""
    return getattr(device, "idle", None) or (lambda seconds: time.sleep(max(0.0, seconds)))


def as_dispatcher(device: Any) -> Any:
    """A dispatcher for `device`: itself if it is one, the runner's own if it offers one (a
    remote service that submits and collects asynchronously), else a LocalDispatcher."""
    if hasattr(device, "execute"):
        return device
    if hasattr(device, "dispatcher"):
        return device.dispatcher()
    return LocalDispatcher(device)


class LocalDispatcher:
    """Jobs run one after the other on one open runner. Every measurement after an artifact's
    first gets a renewed instance of it (Runner.renew: a fresh session), so rounds sample the
    device's memory layouts as well as its moments."""

    #: Measures a wave's jobs one at a time, in order: a wave split into parts costs nothing, and
    #: `execute` takes `part=` (the parts read their anchors as the whole wave would).
    in_order = True

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.artifact_format = runner.artifact_format
        self.device_id = runner.device_id
        self.prepared: dict[str, Any] = {}
        self._used: set[str] = set()
        self._turn = 0  # anchors read so far in the wave in progress (their rotation goes on across its parts)

    def describe(self) -> dict[str, Any]:
        return self.runner.describe()

    def now(self) -> float:
        return device_clock(self.runner)()

    def idle(self, seconds: float) -> None:
        device_idle(self.runner)(seconds)

    def throttling(self) -> bool | None:
        probe = getattr(self.runner, "throttling", None)
        return probe() if probe else None

    def prepare(self, artifacts: Mapping[str, Artifact], progress: ProgressFn) -> None:
        todo = [k for k in artifacts if k not in self.prepared]
        for i, key in enumerate(todo):
            a = artifacts[key]
            self.prepared[key] = self.runner.prepare(a.path, a.content_hash, label=key)
            progress("prepare", i + 1, len(todo))

    def execute(self, jobs: Sequence[Job], anchors: Sequence[Job], anchor_every: int,
                on_result: Callable[[JobResult, bool], None], *, part: int = 0) -> None:
        """`part`: the wave's how-manieth part this is (in_order): the parts run as the whole wave would."""
        order = interleave(jobs, anchors, anchor_every, lead=part == 0, turn=self._turn if part else 0)
        self._turn = (self._turn if part else 0) + sum(a for _, a in order)
        for pos, (job, is_anchor) in enumerate(order):
            try:
                m = self.measure(job)
            except DeviceLost as e:
                left = list(dict.fromkeys(j.key for j, a in order[pos:] if not a))
                raise DeviceLost(str(e), unmeasured=left) from e
            on_result(JobResult(job, self.device_id, m), is_anchor)

    def measure(self, job: Job) -> Measurement:
        """One job on the prepared artifact of its key (a renewed instance after its first use)."""
        if job.key in self._used:
            self.prepared[job.key] = self.runner.renew(self.prepared[job.key])
        self._used.add(job.key)
        return self.runner.measure(self.prepared[job.key], job.policy, profile=job.profile)


@dataclass
class SessionResult:
    session: str
    device: dict[str, Any]
    rows: dict[str, list[JournalRow]]  # every round of every target, the journal's included
    verdicts: dict[str, Verdict]
    anchors: list[AnchorRow]  # this session's anchor measurements
    measured: list[str] = field(default_factory=list)  # "key#round" measured by this session
    report: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def value(self, key: str) -> float:
        return self.verdicts[key].value

    def measurements(self, key: str) -> list[Measurement]:
        return [r.measurement for r in self.rows.get(key, [])]


class MeasuringSession:
    """Measure targets on a device until their rounds agree; see the module docstring.

    `time_base(journal, session)` returns session id -> factor onto a common time base (default:
    none); `recheck(verdicts)` names entries that need another round for reasons beyond their
    own rounds (a plausibility check across entries).
    """

    def __init__(self, dispatcher: Any, plan: MeasuringPlan | None = None, *, journal: Journal | None = None,
                 purpose: str = "measure", progress: ProgressFn | None = None, export_jobs: int = 2,
                 precision: str | None = None,
                 time_base: Callable[[Journal, str], Mapping[str, float]] | None = None,
                 recheck: Callable[[dict[str, Verdict]], Iterable[str]] | None = None) -> None:
        self.dispatcher = as_dispatcher(dispatcher)
        self.clock = device_clock(self.dispatcher)
        self.plan = plan or MeasuringPlan()
        if self.plan.rounds < 1 or self.plan.anchor_every < 1:
            raise UsageError("measurement rounds and anchor_every must be >= 1")
        self.journal = journal if journal is not None else Journal(":memory:")
        self.purpose = purpose
        self.progress = progress or no_progress
        self.export_jobs = export_jobs
        self.precision = precision
        # A device that cannot run artifacts of this precision says so before anything is exported.
        check_precision = getattr(getattr(self.dispatcher, "runner", None), "check_precision", None)
        if precision is not None and callable(check_precision):
            check_precision(precision)
        self.time_base = time_base or (lambda journal, session: {})
        self.recheck = recheck
        self.timings: dict[str, float] = {"export_s": 0.0, "prepare_s": 0.0, "measure_wall_s": 0.0,
                                          "timed_runs_s": 0.0}
        # State of the run in progress.
        self.session = ""
        self._targets: dict[str, Target] = {}
        self.artifacts: dict[str, Artifact] = {}  # what the run in progress measures
        self._measured: list[str] = []
        self._total = 0
        self._anchor_seq = 0
        self._last_end: dict[str, float] = {}
        self._throttled: list[str] = []
        self._pending: list[Job] = []
        self._factors: Mapping[str, float] = {}
        self.rules = MeasuringRules(self.plan.consensus, False, self.plan.min_separation_s,
                                    self.plan.precision or self.plan.consensus.tolerance, "as given")
        self.profile: NoiseProfile | None = None
        self.pauses: list[dict[str, Any]] = []
        self._anchor_ratios: list[tuple[float, float]] = []
        self._hot_keys: set[str] = set()
        self._end_heat_checked = False
        self._level_checked = False
        self.level_span_s = level_span_s()
        self.level_check: dict[str, Any] | None = None
        self._cooling = False
        self._started_at = 0.0
        self._last_anchor_ratio: float | None = None
        self._polling = False
        self._anchor_jobs: list[Job] = []

    # -- the session --------------------------------------------------------------------------
    def run(self, targets: Sequence[Target], anchors: Sequence[Target] = ()) -> SessionResult:
        self._targets = {t.key: t for t in targets}
        anchors = list({a.key: a for a in anchors}.values())
        rows, verdicts = self._state()
        todo = self._wave(rows, verdicts, wave=0)
        waves: list[dict[str, Any]] = []
        if todo:
            self.session = self.journal.start_session(self.purpose, self.dispatcher.device_id,
                                                      self.dispatcher.describe(), at=self.clock())
            if hasattr(self.dispatcher, "attach"):
                self.dispatcher.attach(self.journal, self.session)
            self.artifacts = {}
            self._make_ready(todo, [a.item for a in anchors])
            anchor_jobs = [Job(a.key, 0, "anchor", self.plan.policy("anchor")) for a in anchors]
            self._anchor_jobs = anchor_jobs
            t0 = time.perf_counter()
            self._started_at = self.clock()
            if self.plan.probe_rounds and anchor_jobs:
                self._probe(anchor_jobs)
                rows, verdicts = self._state()
                todo = self._wave(rows, verdicts, wave=0)
                if self.profile is not None:
                    self.progress("noise profile", 1, 1, self.profile.summary())
            self._total = len(todo)
            while True:
                while todo:
                    if self._over_budget():
                        break
                    # A later wave may re-open an entry finished by an earlier session (slow periods,
                    # plausibility): its artifact was not part of the first wave's.
                    self._make_ready(todo)
                    self._separate(todo, anchor_jobs)
                    pending = self._execute(todo, anchor_jobs)
                    waves.append({"wave": len(waves), "jobs": len(todo), "pending": len(pending or ())})
                    rows, verdicts = self._state()
                    if pending:  # left with a remote service on purpose: a later run collects them
                        self._pending = list(pending)
                        break
                    todo = self._wave(rows, verdicts, wave=len(waves))
                    self._total += len(todo)
                if todo or self._pending or not (self._heat_at_the_end() or self._level_at_the_end()):
                    break
                rows, verdicts = self._state()
                todo = self._wave(rows, verdicts, wave=len(waves))
                self._total += len(todo)
            self.timings["measure_wall_s"] += time.perf_counter() - t0
        session_anchors = self.journal.anchors(self.session) if self.session else []
        if self.session and self.purpose == "build":  # what derive_table replays the journal with
            self.journal.set_meta("noise_profile", None if self.profile is None else self.profile.to_dict())
            self.journal.set_meta("measuring_rules", self.rules.to_dict() if self.plan.precision is not None else None)
        report: dict[str, Any] = {"waves": waves, "throttled": self._throttled,
                                  "noise_profile": None if self.profile is None else self.profile.to_dict(),
                                  "rules": self.rules.to_dict(), "pauses": self.pauses,
                                  "level_check": self.level_check,
                                  "budget": self._budget_report(verdicts, todo),
                                  "pending": [f"{j.key}#{j.round}" for j in self._pending],
                                  "no_consensus": sorted(k for k, v in verdicts.items() if not v.agreed),
                                  "slow_period": sorted(self.slow_periods(rows, verdicts)),
                                  **drift_report(session_anchors, self.plan.consensus, self.plan.drift_tolerance)}
        return SessionResult(self.session, self.dispatcher.describe(), rows, verdicts, session_anchors,
                             list(self._measured), report, dict(self.timings))

    # -- steps --------------------------------------------------------------------------------
    def _make_ready(self, jobs: Sequence[Job], extra: Sequence[Any] = ()) -> None:
        """Export and prepare the artifacts of `jobs` (and `extra` items) not yet ready."""
        items = [self._targets[k].item for k in dict.fromkeys(j.key for j in jobs) if k not in self.artifacts]
        items += [i for i in extra if i.key not in self.artifacts]
        if not items:
            return
        new = self._export(items)
        self.artifacts.update(new)
        t0 = time.perf_counter()
        self.dispatcher.prepare(new, self.progress)
        self.timings["prepare_s"] += time.perf_counter() - t0

    def _export(self, items: list[Any]) -> dict[str, Artifact]:
        t0 = time.perf_counter()
        arts = export_artifacts(items, self.dispatcher.artifact_format, self.export_jobs, self.precision,
                                self.progress)
        self.timings["export_s"] += time.perf_counter() - t0
        return arts

    def _state(self) -> tuple[dict[str, list[JournalRow]], dict[str, Verdict]]:
        rows = self.journal.rows(keys=self._targets)
        factors = self.time_base(self.journal, self.session)
        self._factors = factors
        if self.plan.precision is not None:
            self._adapt(rows)
        rule = self.rules.consensus
        verdicts = {k: rule.decide(round_values(rows.get(k, []), rule, factors)) for k in self._targets}
        if self.rules.confirm_by_period and self.plan.periods is not None:
            values = {k: round_values(rs, rule, factors) for k, rs in rows.items()}
            verdicts.update(confirmed_by_period(rows, values, verdicts, self.journal.anchors(), rule,
                                                self.plan.periods))
        return rows, verdicts

    # -- the device's noise -------------------------------------------------------------------
    def _probe(self, anchor_jobs: list[Job]) -> None:
        """Repeated anchor rounds before any entry: the first noise profile and rules."""
        for r in range(self.plan.probe_rounds):
            for job in anchor_jobs:
                self.progress("probe", r * len(anchor_jobs) + anchor_jobs.index(job) + 1,
                              self.plan.probe_rounds * len(anchor_jobs))
                if self.dispatcher.execute([], [job], self.plan.anchor_every, self._commit):
                    return  # a detached remote service: the profile comes from what it returns later

    def _adapt(self, rows: Mapping[str, Sequence[JournalRow]]) -> None:
        """Refresh the noise profile from this session's anchors and every round so far, and
        derive the rules from it."""
        throttling = getattr(self.dispatcher, "throttling", None)
        profile = journal_profile(rows, self.journal.anchors(self.session), precision=self.plan.precision or 0.02,
                                  floor_ms=self.plan.consensus.floor_ms,
                                  throttling=throttling() if throttling else None,
                                  pauses=self.journal.get_meta("pauses") or [],
                                  scheduled_rounds=self.rules.scheduled_rounds)
        if profile is not None:
            self.profile = profile
        self.rules = derive_rules(self.profile, self.plan.precision or 0.02, self.plan.consensus,
                                  self.plan.min_separation_s, short_rounds=self.plan.policy("block").runs is None)
        self._restop_anchors()

    def _restop_anchors(self) -> None:
        """Anchor readings keep the plan's length (they are the time base) but stop where the rules
        say rounds stop; in place: the running waves hold this list."""
        anchor = self._stopping(self.plan.policy("anchor"))
        self._anchor_jobs[:] = [dc_replace(j, policy=anchor) for j in self._anchor_jobs]

    def _over_budget(self) -> bool:
        return self.plan.budget_s is not None and self.clock() - self._started_at >= self.plan.budget_s

    def _budget_report(self, verdicts: Mapping[str, Verdict], todo: Sequence[Job]) -> dict[str, Any] | None:
        """What a build stopped by its time budget reached: how many entries met the rule and the
        precision of the rest (their rounds' spread)."""
        if self.plan.budget_s is None:
            return None
        done = [v for v in verdicts.values() if v.agreed]
        open_ = [v for v in verdicts.values() if not v.agreed]
        spreads = sorted(v.spread for v in open_ if math.isfinite(v.spread))
        return {"budget_s": self.plan.budget_s, "used_s": round(self.clock() - self._started_at, 3),
                "stopped": bool(todo), "entries": len(verdicts), "agreed": len(done),
                "precision": self.rules.achievable,
                "open_spread_median": statistics.median(spreads) if spreads else None}

    def _heat_check(self, ratio: float | None) -> None:
        """After an anchor reading (`ratio` to its level; None before the anchor has one): pause
        while the device is hot (HeatRule)."""
        rule = self.plan.heat
        if rule is None or self._cooling:
            return
        if ratio is not None:
            self._anchor_ratios.append((self.clock(), ratio))
        ratio = 1.0 if ratio is None else ratio
        throttling = getattr(self.dispatcher, "throttling", None)
        state = throttling() if throttling else None
        hot_from = rule.hot_since(self._anchor_ratios, state)
        if hot_from is None:
            return
        idle = getattr(self.dispatcher, "idle", None)
        if idle is None or not getattr(self, "_anchor_jobs", None):
            return
        self._cooling = True
        start, waited, last = self.clock(), 0.0, ratio
        try:
            while waited < rule.max_pause_s:
                self.progress("cool-down", int(waited), int(rule.max_pause_s),
                              f"device hot (anchor +{last - 1:.0%}{', throttling' if state else ''}): pausing")
                idle(min(rule.step_s, rule.max_pause_s - waited))
                waited = self.clock() - start
                job = self._anchor_jobs[len(self.pauses) % len(self._anchor_jobs)]
                self.dispatcher.execute([], [job], self.plan.anchor_every, self._commit)
                last = self._last_anchor_ratio or last
                state = throttling() if throttling else None
                if rule.cooled(last if self._last_anchor_ratio is not None else 1.0, state):
                    break
        finally:
            self._cooling = False
        self._record_pause(start, ratio, last, state, hot_from)

    def _record_pause(self, start: float, ratio: float, last: float, state: bool | None, hot_from: float) -> None:
        self.pauses.append({"at": start, "seconds": round(self.clock() - start, 3), "trigger_ratio": ratio,
                            "after_ratio": last, "throttling": bool(state), "hot_from": hot_from})
        # What was measured while the device was hot gets another round, once it has cooled.
        self._hot_keys |= {k for k, t in self._last_end.items() if t >= hot_from}
        self._anchor_ratios = []
        self.journal.set_meta("pauses", (self.journal.get_meta("pauses") or []) + [self.pauses[-1]])

    def _heat_at_the_end(self) -> bool:
        """When the last waves ended with the anchors slow (in `readings` readings in a row, too
        short a stretch for the heat rule's span), idle in steps and read an anchor after each, for
        at most END_CHECK_STEPS steps (a phone cools within about a minute): a device that then
        reads normal was hot (or in a slow spell that ended: one more round for what it measured
        is no loss). On a simulated phone that heated in the build's last 80 s, those rounds set
        its typical latency 14 % high. The pause is recorded like any other and what was measured
        hot gets another round (True); once per session."""
        rule = self.plan.heat
        idle = getattr(self.dispatcher, "idle", None)
        if rule is None or idle is None or not self._anchor_jobs or self._end_heat_checked:
            return False
        self._end_heat_checked = True
        slow = rule.trailing_slow(self._anchor_ratios)
        # A slow state the anchors never showed before is looked at however short: a device with
        # no slow spells has none to end by itself (a simulated phone that began to throttle 15 s
        # before a build's end, its anchors steady until then, set its typical latency 4 % high).
        earlier = self._anchor_ratios[:len(self._anchor_ratios) - len(slow)]
        new_state = bool(earlier) and all(ratio <= 1 + rule.threshold for _, ratio in earlier)
        if len(slow) < rule.readings or (slow[0][0] - slow[-1][0] < rule.span_s * END_SLOW_SHARE and not new_state):
            return False
        if not new_state and rule.longest_ended_slow(earlier) >= slow[0][0] - slow[-1][0]:
            # The device's own spells were as long and ended by themselves: this is one more (a
            # simulated VM's 10-50 s spells: the check idled 92 s, a quarter of the build, its
            # anchor readings landing in the next spells).
            return False
        throttling = getattr(self.dispatcher, "throttling", None)
        start, before = self.clock(), slow[0][1]
        self._cooling = True
        try:
            self.progress("cool-down", 0, int(rule.step_s), f"anchors +{before - 1:.0%} at the end: idling to tell heat "
                                                             "from a slow spell")
            last, state = None, None
            for step in range(END_CHECK_STEPS):
                idle(rule.step_s)
                self._last_anchor_ratio = None
                self.dispatcher.execute([], [self._anchor_jobs[step % len(self._anchor_jobs)]], self.plan.anchor_every,
                                        self._commit)
                last, state = self._last_anchor_ratio, throttling() if throttling else None
                if last is not None and rule.cooled(last, state):
                    break
        finally:
            self._cooling = False
        if last is None or not rule.cooled(last, state):
            return False
        self._record_pause(start, before, last, state, slow[-1][0])
        return True

    def _level_at_the_end(self) -> bool:
        """When the session ends within its level span (LEVEL_SPAN_S) of its start, idle and read the
        anchors in turn every POLL_S until it has spanned it, or until one reads faster than any reading
        of it before by more than a slow state's worth (noise.SLOW_STATE): then all that was
        measured was measured in a slow spell, the slow-period check names it
        (periods.anchor_slow_keys) and the next wave measures it again (True). Readings spread
        over two states do not end the wait early: on a simulated vm-bursts device bursts on top
        of a slow spell spread them 24 % while the spell held for 99 s. Where the rules have no
        slow-period check or the device cannot idle, nothing is done; once per session. Only a
        build's session that sets the table's time base checks: a later one (a resume, an
        upgrade) is put on that base by its anchors, which divides a slow state that held it
        throughout out of its rounds, and validations and checks compare on a time base of
        their own."""
        idle = getattr(self.dispatcher, "idle", None)
        if self.plan.periods is None or idle is None or not self._anchor_jobs or self._level_checked:
            return False
        if self.purpose != "build" or base_levels(self.journal, self.rules.consensus, exclude=self.session):
            return False
        self._level_checked = True
        start, until = self.clock(), self._started_at + self.level_span_s
        if start >= until:
            return False
        fastest = {k: min(vs) for k, vs in self._anchor_values().items()}
        self.progress("level", 0, 1, f"{start - self._started_at:.0f} s measured: reading the anchors until "
                                     f"{self.level_span_s:.0f} s to tell the device's level from a slow spell")
        turn, faster = 0, False
        while not faster and (left := until - self.clock()) > 0:
            idle(min(POLL_S, left))
            job = self._anchor_jobs[turn % len(self._anchor_jobs)]
            self._poll_anchor(job)
            turn += 1
            faster = min(self._anchor_values().get(job.key, [math.inf])) * (1 + SLOW_STATE) < fastest.get(job.key, 0.0)
        self.level_check = {"span_s": self.level_span_s, "from_s": round(start - self._started_at, 1),
                            "to_s": round(self.clock() - self._started_at, 1), "faster": faster}
        return faster

    def _anchor_values(self) -> dict[str, list[float]]:
        """Each anchor's readings in this session (its consensus rule's round values)."""
        values: dict[str, list[float]] = {}
        for a in self.journal.anchors(self.session):
            v = self.rules.consensus.round_value(a.measurement)
            if math.isfinite(v) and v > 0:
                values.setdefault(a.key, []).append(v)
        return values

    def _poll_anchor(self, job: Job) -> None:
        """Read one anchor during a wait (kept out of the device's noise profile: _commit)."""
        self._last_anchor_ratio, self._polling = None, True
        try:
            self.dispatcher.execute([], [job], self.plan.anchor_every, self._commit)
        finally:
            self._polling = False

    def slow_periods(self, rows: dict[str, list[JournalRow]], verdicts: dict[str, Verdict]) -> dict[str, float]:
        """Targets whose value was taken only in slow periods (latbench.measuring.periods)."""
        if self.plan.periods is None:
            return {}
        rule = self.rules.consensus
        values = {k: round_values(rs, rule, self._factors) for k, rs in rows.items()}
        return journal_slow_periods(rows, values, verdicts, self.journal.anchors(), rule, self.plan.periods)

    def _execute(self, todo: list[Job], anchor_jobs: list[Job]) -> Sequence[Job] | None:
        """Run a wave. Where the rules follow the device and the dispatcher measures in order, in
        parts of REREAD_EVERY jobs, and after each part the device's profile says again whether
        rounds sample on towards their CI target: a probe of a few anchor rounds taken in a quiet
        minute let the demo's first wave (330 rounds, this VM on a noisy day) sample 65 rounds to
        their 1.5 s cap for a CI the noise never gave, 285 s against a 120 s budget."""
        every = self._anchor_every()
        if self.plan.precision is None or not getattr(self.dispatcher, "in_order", False):
            return self.dispatcher.execute(todo, anchor_jobs, every, self._commit)
        step = every * math.ceil(REREAD_EVERY / every)  # parts end where the whole wave reads an anchor
        for n, start in enumerate(range(0, len(todo), step)):
            part = todo[start:start + step]
            if n:
                self._reread_stopping()
                if not self.rules.extend_rounds:
                    part = [dc_replace(j, policy=self._stopping(j.policy)) for j in part]
            self.dispatcher.execute(part, anchor_jobs, every, self._commit, part=n)
        return None

    def _reread_stopping(self) -> None:
        """Whether rounds extend towards their CI target, from the profile of everything measured
        so far; the rest of the rules stay as the wave began."""
        rules = self.rules
        self._adapt(self.journal.rows(keys=self._targets))
        self.rules = dc_replace(rules, extend_rounds=self.rules.extend_rounds)
        self._restop_anchors()

    def _wave(self, rows: dict[str, list[JournalRow]], verdicts: dict[str, Verdict], wave: int) -> list[Job]:
        """The jobs of the next wave: missing initial rounds, then one more round for entries
        without consensus (or rechecked) that the rule still allows."""
        rule = self.rules.consensus
        recheck = set(self.recheck(verdicts)) if self.recheck else set()
        slow = set(self.slow_periods(rows, verdicts))
        recheck |= slow
        beyond = self._slow_extra_rounds(rows)
        # Entries measured while the device was hot: one more round each, after the pause.
        hot, self._hot_keys = self._hot_keys, set()
        recheck |= hot
        jobs: list[Job] = []
        for key, target in self._targets.items():
            done = {r.round for r in rows.get(key, [])}
            missing = [r for r in range(self.plan.rounds) if r not in done]
            if missing:
                rounds = missing
            elif len(done) < rule.max_rounds + (beyond if key in slow else 0) and (
                    verdicts[key].needs_more or key in recheck or len(done) < self.rules.scheduled_rounds):
                rounds = [max(done) + 1]
            else:
                continue
            jobs += [Job(key, r, target.role, self._policy(target.role), profile=self.plan.profile and r == 0)
                     for r in rounds]
        # A fresh random order every wave; in the first wave, round by round.
        random.Random(f"{self.plan.seed}:{wave}").shuffle(jobs)
        jobs.sort(key=lambda j: j.round if wave == 0 else 0)
        return jobs

    def _slow_extra_rounds(self, rows: dict[str, list[JournalRow]]) -> int:
        """Rounds beyond the rule's bound that an entry named slow-period may take: in a session
        of few entries (periods.PeriodRule.few_entries), SLOW_EXTRA_ROUNDS of the rounds the
        caller's bound leaves (MeasuringRules.spare_rounds: a user's --max-rounds is never passed,
        nor an AI Hub build's job count), none elsewhere. Rules that take the fastest of N short
        rounds keep no spacing, and an adapt's twenty entries take all N in under a minute: on
        simulated vm-bursts devices every round of most entries fell in one slow spell at 3 of 12
        seeds (subnets 0-38 % within 5 %). A full build has the work to spread its rounds over
        minutes. Once an entry has taken SLOW_EXTRA_JUDGED_AFTER of them, more only while some
        entry's have found a value faster than its rounds within the bound by more than the
        tolerance: on this VM's `cpu --threads 2` (rounds 1.0-2.3x apart) the check named 12 of
        20 entries whose rounds beyond the bound found nothing faster, and four of them each took
        the adapt from 38 to 60 % of the full build's time. (Judged after one, simulated
        vm-bursts seed 8 stopped with its entries still slow: its fast state came at the second.)"""
        periods = self.plan.periods
        allowed = min(SLOW_EXTRA_ROUNDS, self.rules.spare_rounds)
        if periods is None or len(self._targets) > periods.few_entries or not allowed:
            return 0
        rule = self.rules.consensus
        bound = rule.max_rounds

        def fastest(rs: list[JournalRow]) -> float:
            return min((v for r in rs if math.isfinite(v := rule.round_value(r.measurement))), default=math.inf)

        extra = {k: [r for r in rs if r.round >= bound] for k, rs in rows.items() if k in self._targets}
        if max(map(len, extra.values()), default=0) < SLOW_EXTRA_JUDGED_AFTER:
            return allowed
        found = any(fastest(more) < fastest([r for r in rows[k] if r.round < bound]) * (1 - rule.tolerance)
                    for k, more in extra.items() if more)
        return allowed if found else 0

    def _anchor_every(self) -> int:
        """Jobs between anchor readings: the plan's, counted in rounds of the plan's length (short
        rounds read the anchors as often in time, not in rounds)."""
        k = self.rules.round_length
        return self.plan.anchor_every if k >= 1.0 else max(1, round(self.plan.anchor_every / k))

    def _stopping(self, policy: SamplingPolicy) -> SamplingPolicy:
        """`policy`, stopping at its minimum where the rules say rounds do not extend."""
        if self.rules.extend_rounds or policy.runs is not None:
            return policy
        return policy.replace(target_ci=SHORT_ROUND_CI)

    def _policy(self, role: str) -> SamplingPolicy:
        """The plan's policy of a role, its rounds lengthened, shortened or stopped at their minimum as
        the device's rules say."""
        policy = self._stopping(self.plan.policy(role))
        k = self.rules.round_length
        if k == 1.0 or policy.runs is not None:
            return policy
        if k < 1.0:
            # Short rounds stop at their (shortened) minimum: the median's CI target would only
            # keep them sampling a state that scatter between rounds outweighs.
            return policy.replace(min_time_s=policy.min_time_s * k, target_ci=SHORT_ROUND_CI,
                                  min_runs=max(MIN_SHORT_RUNS, int(policy.min_runs * k)),
                                  warmup_runs=max(MIN_SHORT_WARMUP, int(policy.warmup_runs * k)),
                                  warmup_time_s=policy.warmup_time_s * k)
        return policy.replace(time_cap_s=policy.time_cap_s * k, min_time_s=policy.min_time_s * k,
                              min_runs=int(policy.min_runs * k))

    def _separate(self, todo: list[Job], anchor_jobs: list[Job]) -> None:
        """Before a re-measurement wave, let time pass so an entry's new round is not taken in the
        same burst as its previous one: idle where the device can (measuring anchors all along
        kept a simulated phone under load until it throttled, and their readings, taken in one
        stretch, outweighed the rounds in its typical state), else measuring anchors."""
        if not self._last_end or not anchor_jobs:
            return
        # Each further extra round waits twice as long: slow periods can last several rounds. A
        # round beyond the rule's bound (an entry named slow-period, _slow_extra_rounds) waits at
        # least SLOW_EXTRA_SPACING_S so doubled, even under rules that otherwise keep no spacing.
        bound = self.rules.consensus.max_rounds

        def separation(job: Job) -> float:
            base = max(self.rules.min_separation_s, SLOW_EXTRA_SPACING_S) if job.round >= bound \
                else self.rules.min_separation_s
            return min(MAX_WAIT_S, base * 2 ** min(max(job.round - self.plan.rounds, 0), 4))

        wait_until = max(self._last_end.get(j.key, 0.0) + separation(j) for j in todo)
        idle = getattr(self.dispatcher, "idle", None)
        if idle is not None:
            if wait_until > self.clock():
                self.progress("spacing", 0, 1, f"idle up to {wait_until - self.clock():.0f} s before the next rounds")
                self._idle_until_fast(wait_until, self._anchors_to_poll(todo, anchor_jobs), idle)
            return
        turn = 0
        while self.clock() < wait_until:
            self.dispatcher.execute([], [anchor_jobs[turn % len(anchor_jobs)]], self.plan.anchor_every, self._commit)
            turn += 1

    def _idle_until_fast(self, wait_until: float, anchor_jobs: list[Job], idle: Callable[[float], None]) -> None:
        """Idle until `wait_until`, reading one of `anchor_jobs` every POLL_S: the wait is there to
        outlast a slow state, so once an anchor reads within the tolerance of its level the device
        has left it and the next rounds start. (Small sessions, an adapt's or a build's last
        waves, otherwise idled out every doubled wait: on this VM two thirds of an adapt's time.)
        Without anchors to poll the wait is idled out."""
        if not anchor_jobs:
            idle(max(0.0, wait_until - self.clock()))
            return
        turn = 0
        while (left := wait_until - self.clock()) > 0:
            idle(min(POLL_S, left))
            if self.clock() >= wait_until:
                return
            self._poll_anchor(anchor_jobs[turn % len(anchor_jobs)])
            turn += 1
            ratio = self._last_anchor_ratio
            if ratio is not None and ratio <= 1 + self.rules.consensus.tolerance:
                return

    def _anchors_to_poll(self, todo: list[Job], anchor_jobs: list[Job]) -> list[Job]:
        """The anchors a wait before `todo` polls: those whose readings in this session span more
        than a slow state's worth (noise.SLOW_STATE), having read the device fast and slow, where
        some have. An anchor read only inside a slow spell has that spell for its level (on a
        simulated vm-bursts adapt its readings ended four waits early, in the spell, until three
        entries ran out of rounds there). Where none has, all, except before rounds beyond the
        rule's bound (_slow_extra_rounds): there an anchor at its level says nothing of the spell,
        and the wait is idled out."""
        values = self._anchor_values()
        both = [j for j in anchor_jobs if len(vs := values.get(j.key, [])) >= 2 and max(vs) > min(vs) * (1 + SLOW_STATE)]
        if both or any(j.round >= self.rules.consensus.max_rounds for j in todo):
            return both
        return anchor_jobs

    def _anchor_ratio(self, key: str, m: Measurement) -> float | None:
        """An anchor reading against the anchor's level in this session so far."""
        rule = self.rules.consensus
        group = [a for a in self.journal.anchors(self.session) if a.key == key]
        if len(group) < 2:
            return None
        level = anchor_levels(group, rule).get(key)
        value = rule.round_value(m)
        return value / level if level and math.isfinite(value) else None

    def _commit(self, res: JobResult, is_anchor: bool) -> None:
        """Journal one result the moment it arrives."""
        m = res.measurement
        sampling = m.provenance.get("sampling") or {}
        self.timings["timed_runs_s"] += sampling.get("timed_wall_s", sum(m.samples_ms) / 1e3)
        if m.throttled:
            self._throttled.append(res.job.key)
        if is_anchor:
            if self._polling:  # read because the device was slow: kept out of its noise profile
                m.extra[SPACING_POLL] = True
            self.journal.record_anchor(self.session, res.device, self._anchor_seq, res.job.key, m, at=self.clock())
            self._anchor_seq += 1
            self._last_anchor_ratio = self._anchor_ratio(res.job.key, m)
            if self.plan.heat is not None:
                self._heat_check(self._last_anchor_ratio)
            return
        target = self._targets[res.job.key]
        self.journal.record(res.job.key, res.job.round, target.role, target.item.fields(), m,
                            self.artifacts[res.job.key].content_hash, device=res.device, session=self.session,
                            at=self.clock())
        self._last_end[res.job.key] = self.clock()
        self._measured.append(f"{res.job.key}#{res.job.round}")
        self.progress("measure", len(self._measured), self._total)


def level_span_s() -> float:
    """The level span of sessions (LEVEL_SPAN_S, or $LATBENCH_LEVEL_SPAN_S seconds)."""
    raw = os.environ.get(LEVEL_SPAN_ENV)
    if raw is None:
        return LEVEL_SPAN_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{LEVEL_SPAN_ENV} must be a number of seconds >= 0 (got {raw!r}); unset it for the "
                         f"default {LEVEL_SPAN_S:g}, or 0 for a device known to have no slow states")
    return value


def probe_noise(device: Any, anchors: Sequence[Any], rounds: int, plan: MeasuringPlan | None = None, *,
                progress: ProgressFn | None = None, export_jobs: int = 1) -> dict[str, Any]:
    """Profile a device alone: `rounds` rounds of each anchor item, on an in-memory journal, and
    the rules a session would derive from that profile."""
    import dataclasses

    plan = dataclasses.replace(plan or MeasuringPlan(), probe_rounds=rounds, precision=(plan.precision if plan and
                                                                                         plan.precision else 0.02))
    session = MeasuringSession(device, plan, purpose="probe", progress=progress, export_jobs=export_jobs)
    session.session = session.journal.start_session("probe", session.dispatcher.device_id,
                                                    session.dispatcher.describe(), at=session.clock())
    session.artifacts = {}
    session._targets = {}
    session._make_ready([], list(anchors))
    jobs = [Job(a.key, 0, "anchor", plan.policy("anchor")) for a in anchors]
    session._anchor_jobs = jobs
    session._started_at = session.clock()
    session._probe(jobs)
    session._adapt({})
    return {"device": session.dispatcher.describe(), "device_id": session.dispatcher.device_id,
            "profile": None if session.profile is None else session.profile.to_dict(),
            "rules": session.rules.to_dict(), "readings": len(session.journal.anchors(session.session)),
            "seconds": round(session.clock() - session._started_at, 3)}


def round_values(rows: Sequence[JournalRow], rule: ConsensusRule, factors: Mapping[str, float]) -> list[float]:
    """Each round's statistic, put on the common time base by the factor of the session and
    device that measured it (latbench.measuring.timebase). Rounds the device reported throttled
    count as missing (nan) while the entry has rounds that were not: throttled and unthrottled
    rounds never meet in one consensus."""
    cool = [not r.measurement.throttled for r in rows]
    return [rule.round_value(r.measurement) * factors.get(timebase_key(r.session, r.device),
                                                            factors.get(r.session or "", 1.0))
            if ok or not any(cool) else math.nan for r, ok in zip(rows, cool)]


def drift_report(anchors: Sequence[AnchorRow], rule: ConsensusRule, tolerance: float) -> dict[str, Any]:
    """How far each anchor reading strayed from the anchor's level in this session."""
    levels = anchor_levels(anchors, rule)
    readings = [rule.round_value(a.measurement) / levels[a.key] - 1 for a in anchors if levels.get(a.key)]
    return {"anchor_levels_ms": levels, "anchor_readings": len(readings),
            "max_drift": max(readings, key=abs) if readings else None,
            "drifted_readings": sum(abs(d) > tolerance for d in readings)}


def export_artifacts(items: Sequence[Any], fmt: str, jobs: int, precision: str | None,
                     progress: ProgressFn | bool = False) -> dict[str, Artifact]:
    """Export through the content-addressed cache; ExportError (exit 1) if any item failed."""
    from latbench.export import export_items

    items = list({i.key: i for i in items}.values())
    given = {i.key: Artifact(i.key, i.path, i.content_hash) for i in items if isinstance(i, ArtifactItem)}
    items = [i for i in items if not isinstance(i, ArtifactItem)]
    if not items:
        return given
    kwargs: dict[str, Any] = {"formats": (fmt,), "jobs": jobs, "progress": progress}
    if precision:
        kwargs["precision"] = precision
    report = export_items(items, **kwargs)
    if report.failures:
        first = report.failures[0]
        raise ExportError(f"export failed for {len(report.failures)} item(s), first {first.key}: {first.error}")
    return {**given, **{r.key: Artifact(r.key, Path(r.path), r.content_hash) for r in report if r.format == fmt}}
