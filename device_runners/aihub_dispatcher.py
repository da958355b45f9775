"""The AI Hub dispatcher: submits a wave's (key, round) jobs to AI Hub without waiting, journals
every job (table `aihub_jobs`) so a killed run re-attaches to it, collects finished jobs in bulk
and hands each result to the measuring session (see device_runners.aihub's docstring). It sits
beside the device farm's dispatcher (latbench.measuring.farm.dispatcher): the session drives both
through the same `execute` interface."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from device_runners.aihub_client import _BadResult, _NotFound, _RateLimited, _Transient, one_line
from device_runners.base import Prepared
from latbench.core.errors import DeviceError
from latbench.core.progress import ProgressFn, no_progress
from latbench.measuring.journal import Journal
from latbench.measuring.measurement import SamplingPolicy
from latbench.measuring.session import Artifact, Job, JobResult, interleave

#: Job summaries fetched per request when looking for finished jobs.
PAGE = 100
MODELS_META = "aihub_models"
#: How long a call with no jobs (anchors only) waits instead of submitting anchor jobs.
IDLE_S = 0.1

_TABLE = """CREATE TABLE IF NOT EXISTS aihub_jobs (
    name TEXT PRIMARY KEY, device TEXT NOT NULL, session TEXT NOT NULL, key TEXT NOT NULL,
    round INTEGER NOT NULL, anchor INTEGER NOT NULL, attempt INTEGER NOT NULL, role TEXT NOT NULL,
    policy TEXT NOT NULL, profile INTEGER NOT NULL, model_id TEXT, job_id TEXT, state TEXT NOT NULL,
    created REAL NOT NULL, reason TEXT)"""
_COLUMNS = "name, key, round, anchor, attempt, role, policy, profile, model_id, job_id, state, created"


@dataclass
class _Ticket:
    """One submitted (or about to be submitted) job, as journalled in `aihub_jobs`."""

    name: str
    job: Job
    anchor: bool
    attempt: int
    model_id: str
    job_id: str | None = None
    created: float = 0.0


#: Failure kinds worth submitting again: the job's lifetime ran out, or the service was busy.
def _retryable(failure_type: int) -> bool:
    from qai_hub import public_api_pb2 as pb

    return failure_type in (pb.JOB_FAILURE_TYPE_RUNTIME_TIMEOUT, pb.JOB_FAILURE_TYPE_RUNTIME_INTERNAL_SERVICE_BUSY,
                            pb.JOB_FAILURE_TYPE_CLOUD_THROTTLED)


class _Patience:
    """Backing off from a service that rate-limits or does not answer: waits from the client's poll
    interval, doubling up to six times it, for at most the client's RATE_LIMIT_RETRY_TIMEOUT."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.until = 0.0
        self.delay = 0.0

    def failed(self, interval: float, limit_s: float) -> bool:
        """Record a failure; False once the service has failed for longer than `limit_s`."""
        now = time.monotonic()
        if self.since is None:
            self.since, self.delay = now, interval
        else:
            self.delay = min(self.delay * 2, 6 * interval)
        self.until = now + self.delay
        return now - self.since <= limit_s

    def ok(self) -> None:
        self.since = None
        self.until = 0.0

    def waiting(self) -> float:
        return max(0.0, self.until - time.monotonic())


class AIHubDispatcher:
    """Submits a wave's jobs to AI Hub without waiting and hands results to the session as they
    finish; journals every job so a later run re-attaches (see the module docstring)."""

    def __init__(self, runner: Any, detach: bool = False) -> None:  # an AIHubRunner
        self.runner = runner
        self.detach = detach
        self.artifact_format = runner.artifact_format
        self.device_id = runner.device_id
        self.prepared: dict[str, Prepared] = {}
        self.journal: Journal | None = None
        self.session = ""
        self.progress: ProgressFn = no_progress

    def describe(self) -> dict[str, Any]:
        return self.runner.describe()

    def attach(self, journal: Journal, session: str) -> None:
        """The session's journal: jobs are recorded in its `aihub_jobs` table, model ids in its meta."""
        self.journal, self.session = journal, session
        journal.execute(_TABLE)
        self.runner._models.update(journal.get_meta(MODELS_META) or {})

    def _journal(self) -> Journal:
        if self.journal is None:  # used without a session (Runner.measure): records in memory
            self.attach(Journal(":memory:"), f"direct-{uuid.uuid4().hex[:8]}")
        assert self.journal is not None
        return self.journal

    def prepare(self, artifacts: dict[str, Artifact], progress: ProgressFn) -> None:
        """Upload each artifact once per content hash (model ids kept in the journal)."""
        journal = self._journal()
        self.progress = progress
        todo = [k for k in artifacts if k not in self.prepared]
        for i, key in enumerate(todo):
            a = artifacts[key]
            self.prepared[key] = self.runner.prepare(a.path, a.content_hash, label=key)
            known = journal.get_meta(MODELS_META) or {}
            if known.get(a.content_hash) != self.prepared[key].handle.model_id:
                journal.set_meta(MODELS_META, {**known, a.content_hash: self.prepared[key].handle.model_id})
            progress("prepare", i + 1, len(todo), "uploaded to AI Hub")

    # -- the journal of jobs ----------------------------------------------------------------------
    def _record(self, t: _Ticket) -> None:
        job = t.job
        self._journal().execute(
            "INSERT INTO aihub_jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (t.name, self.device_id, self.session, job.key, job.round, int(t.anchor), t.attempt, job.role,
             json.dumps(job.policy.to_dict()), int(job.profile), t.model_id, None, "intent", t.created, None))

    def _set(self, t: _Ticket, state: str, reason: str | None = None) -> None:
        self._journal().execute("UPDATE aihub_jobs SET state = ?, job_id = ?, created = ?, reason = ? WHERE name = ?",
                                (state, t.job_id, t.created, reason, t.name))

    def _open_tickets(self) -> list[tuple[_Ticket, str]]:
        rows = self._journal().execute(
            f"SELECT {_COLUMNS} FROM aihub_jobs WHERE device = ? AND state IN ('intent', 'submitted') "
            "ORDER BY created", (self.device_id,))
        out = []
        for name, key, rnd, anchor, attempt, role, policy, profile, model_id, job_id, state, created in rows:
            job = Job(key, rnd, role, SamplingPolicy(**json.loads(policy)), bool(profile))
            out.append((_Ticket(name, job, bool(anchor), attempt, model_id, job_id, created), state))
        return out

    def _attempts(self, job: Job) -> int:
        [(n,)] = self._journal().execute(
            "SELECT COUNT(*) FROM aihub_jobs WHERE device = ? AND key = ? AND round = ? AND anchor = 0",
            (self.device_id, job.key, job.round))
        return n

    def _new_ticket(self, job: Job, anchor: bool) -> _Ticket:
        model_id = self.prepared[job.key].handle.model_id
        if anchor:
            name = f"latbench/{self.session}/anchor/{job.key}/{uuid.uuid4().hex[:8]}"
            attempt = 1
        else:
            attempt = self._attempts(job) + 1
            name = f"latbench/{self.session}/{job.key}/r{job.round}/a{attempt}"
        t = _Ticket(name, job, anchor, attempt, model_id, created=time.time())
        self._record(t)
        return t

    # -- waves ------------------------------------------------------------------------------------
    def execute(self, jobs: Sequence[Job], anchors: Sequence[Job], anchor_every: int,
                on_result: Callable[[JobResult, bool], None]) -> list[Job] | None:
        if not jobs:
            # Anchors alone: the session letting time pass before a re-measurement wave. On the
            # service an anchor job would cost a job and a whole queue wait (and, detached, one
            # job per call in a tight loop); the queue spaces an entry's rounds already.
            time.sleep(IDLE_S)
            return None
        self._journal()
        wanted = {(j.key, j.round): j for j in jobs}
        outstanding: dict[str, _Ticket] = {}
        intents: list[_Ticket] = []
        for t, state in self._open_tickets():  # jobs of earlier (killed or detached) runs: re-attach
            prepared = self.prepared.get(t.job.key)
            if t.anchor:
                if prepared is None or prepared.handle.model_id != t.model_id:
                    continue
            else:
                job = wanted.get((t.job.key, t.job.round))
                if job is None:
                    continue  # not asked for now (measured already, or another build's)
                if prepared is None or prepared.handle.model_id != t.model_id:
                    self._set(t, "superseded", "the artifact changed since it was submitted")
                    continue
                t.job = job
                del wanted[(job.key, job.round)]
            if state == "submitted" and t.job_id:
                outstanding[t.job_id] = t
            else:
                intents.append(t)
        for t in self._adopt(intents):
            outstanding[t.job_id] = t
        for t in intents:
            if t.job_id is None and not t.anchor:
                wanted[(t.job.key, t.job.round)] = t.job  # never reached the service: submit anew
        queue = [(j, a) for j, a in interleave(jobs, anchors, anchor_every) if a or (j.key, j.round) in wanted]
        if jobs and not any(not a for _, a in queue):
            queue = []  # every job is re-attached: no anchors of their own to add
        return self._run(queue, outstanding, on_result)

    def _adopt(self, intents: list[_Ticket]) -> list[_Ticket]:
        """Intents whose request may have reached the service (a crash, or a lost answer, between
        the request and the journal): found by name, they are adopted; the rest are marked lost."""
        if not intents:
            return []
        found = self._find_names({t.name for t in intents}, min(t.created for t in intents) - 300)
        adopted = []
        for t in intents:
            t.job_id = found.get(t.name)
            if t.job_id:
                self._set(t, "submitted")
                adopted.append(t)
            else:
                self._set(t, "lost", "not found on the service")
        return adopted

    def _run(self, queue: list[tuple[Job, bool]], outstanding: dict[str, _Ticket],
             on_result: Callable[[JobResult, bool], None]) -> list[Job] | None:
        import qai_hub.client as qc

        runner = self.runner
        interval = float(qc.Job._polling_interval)
        patience_s = float(qc.RATE_LIMIT_RETRY_TIMEOUT) * 60
        submit_patience, poll_patience = _Patience(), _Patience()
        failures: list[str] = []
        stopped: str | None = None
        tries: Counter[tuple[str, int]] = Counter()
        pending_ticket: _Ticket | None = None
        total, pos, done, idle = len(queue) + len(outstanding), 0, 0, 0
        while True:
            # Submit, in order, as far as the service lets us.
            while (pos < len(queue) and stopped is None and len(outstanding) < runner.max_outstanding
                   and not submit_patience.waiting()):
                if pending_ticket is None and not self.detach:
                    ready = next((i for i in range(pos, len(queue)) if not _busy(queue[i], outstanding)), None)
                    if ready is None:
                        break  # every job left waits for an earlier round of its entry
                    queue.insert(pos, queue.pop(ready))
                job, is_anchor = queue[pos]
                t = pending_ticket or self._new_ticket(job, is_anchor)
                pending_ticket = t
                try:
                    t.job_id, t.created = runner.submit(self.prepared[job.key].handle, t.name, job.policy)
                except _Transient as e:
                    if not isinstance(e, _RateLimited) and self._adopt([t]):  # it did get through
                        self._set(t, "submitted")
                    else:
                        if not isinstance(e, _RateLimited):
                            t.job_id = None
                            self._set(t, "intent")
                        if not submit_patience.failed(interval, patience_s):
                            stopped = (f"AI Hub kept refusing submissions for {patience_s:.0f} s ({e}); "
                                       f"submitted {pos} of {len(queue)} jobs")
                        break
                except _NotFound:  # the model went away since prepare(): the next run uploads it again
                    stopped = f"AI Hub no longer has model {t.model_id} ({job.key}); run the command again"
                    self._set(t, "failed", stopped)
                    break
                except DeviceError as e:
                    stopped = str(e)
                    self._set(t, "failed", str(e))
                    break
                else:
                    self._set(t, "submitted")
                submit_patience.ok()
                outstanding[t.job_id] = t
                pending_ticket = None
                pos += 1
                self.progress("submit (AI Hub)", pos, len(queue))
            submitted_all = pos >= len(queue) or stopped is not None
            if not outstanding and submitted_all:
                break
            # Collect whatever has finished.
            try:
                finished = self._finished(outstanding, probe=idle > 0 and idle % 10 == 0) if outstanding else {}
            except _Transient as e:
                if not poll_patience.failed(interval, patience_s):
                    raise DeviceError(f"AI Hub did not answer for {patience_s:.0f} s ({e}); the {len(outstanding)} "
                                      "submitted jobs go on: run the command again to collect them") from None
                time.sleep(poll_patience.waiting())
                continue
            poll_patience.ok()
            idle = 0 if finished else idle + 1
            for job_id in finished:
                t = outstanding.pop(job_id)
                retry = self._collect(t, on_result, failures, tries)
                if retry is not None:
                    queue.insert(pos, (retry.job, retry.anchor))
                else:
                    done += 1
            self.progress("collect (AI Hub)", done, total, f"{len(outstanding)} queued or running")
            if self.detach and submitted_all:
                break
            if not finished:
                time.sleep(max(interval, submit_patience.waiting()) if pos < len(queue) and stopped is None
                           else interval)
        if failures or stopped:
            problems = ([stopped] if stopped else []) + failures
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DeviceError(f"{problems[0]}{more}; results that arrived are in the journal: run the command "
                              "again to go on")
        pending = [t.job for t in outstanding.values() if not t.anchor] + [j for j, a in queue[pos:] if not a]
        return pending or None

    def _finished(self, outstanding: dict[str, _Ticket], probe: bool = False) -> dict[str, int]:
        """Job id -> state of the outstanding jobs that have finished: job summaries in bulk,
        newest first, paged back to the oldest outstanding job. With `probe`, the oldest job not
        seen finished is also asked for directly (a safety net against a listing that misses it)."""
        from qai_hub import public_rest_api as api

        st = api.api_pb.JobState
        if probe:
            oldest = min(outstanding.values(), key=lambda t: t.created)
            assert oldest.job_id is not None
            try:
                state = self.runner._call(f"reading job {oldest.job_id}", api.get_job, oldest.job_id).inference_job.job_state
            except _NotFound:
                state = st.JOB_STATE_FAILED  # gone: _collect says so
            if state in (st.JOB_STATE_DONE, st.JOB_STATE_FAILED):
                return {oldest.job_id: state}
        since = min(t.created for t in outstanding.values()) - 600
        found: dict[str, int] = {}
        offset = 0
        while True:
            page = self.runner._call("polling jobs", api.get_job_summary_list, offset=offset, limit=PAGE,
                                     states=[st.JOB_STATE_DONE, st.JOB_STATE_FAILED],
                                     job_type=api.api_pb.JobType.JOB_TYPE_INFERENCE).job_summaries
            created = []
            for s in page:
                if s.WhichOneof("job") != "inference_job_summary":
                    continue
                js = s.inference_job_summary
                created.append(js.creation_time.seconds)
                if js.job_id in outstanding:
                    found[js.job_id] = js.job_state
            if len(found) == len(outstanding) or len(page) < PAGE or (created and min(created) < since):
                return found
            offset += PAGE

    def _find_names(self, names: set[str], since: float) -> dict[str, str]:
        """Job name -> id for jobs of these names on the service (all states), newest first."""
        from qai_hub import public_rest_api as api

        found: dict[str, str] = {}
        offset = 0
        while True:
            try:
                page = self.runner._call("looking up submitted jobs", api.get_job_summary_list, offset=offset,
                                         limit=PAGE, job_type=api.api_pb.JobType.JOB_TYPE_INFERENCE).job_summaries
            except _Transient:
                return found
            created = []
            for s in page:
                js = s.inference_job_summary
                created.append(js.creation_time.seconds)
                if js.name in names:
                    found.setdefault(js.name, js.job_id)
            if len(found) == len(names) or len(page) < PAGE or (created and min(created) < since):
                return found
            offset += PAGE

    def _collect(self, t: _Ticket, on_result: Callable[[JobResult, bool], None], failures: list[str],
                 tries: Counter[tuple[str, int]]) -> _Ticket | None:
        """Read one finished job: hand its measurement to the session, or record why it failed.
        Returns the job again when its failure is worth another submission."""
        assert t.job_id is not None
        what = f"{t.job.key} (anchor)" if t.anchor else f"{t.job.key} round {t.job.round}"
        try:
            job_pb, result_pb = self.runner.read(t.job_id)
        except _NotFound:
            self._set(t, "lost", "the service no longer knows this job")
            failures.append(f"AI Hub job {t.job_id} ({what}) is no longer known to the service")
            return None
        ij = job_pb.inference_job
        if result_pb is None:
            reason = one_line(ij.failure_reason or "no reason given", self.runner.config.api_token)
            self._set(t, "failed", reason)
            tries[(t.job.key, t.job.round)] += 1
            if _retryable(job_pb.failure_type) and tries[(t.job.key, t.job.round)] < self.runner.max_attempts:
                return t
            kind = "expired" if _expired(job_pb.failure_type) else "failed"
            failures.append(f"AI Hub job {t.job_id} ({what}) {kind}: {reason}")
            return None
        try:
            m = self.runner.measurement(self.prepared[t.job.key], job_pb, result_pb, t.job.profile)
        except _BadResult as e:
            self._set(t, "failed", str(e))
            failures.append(f"AI Hub job {t.job_id} ({what}) {e}")
            return None
        on_result(JobResult(t.job, self.device_id, m), t.anchor)
        self._set(t, "collected")
        return None


def _busy(item: tuple[Job, bool], outstanding: dict[str, _Ticket]) -> bool:
    """A round whose entry has another round queued or running: held back until that one has
    finished, so that the rounds of an entry run at different times (and likely on different
    units) rather than side by side in one burst of the farm. Anchors are never held back."""
    job, is_anchor = item
    return not is_anchor and any(not t.anchor and t.job.key == job.key for t in outstanding.values())


def _expired(failure_type: int) -> bool:
    from qai_hub import public_api_pb2 as pb

    return failure_type == pb.JOB_FAILURE_TYPE_RUNTIME_TIMEOUT
