"""`FarmDispatcher`: the measuring session's Dispatcher for a pool of device actors.

- `prepare` ships every artifact once per host (the first device of a host that lacks it fetches it
  into the host cache; devices on the driver's own node use the driver's files) and prepares it on
  every device, before anything is measured.
- `execute` keeps one job in flight per device, `ray.wait`s for the first to finish and hands its
  result to the session (which journals it) at once. Each device interleaves its own anchor jobs:
  one before its first job, one after every `anchor_every` jobs and one after its last. A device
  given a job prefers an entry it has not measured yet and that no other device is measuring, so
  the rounds of one entry land on different devices where the pool allows.
- Failures (what `ray.get` raises): the runner's DeviceLost, or the actor dead (ActorDiedError),
  drop the device and put its in-flight job back in the queue; an actor unreachable for now
  (ActorUnavailableError) is probed every `probe_every_s` and dropped after `suspect_timeout_s`.
  Any other error ends the run once the other devices' in-flight results are journalled. Only a
  result `ray.get` returned is journalled, so a job whose device failed mid-way is measured again
  elsewhere and never recorded twice.
- With a `PoolCheck`, before the first job every device reads every anchor a few times and the
  pool is refused (one-line UsageError) when a device is slower than the fastest beyond the
  tolerance; after every wave the entries measured on several devices are compared too (pooling.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from latbench.core.errors import DeviceError, DeviceLost, LatbenchError, UsageError
from latbench.core.hashing import tree_sha256
from latbench.core.progress import ProgressFn, no_progress
from latbench.core.text import first_line
from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.farm.cache import pack
from latbench.measuring.farm.names import common_provenance, pool_differences
from latbench.measuring.farm.pooling import DEFAULT_TOLERANCE, PoolVerdict, compare_devices
from latbench.measuring.session import Artifact, Job, JobResult

#: How `--separate-tables` is suggested when a pool is refused.
SEPARATE_HINT = "pass --separate-tables to build one table per device, or leave the slow device out"


@dataclass
class PoolCheck:
    """Whether the devices may share one table: readings of every anchor per device before the first
    job, and the tolerance (pooling.py)."""

    rule: ConsensusRule
    tolerance: float = DEFAULT_TOLERANCE
    readings: int = 3


@dataclass
class DeviceStats:
    """What one device did in this build (per-device progress and throughput)."""

    host: str = ""
    jobs: int = 0
    anchors: int = 0
    busy_s: float = 0.0
    first: float | None = None
    last: float | None = None
    requeued: int = 0
    gone: str | None = None

    def to_dict(self) -> dict[str, Any]:
        span = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
        n = self.jobs + self.anchors
        return {"host": self.host, "jobs": self.jobs, "anchors": self.anchors, "busy_s": round(self.busy_s, 3),
                "per_min": round(60 * n / span, 1) if span > 0 else None, "requeued": self.requeued,
                "gone": self.gone}


@dataclass
class _Device:
    fid: str
    handle: Any
    since_anchor: int = 0
    anchored: bool = False  # this execute() call: first anchor taken
    worked: bool = False  # this execute() call: measured a job since the last anchor
    turn: int = 0
    suspect_until: float | None = None
    next_probe: float = 0.0
    stats: DeviceStats = field(default_factory=DeviceStats)


class FarmDispatcher:
    """Jobs of one session spread over device actors (farm id -> handle, with each one's `info()`)."""

    def __init__(self, actors: Mapping[str, Any], infos: Mapping[str, Mapping[str, Any]], *,
                 pool: PoolCheck | None = None, driver_node: str | None = None,
                 on_close: Callable[[], None] | None = None, suspect_timeout_s: float = 30.0,
                 probe_every_s: float = 0.5) -> None:
        if not actors:
            raise UsageError("the device farm has no devices")
        self.infos = {fid: dict(infos[fid]) for fid in actors}
        provs = {fid: i.get("provenance") or {} for fid, i in self.infos.items()}
        diffs = pool_differences(provs)
        if diffs and pool is not None:
            raise UsageError(f"devices of one table must be of one kind, model and runtime; they differ in "
                             f"{diffs[0]} (pass --separate-tables to build one table per device)")
        formats = {i["artifact_format"] for i in self.infos.values()}
        if len(formats) > 1:
            raise UsageError(f"the devices measure different artifact formats ({', '.join(sorted(formats))})")
        self.artifact_format = formats.pop()
        self.devices = {fid: _Device(fid, h, stats=DeviceStats(host=self.infos[fid].get("host", "")))
                        for fid, h in actors.items()}
        self.device_id = pool_name(provs) if len(actors) > 1 else next(iter(actors))
        self.pool = pool if len(actors) > 1 else None
        self.driver_node = driver_node if driver_node is not None else ray.get_runtime_context().get_node_id()
        self.suspect_timeout_s = suspect_timeout_s
        self.probe_every_s = probe_every_s
        self.on_close = on_close
        self.progress: ProgressFn = no_progress
        self.shipped: dict[str, list[str]] = {}  # host -> hashes that crossed to it in this build
        self.verdict: PoolVerdict | None = None
        self._journal: Any = None
        self._session = ""
        self._counts: dict[str, dict[str | None, int]] = {}
        self._anchor_values: dict[str, dict[str, list[float]]] = {fid: {} for fid in actors}
        self._entry_values: dict[str, dict[str, list[float]]] = {}
        self._prechecked = False
        self._total_jobs = 0

    # -- the Dispatcher protocol ------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        provs = {fid: self.infos[fid].get("provenance") or {} for fid in self.devices}
        out = common_provenance(provs)
        out["farm_devices"] = {fid: {"host": self.infos[fid].get("host"), "device_id": self.infos[fid].get("device_id")}
                               for fid in self.devices}
        return out

    def attach(self, journal: Any, session: str) -> None:
        self._journal = journal
        self._session = session
        self._counts = journal.device_counts()

    def prepare(self, artifacts: Mapping[str, Artifact], progress: ProgressFn) -> None:
        self.progress = progress
        specs = [(a.key, a.content_hash, str(a.path), artifact_suffix(a), a.path.is_dir(), tree_sha256(a.path))
                 for a in artifacts.values()]
        live = self._live()
        by_node: dict[str, str] = {}
        for fid in live:
            by_node.setdefault(self.infos[fid].get("node", fid), fid)
        remote = [fid for node, fid in by_node.items() if node != self.driver_node]
        if remote:  # one device per host fetches what its host lacks, before anything is measured
            refs = [ray.put(pack(a.path)) for a in artifacts.values()]
            calls = {self.devices[fid].handle.stage.remote(specs, [refs], self.driver_node): fid for fid in remote}
            for fid, got in self._gather(calls, "ship").items():
                host = self.infos[fid].get("host", fid)
                self.shipped.setdefault(host, []).extend(got)
        calls = {self.devices[fid].handle.prepare.remote(specs, self.driver_node): fid for fid in self._live()}
        self._gather(calls, "prepare")

    def execute(self, jobs: Sequence[Job], anchors: Sequence[Job], anchor_every: int,
                on_result: Callable[[JobResult, bool], None]) -> None:
        if self.pool is not None and not self._prechecked and anchors and jobs:
            self._precheck(anchors, on_result)
        queue = list(jobs)
        for d in self.devices.values():
            d.since_anchor, d.anchored, d.worked = 0, False, False
        self._total_jobs += len(jobs)
        inflight: dict[Any, tuple[_Device, Job, bool]] = {}
        probes: dict[Any, _Device] = {}
        failure: BaseException | None = None
        keys_in_flight: dict[str, int] = {}
        only_anchors = not jobs

        def next_for(d: _Device) -> tuple[Job, bool] | None:
            if failure is not None:
                return None
            if anchors and ((queue and (not d.anchored or d.since_anchor >= anchor_every))
                            or (not queue and d.worked) or (only_anchors and not d.anchored)):
                job = anchors[d.turn % len(anchors)]
                d.turn += 1
                d.anchored, d.worked, d.since_anchor = True, False, 0
                return job, True
            if not queue:
                return None
            job = queue.pop(self._pick(queue, d.fid, keys_in_flight))
            d.since_anchor += 1
            d.worked = True
            return job, False

        def dispatch() -> None:
            busy = {d.fid for d, _, _ in inflight.values()} | {d.fid for d in probes.values()}
            for d in self.devices.values():
                if d.fid in busy or d.stats.gone or d.suspect_until is not None:
                    continue
                nxt = next_for(d)
                if nxt is None:
                    continue
                job, is_anchor = nxt
                inflight[d.handle.measure.remote(job)] = (d, job, is_anchor)
                keys_in_flight[job.key] = keys_in_flight.get(job.key, 0) + (not is_anchor)

        dispatch()
        while inflight or probes or (queue and failure is None):
            if not inflight and not probes:
                if not self._live():
                    raise DeviceLost(f"every device of the farm is gone ({self._gone_summary()}); "
                                     f"{len(queue)} measurement(s) left; rerun the build to resume",
                                     unmeasured=list(dict.fromkeys(j.key for j in queue)))
                time.sleep(self.probe_every_s)  # only suspect devices left: wait for their probes
                self._probe_suspects(probes)
                continue
            ready, _ = ray.wait(list(inflight) + list(probes), num_returns=1, timeout=self.probe_every_s)
            for ref in ready:
                if ref in probes:
                    self._probe_answered(ref, probes.pop(ref))
                    continue
                d, job, is_anchor = inflight.pop(ref)
                if not is_anchor:
                    keys_in_flight[job.key] -= 1
                try:
                    m = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - sorted below
                    lost = self._failed(d, e)
                    if lost:
                        if not is_anchor:
                            queue.insert(0, job)
                            d.stats.requeued += 1
                    elif failure is None:
                        failure = e
                    continue
                self._record(d, job, is_anchor, m)
                on_result(JobResult(job, d.fid, m), is_anchor)
            self._probe_suspects(probes)
            dispatch()
        if self._journal is not None:
            self._journal.set_meta("farm", self.report())
        if failure is not None:
            raise _one_line(failure)
        if self.pool is not None and jobs:
            self._check_pool(final=False)

    # -- scheduling -------------------------------------------------------------------------------
    def _pick(self, queue: list[Job], fid: str, keys_in_flight: dict[str, int]) -> int:
        """The queue position of the job for device `fid`: the first whose entry this device has not
        measured and no other device is measuring now; else the one it measured least."""
        best, best_score = 0, None
        for pos, job in enumerate(queue):
            score = (self._counts.get(job.key, {}).get(fid, 0), keys_in_flight.get(job.key, 0))
            if score == (0, 0):
                return pos
            if best_score is None or score < best_score:
                best, best_score = pos, score
        return best

    def _record(self, d: _Device, job: Job, is_anchor: bool, m: Any) -> None:
        now = time.perf_counter()
        s = d.stats
        s.first = now if s.first is None else s.first
        s.last = now
        s.busy_s += (m.provenance.get("sampling") or {}).get("timed_wall_s", 0.0)
        rule = self.pool.rule if self.pool is not None else None
        if is_anchor:
            s.anchors += 1
            if rule is not None:
                self._anchor_values[d.fid].setdefault(job.key, []).append(rule.round_value(m))
            return
        s.jobs += 1
        self._counts.setdefault(job.key, {})[d.fid] = self._counts.get(job.key, {}).get(d.fid, 0) + 1
        if rule is not None:
            self._entry_values.setdefault(job.key, {}).setdefault(d.fid, []).append(rule.round_value(m))
        self.progress(f"device {d.fid}", s.jobs, self._total_jobs, f"{s.to_dict()['per_min'] or 0:.0f}/min")

    # -- failures ---------------------------------------------------------------------------------
    def _failed(self, d: _Device, e: BaseException) -> bool:
        """Sort a failed call: True when the device is gone (or suspect) and its job must go back."""
        if isinstance(e, ActorUnavailableError):
            d.suspect_until = time.monotonic() + self.suspect_timeout_s
            d.next_probe = 0.0
            return True
        if isinstance(e, RayTaskError) and isinstance(e.cause, DeviceLost):
            self._drop(d, f"device lost: {first_line(e.cause)}", kill=True)
            return True
        if isinstance(e, RayActorError):
            self._drop(d, f"actor died ({type(e).__name__})", kill=False)
            return True
        return False

    def _probe_suspects(self, probes: dict[Any, _Device]) -> None:
        now = time.monotonic()
        probing = set(map(id, probes.values()))
        for d in self.devices.values():
            if d.suspect_until is None or id(d) in probing or d.stats.gone:
                continue
            if now > d.suspect_until:
                d.suspect_until = None
                self._drop(d, f"unreachable for {self.suspect_timeout_s:g} s", kill=True)
            elif now >= d.next_probe:
                d.next_probe = now + self.probe_every_s
                probes[d.handle.ping.remote()] = d

    def _probe_answered(self, ref: Any, d: _Device) -> None:
        try:
            ray.get(ref)
            d.suspect_until = None  # back: it gets work again
        except ActorUnavailableError:
            pass  # still unreachable: probed again until suspect_until
        except Exception as e:  # noqa: BLE001 - dead for good
            d.suspect_until = None
            self._drop(d, f"actor died ({type(e).__name__})", kill=False)

    def _drop(self, d: _Device, why: str, *, kill: bool) -> None:
        d.stats.gone = why
        self.progress(f"device {d.fid}", d.stats.jobs, self._total_jobs, f"gone: {why}")
        if kill:
            try:
                ray.kill(d.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone is fine
                pass

    def _live(self) -> list[str]:
        return [fid for fid, d in self.devices.items() if not d.stats.gone]

    def _gone_summary(self) -> str:
        return "; ".join(f"{fid}: {d.stats.gone}" for fid, d in self.devices.items() if d.stats.gone)

    def _gather(self, calls: dict[Any, str], what: str) -> dict[str, Any]:
        """Results of one call per device; a device that fails here is dropped (a lost one) or
        fails the run (anything else)."""
        out: dict[str, Any] = {}
        for ref, fid in calls.items():
            try:
                out[fid] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - sorted by _failed
                d = self.devices[fid]
                if not self._failed(d, e):
                    raise _one_line(e) from None
                if d.suspect_until is not None:  # not answering while preparing: not usable now
                    d.suspect_until = None
                    self._drop(d, f"unreachable during {what}", kill=True)
        if not self._live():
            raise DeviceLost(f"every device of the farm is gone during {what} ({self._gone_summary()})")
        return out

    # -- pooling ----------------------------------------------------------------------------------
    def _precheck(self, anchors: Sequence[Job], on_result: Callable[[JobResult, bool], None]) -> None:
        """Every device reads every anchor `readings` times (journalled as anchor readings); then the
        pool is judged on the anchors alone, before any entry is measured."""
        assert self.pool is not None
        self._prechecked = True
        plan = [a for _ in range(self.pool.readings) for a in anchors]
        self._run_lists(plan, on_result)
        self._check_pool(final=False)

    def _run_lists(self, plan: Sequence[Job], on_result: Callable[[JobResult, bool], None]) -> None:
        """Each live device measures all of `plan` (anchor jobs) in order."""
        todo = {fid: list(plan) for fid in self._live()}
        inflight: dict[Any, tuple[_Device, Job]] = {}

        def feed(fid: str) -> None:
            d = self.devices[fid]
            if todo.get(fid) and not d.stats.gone:
                job = todo[fid].pop(0)
                inflight[d.handle.measure.remote(job)] = (d, job)

        for fid in list(todo):
            feed(fid)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            d, job = inflight.pop(ready[0])
            try:
                m = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - sorted by _failed
                if not self._failed(d, e):
                    raise _one_line(e) from None
                if d.suspect_until is not None:
                    d.suspect_until = None
                    self._drop(d, "unreachable while reading anchors", kill=True)
                continue
            self._record(d, job, True, m)
            on_result(JobResult(job, d.fid, m), True)
            feed(d.fid)
        if not self._live():
            raise DeviceLost(f"every device of the farm is gone ({self._gone_summary()})")

    def _check_pool(self, *, final: bool) -> None:
        assert self.pool is not None
        live = set(self._live())
        anchors = {fid: v for fid, v in self._anchor_values.items() if fid in live}
        entries = {k: {fid: v for fid, v in per.items() if fid in live} for k, per in self._entry_values.items()}
        self.verdict = compare_devices(anchors, entries, self.pool.rule, self.pool.tolerance)
        if self._journal is not None:
            self._journal.set_meta("pool", {**self.verdict.to_dict(), "session": self._session,
                                            "hosts": {fid: self.infos[fid].get("host") for fid in self.devices}})
        if not self.verdict.ok:
            raise UsageError(f"devices not pooled: {self.verdict.message()}; {SEPARATE_HINT}")

    def split(self) -> list[FarmDispatcher]:
        """One dispatcher per live device (`--separate-tables`); closing them leaves the actors to this one."""
        return [FarmDispatcher({fid: d.handle}, {fid: self.infos[fid]}, driver_node=self.driver_node,
                               suspect_timeout_s=self.suspect_timeout_s, probe_every_s=self.probe_every_s)
                for fid, d in self.devices.items() if not d.stats.gone]

    # -- reports ----------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Per device: its work, throughput and whether it is gone (or unreachable: a call failed and it
        has not answered since; a build that finished first leaves it so)."""
        return {"devices": {fid: {**d.stats.to_dict(), "unreachable": d.suspect_until is not None}
                            for fid, d in self.devices.items()},
                "shipped": {h: len(v) for h, v in self.shipped.items()},
                "pool": self.verdict.to_dict() if self.verdict is not None else None}

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def __enter__(self) -> FarmDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pool_name(provenances: Mapping[str, Mapping[str, Any]]) -> str:
    """The id a pool of devices of one model goes by (`android:Pixel_7`): what names its tables."""
    from latbench.measuring.farm.names import clean, device_kind

    fid, prov = next(iter(provenances.items()))
    return f"{prov.get('device_kind') or device_kind(fid)}:{clean(prov.get('device_model') or 'pool')}"


def artifact_suffix(a: Artifact) -> str:
    return "".join(a.path.suffixes[-1:])


def _one_line(e: BaseException) -> BaseException:
    """A device's error as latbench raises it: its own error type (one line), else a DeviceError."""
    cause = e.cause if isinstance(e, RayTaskError) and e.cause is not None else e
    if isinstance(cause, LatbenchError):
        return cause
    return DeviceError(f"device farm: {first_line(cause)}")
