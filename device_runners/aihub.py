"""Qualcomm AI Hub: real Snapdragon phones lent over the network, driven through the `qai-hub` client.

Device ids: `aihub:NAME` (a device name as the catalogue spells it, e.g.
`aihub:Samsung Galaxy S24 (Family)`) or `aihub:ATTR[,ATTR...]` (attributes every match must
have, e.g. `aihub:chipset:qualcomm-snapdragon-8gen3`), optionally with `@OS` (an Android version
such as `@14`, or an interval `@[14,15)`). Opening resolves the id to ONE device of the
catalogue (the service's own choice: the newest OS among the matches) and pins it: the runner's
id is then `aihub:NAME@OS`, and every job of the run goes to that name and OS.

How it measures (one job = one (key, round); see the README's AI Hub section):

* **Upload once per content hash.** An artifact is uploaded as a model once; its model id is
  kept in the journal (meta `aihub_models`) and reused by later runs after a check that the
  service still has it.
* **Submit without waiting, collect as they finish.** `AIHubDispatcher.execute` submits every
  job of a wave (anchors spread through it as the local dispatcher spreads them), each as a
  profile job named `latbench/SESSION/KEY/rROUND/aATTEMPT`. The name is journalled before the
  request and the job id right after it (table `aihub_jobs`), so a killed run re-attaches to
  its jobs instead of submitting them again. Finished jobs are found in bulk (job summaries,
  newest first) and each result is handed to the session, which commits it at once. A round is
  held back while another round of its entry is queued or running, so the rounds of an entry
  run one after the other, at different times (other entries keep the queue full meanwhile).
  With `detach`, a run submits everything at once, collects what has already finished and
  returns; a later run collects the rest.
* **Samples** are the per-iteration inference times of the job's profile
  (`ProfileDetail.all_execution_times`); the caller's SamplingPolicy maps to
  `--max_profiler_iterations` (its fixed runs, else 100) and `--max_profiler_time` (its time
  cap). Warm-up is the service's. **Per-op rows** come from the per-layer detail, which the
  service reports as each layer's minimum over the iterations (not a median: provenance says so).
* **Provenance is read from the finished job**: the device name, OS, SoC and attributes as run,
  the runtime versions the service reports, its runtime configuration, the compute units the
  layers ran on, the job and model ids, the hub version and the job's dates.
* **Failures** are one line: no token configured or a token refused, an unknown device, a client
  the service no longer accepts, a job failing (with the service's reason; expiry and "busy"
  kinds are resubmitted up to `max_attempts`), rate limiting (backed off, then given up after
  the client's own `RATE_LIMIT_RETRY_TIMEOUT`), a result without per-iteration times. A result
  without per-layer detail keeps its samples with a warning.

The token is read by the client from its configuration (`qai-hub configure`, i.e.
~/.qai_hub/client.ini, or the file $QAIHUB_CLIENT_INI names); latbench never stores or prints it.
Pacing follows the client's own settings: polls every `qai_hub.client.Job._polling_interval`
seconds (10 by default).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_runners.base import DeviceInfo, Prepared, Runner
from device_runners.ort_common import artifact_info
from latbench.core.errors import DeviceError, UsageError
from latbench.core.progress import ProgressFn, no_progress
from latbench.core.text import first_line
from latbench.export.inspect import onnx_inputs
from latbench.measuring.journal import Journal
from latbench.measuring.measurement import Measurement, OpTime, SamplingPolicy
from latbench.measuring.session import Artifact, Job, JobResult, interleave

COMPUTE_UNITS = ("cpu", "gpu", "npu")
#: Profiler iterations of a job whose policy is adaptive (AI Hub's own default).
DEFAULT_ITERATIONS = 100
#: Job summaries fetched per request when looking for finished jobs.
PAGE = 100
MODELS_META = "aihub_models"
#: How long a call with no jobs (anchors only) waits instead of submitting anchor jobs.
IDLE_S = 0.1

INSTALL_HINT = "install the client with `pip install 'latbench[aihub]'`"
CONFIGURE_HINT = ("run `qai-hub configure --api_token TOKEN` (it writes ~/.qai_hub/client.ini) or point "
                  "$QAIHUB_CLIENT_INI at a client.ini with api_token, api_url and web_url in its [api] section")

_ATTRIBUTE = re.compile(r"^[a-z][a-z0-9_]*:[A-Za-z0-9._+-]+$")
_OS = re.compile(r"^(\d+(\.\d+)*|\[(\d+(\.\d+)*)?,(\d+(\.\d+)*)?\))$")
_BOX = "│┃|┌┐└┘─━ \t"

_TABLE = """CREATE TABLE IF NOT EXISTS aihub_jobs (
    name TEXT PRIMARY KEY, device TEXT NOT NULL, session TEXT NOT NULL, key TEXT NOT NULL,
    round INTEGER NOT NULL, anchor INTEGER NOT NULL, attempt INTEGER NOT NULL, role TEXT NOT NULL,
    policy TEXT NOT NULL, profile INTEGER NOT NULL, model_id TEXT, job_id TEXT, state TEXT NOT NULL,
    created REAL NOT NULL, reason TEXT)"""
_COLUMNS = "name, key, round, anchor, attempt, role, policy, profile, model_id, job_id, state, created"


class _Transient(Exception):
    """The service could not be reached or answered with errors; try again later."""


class _RateLimited(_Transient):
    """The service refused a request for its rate limit; nothing was created."""


class _NotFound(Exception):
    """The service does not know this id (deleted, expired, or another account's)."""


class _BadResult(Exception):
    """A job finished but its result cannot be read as a measurement."""


# -- device ids and configuration ---------------------------------------------------------------
def parse_device_id(device_id: str) -> tuple[str, list[str], str]:
    """`aihub:NAME[@OS]` or `aihub:ATTR[,ATTR...][@OS]` -> (name, attributes, os); UsageError if malformed."""
    spec = device_id.split(":", 1)[1].strip() if device_id.startswith("aihub:") else ""
    if not spec:
        raise UsageError("name an AI Hub device: aihub:NAME (e.g. 'aihub:Samsung Galaxy S24 (Family)') or "
                         "aihub:ATTRIBUTES (e.g. aihub:chipset:qualcomm-snapdragon-8gen3); `latbench devices` "
                         "lists the catalogue")
    os_ = ""
    if "@" in spec:
        head, tail = spec.rsplit("@", 1)
        if _OS.match(tail.strip()):
            spec, os_ = head.strip(), tail.strip()
    parts = [p.strip() for p in spec.split(",")]
    if all(_ATTRIBUTE.match(p) for p in parts):
        return "", parts, os_
    if len(spec) > 128 or not spec.isprintable():
        raise UsageError(f"invalid AI Hub device name {spec!r} (printable, at most 128 characters)")
    return spec, [], os_


def os_label(os_: str, attributes: Sequence[str]) -> str:
    return f"Android {os_}" if "os:android" in attributes and os_ else os_


def one_line(text: Any, secret: str | None = None) -> str:
    """A message of the service or client as one line: boxes drawn around it removed, JSON
    `{"detail": ...}` unwrapped, whitespace collapsed, the token (if it ever appeared) masked."""
    raw = str(text)
    try:
        detail = json.loads(raw)
        if isinstance(detail, dict) and "detail" in detail:
            raw = str(detail["detail"])
    except ValueError:
        pass
    words = " ".join(line.strip(_BOX) for line in raw.splitlines())
    words = re.sub(r"\s+", " ", words).strip()
    if secret:
        words = words.replace(secret, "***")
    return words[:400] or "no message"


def load_config(client_ini: str | Path | None = None) -> tuple[Any, str]:
    """The client's configuration (verbose off) and the file it came from; DeviceError when no
    token is configured. The token stays inside the returned ClientConfig."""
    import configparser

    from qai_hub import api_utils
    from qai_hub.public_rest_api import APIException

    path = str(client_ini) if client_ini else api_utils.get_config_path()
    try:
        config = api_utils.load_api_config_from_file(path)
    except FileNotFoundError:
        raise DeviceError(f"no AI Hub API token configured ({path} not found): {CONFIGURE_HINT}") from None
    except (APIException, configparser.Error):
        raise DeviceError(f"{path} is not a usable AI Hub client.ini (it needs api_token, api_url and web_url in "
                          f"an [api] section): {CONFIGURE_HINT}") from None
    if not config.api_token.strip():
        raise DeviceError(f"the AI Hub API token in {path} is empty: {CONFIGURE_HINT}")
    return dataclasses.replace(config, verbose=False), path


def sampling_options(policy: SamplingPolicy) -> tuple[int, int]:
    """(--max_profiler_iterations, --max_profiler_time) for a sampling policy."""
    iterations = policy.runs if policy.runs is not None else min(policy.max_runs, DEFAULT_ITERATIONS)
    return iterations, max(1, math.ceil(policy.time_cap_s))


def option_value(options: str, flag: str) -> str | None:
    try:
        words = shlex.split(options or "")
    except ValueError:
        return None
    return next((words[i + 1] for i, w in enumerate(words[:-1]) if w == flag), None)


def _when(ts: Any) -> str | None:
    """A protobuf Timestamp as ISO 8601 UTC (None when unset)."""
    if not ts.seconds and not ts.nanos:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts.seconds))


def _device_facts(dev: Any) -> dict[str, Any]:
    """Provenance of a device protobuf (catalogue entry or the device a job ran on)."""
    attributes = sorted(dev.attributes)
    chipset = next((a.split(":", 1)[1] for a in attributes if a.startswith("chipset:")), None)
    return {"device_kind": "aihub", "device_model": dev.name, "soc": dev.soc_description or chipset,
            "os": os_label(dev.os, attributes), "chipset": chipset, "attributes": attributes}


# -- the runner ---------------------------------------------------------------------------------
class AIHubRunner(Runner):
    """One AI Hub device. `measure()` submits one job and waits for it; measuring sessions use
    `dispatcher()`, which submits whole waves and collects them as they finish."""

    kind = "aihub"
    artifact_format = "onnx"

    def __init__(self, device: str, *, compute_units: str = "cpu", detach: bool = False, config: Any = None,
                 client_ini: str | Path | None = None, max_attempts: int = 3, max_outstanding: int = 500) -> None:
        super().__init__()
        name, attributes, os_ = parse_device_id(device)
        self.compute_units = str(compute_units).lower()
        if self.compute_units not in COMPUTE_UNITS:
            raise UsageError(f"AI Hub compute units are cpu, gpu or npu, got {compute_units!r}")
        if max_attempts < 1 or max_outstanding < 1:
            raise UsageError("max_attempts and max_outstanding must be >= 1")
        self.detach = detach
        self.max_attempts = max_attempts
        self.max_outstanding = max_outstanding
        try:
            import qai_hub
        except ImportError:
            raise DeviceError(f"{device} unavailable: the qai-hub client is not installed; {INSTALL_HINT}") from None
        self.config, self.config_source = (config, "the given ClientConfig") if config is not None else load_config(
            client_ini)
        self.config = dataclasses.replace(self.config, verbose=False)
        self.client = qai_hub.Client(config=self.config)
        self.client_version = qai_hub.__version__
        from qai_hub import public_rest_api as api

        if not self._call("listing devices", api.get_device_list, name, os_, attributes).devices:
            raise UsageError(f"no AI Hub device matches {device!r}; `latbench devices` lists the catalogue "
                             "(ids aihub:NAME@OS)")
        dev = self._call("selecting a device", api.get_device_list, name, os_, attributes, select=True).devices[0]
        if "framework:onnx" not in dev.attributes:
            raise UsageError(f"AI Hub device {dev.name!r} (OS {dev.os}) does not run ONNX models "
                             "(no framework:onnx attribute); pick another with `latbench devices`")
        self.device = qai_hub.Device(dev.name, dev.os)  # pinned: every job goes to this name and OS
        self.device_id = f"aihub:{dev.name}@{dev.os}"
        self._facts = _device_facts(dev)
        self._runtime_version = self._default_runtime_version()
        self._models: dict[str, str] = {}  # content hash -> model id known from a journal

    # -- discovery / opening ------------------------------------------------------------------
    @classmethod
    def discover(cls, *, client_ini: str | Path | None = None, **_: Any) -> list[DeviceInfo]:
        """The catalogue when a token is configured; otherwise one unavailable entry saying why."""
        try:
            import qai_hub  # noqa: F401
            from qai_hub import public_rest_api as api
        except ImportError:
            return [DeviceInfo("aihub", "aihub", False, f"the qai-hub client is not installed; {INSTALL_HINT}", {})]
        try:
            config, _ = load_config(client_ini)
            listing = _call(config, "listing devices", api.get_device_list)
        except (DeviceError, _Transient) as e:
            return [DeviceInfo("aihub", "aihub", False, str(e), {})]
        infos = []
        for dev in listing.devices:
            onnx = "framework:onnx" in dev.attributes
            infos.append(DeviceInfo(f"aihub:{dev.name}@{dev.os}", "aihub", onnx,
                                    None if onnx else "does not run ONNX models (no framework:onnx attribute)",
                                    _device_facts(dev)))
        return infos or [DeviceInfo("aihub", "aihub", False, "the AI Hub catalogue lists no device", {})]

    @classmethod
    def open(cls, device_id: str = "aihub", **options: Any) -> AIHubRunner:
        return cls(device_id, **options)

    # -- talking to the service -----------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return _call(self.config, what, fn, *args, **kwargs)

    def _client_call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A `qai_hub.Client` method, its exceptions turned into latbench's (one line each)."""
        import qai_hub
        from qai_hub.client import RateLimitedError

        try:
            return fn(*args, **kwargs)
        except RateLimitedError as e:
            raise _RateLimited(f"{what}: {one_line(e, self.config.api_token)}") from None
        except qai_hub.InternalError as e:
            raise _Transient(f"{what}: {one_line(e, self.config.api_token)}") from None
        except qai_hub.UserError as e:
            text = one_line(e, self.config.api_token)
            if "authenticate" in text.lower():
                raise DeviceError(_token_refused(self.config)) from None
            if "could not be found" in text:
                raise _NotFound(text) from None
            if "no longer supported" in text.lower():
                raise DeviceError(_too_old(text)) from None
            raise DeviceError(f"AI Hub refused {what}: {text}") from None
        except qai_hub.Error as e:
            raise DeviceError(f"{what} failed on AI Hub: {one_line(e, self.config.api_token)}") from None

    def _default_runtime_version(self) -> str | None:
        """The ONNX Runtime version the service runs by default (its framework list); the version
        a job really ran is in each measurement's provenance."""
        from qai_hub import public_rest_api as api

        try:
            frameworks = self._call("listing frameworks", api.get_framework_list).frameworks
        except (_Transient, _NotFound, DeviceError):
            return None
        onnx = [f for f in frameworks if "onnx" in f.name.lower()]
        chosen = next((f for f in onnx if "default" in f.api_tags), onnx[0] if onnx else None)
        return (chosen.full_version or chosen.api_version) if chosen is not None else None

    # -- provenance -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {**self._facts, "runtime": "onnxruntime", "runtime_version": self._runtime_version,
                "compute_units": self.compute_units, "service": "Qualcomm AI Hub", "api_url": self.config.api_url,
                "client": f"qai-hub {self.client_version}"}

    # -- artifacts ------------------------------------------------------------------------------
    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared:
        info = artifact_info(onnx_inputs(artifact))
        model = None
        known = self._models.get(content_hash)
        if known:
            try:
                model = self._client_call(f"looking up model {known}", self.client.get_model, known)
            except _NotFound:
                model = None  # deleted, or another account's: upload it again
            except _Transient as e:
                raise DeviceError(f"AI Hub is unreachable: {e}; run again later") from None
        if model is None:
            try:
                model = self._client_call(f"uploading {label}", self.client.upload_model, str(artifact),
                                          name=f"latbench-{label}-{content_hash[:12]}")
            except _Transient as e:
                raise DeviceError(f"uploading {label} to AI Hub failed: {e}; run again later") from None
            self._models[content_hash] = model.model_id
        return Prepared(label, content_hash, artifact, model, {**info, "aihub_model": model.model_id})

    def measure(self, prepared: Prepared, policy: SamplingPolicy | None = None, *, profile: bool = False) -> Measurement:
        """One job, submitted and waited for (callers that use a runner directly)."""
        out: list[Measurement] = []
        d = self.dispatcher(detach=False)
        d.prepared[prepared.label] = prepared
        d.execute([Job(prepared.label, 0, "model", policy or SamplingPolicy(), profile)], [], 1,
                  lambda res, _anchor: out.append(res.measurement))
        return out[0]

    def dispatcher(self, detach: bool | None = None) -> AIHubDispatcher:
        return AIHubDispatcher(self, self.detach if detach is None else detach)

    # -- jobs -----------------------------------------------------------------------------------
    def submit(self, model: Any, name: str, policy: SamplingPolicy) -> tuple[str, float]:
        """Submit one profile job; (job id, its creation time on the service's clock)."""
        iterations, seconds = sampling_options(policy)
        options = (f"--compute_unit {self.compute_units} --max_profiler_iterations {iterations} "
                   f"--max_profiler_time {seconds}")
        job = self._client_call(f"submitting {name}", self.client.submit_inference_job, model, self.device,
                                name=name, options=options, retry=False, profile=True)
        return job.job_id, job.date.timestamp()

    def read(self, job_id: str) -> tuple[Any, Any]:
        """(Job, JobResult or None) protobufs of a finished job."""
        from qai_hub import public_rest_api as api

        job = self._call(f"reading job {job_id}", api.get_job, job_id)
        if job.inference_job.job_state != api.api_pb.JobState.JOB_STATE_DONE:
            return job, None
        return job, self._call(f"reading the result of job {job_id}", api.get_job_results, job_id)

    def measurement(self, prepared: Prepared, job_pb: Any, result_pb: Any, profile: bool) -> Measurement:
        """A Measurement from a finished job: samples, per-op rows and provenance as run."""
        ij = job_pb.inference_job
        res = result_pb.inference_job_result if result_pb is not None else None
        if res is None or not res.HasField("detail"):
            raise _BadResult("finished without a profile (no per-iteration times)")
        detail = res.detail
        fmt = f"{detail.major_version}.{detail.minor_version}"
        if detail.major_version != 1 or detail.minor_version < 2 or not detail.all_execution_times:
            raise _BadResult(f"returned no per-iteration times (profile format {fmt}; latbench reads 1.2 or later)")
        samples = [t / 1000.0 for t in detail.all_execution_times]
        requested = option_value(ij.options, "--max_profiler_iterations")
        cap = option_value(ij.options, "--max_profiler_time")
        asked = int(requested) if requested and requested.isdigit() else None
        warnings: list[str] = []
        stopped_by = "runs" if asked is None or len(samples) >= asked else "time_cap"
        if stopped_by == "time_cap":
            warnings.append(f"AI Hub ran {len(samples)} of {asked} iterations (its --max_profiler_time {cap} s cap)")
        per_op: list[OpTime] = []
        units = Counter(_unit_name(layer.compute_unit) for layer in detail.layer_details)
        if profile:
            per_op = [OpTime(layer.layer_type_name or "unknown", layer.name, layer.execution_time / 1000.0)
                      for layer in detail.layer_details if layer.HasField("execution_time")]
            if not per_op:
                warnings.append(f"AI Hub returned no per-layer detail for job {ij.inference_job_id}: "
                                "no per-op breakdown for this measurement")
        requested_units = option_value(ij.options, "--compute_unit") or self.compute_units
        if requested_units != "cpu" and units.get("CPU"):
            warnings.append(f"compute unit fallback: {units['CPU']} of {sum(units.values())} layers ran on the CPU "
                            f"({requested_units} requested)")
        as_run = _device_facts(ij.device)
        if (as_run["device_model"], ij.device.os) != (self.device.name, self.device.os):
            warnings.append(f"the job ran on {as_run['device_model']} {as_run['os']}, not the pinned "
                            f"{self.device.name} {self.device.os}")
        runtimes = {t.name: t.version for t in detail.tool_versions}
        config = {c.name: {p.key: p.value for p in c.properties} for c in detail.runtime_config}
        threads = next((v.get("intra_op_num_threads") for v in config.values() if "intra_op_num_threads" in v), None)
        device = {
            **as_run, "runtime": "onnxruntime",
            "runtime_version": next((v for k, v in runtimes.items() if "onnx" in k.lower()), None),
            "runtimes": runtimes, "runtime_config": config, "compute_units": requested_units,
            "compute_units_used": dict(units), "threads": int(threads) if threads and threads.isdigit() else None,
            "service": "Qualcomm AI Hub", "hub_version": job_pb.hub_version, "client": f"qai-hub {self.client_version}",
        }
        sampling = {"source": "AI Hub profile: per-iteration inference times (all_execution_times)",
                    "max_profiler_iterations": asked, "max_profiler_time_s": int(cap) if cap and cap.isdigit() else None,
                    "warmup": "by the service", "timed_runs": len(samples), "stopped_by": stopped_by,
                    "timed_wall_s": round(sum(samples) / 1000.0, 6), "profile_format": fmt}
        provenance = self.provenance_for(
            prepared, sampling, device=device, aihub_job=ij.inference_job_id, aihub_model=ij.model.model_id,
            job_name=ij.name, options=ij.options, job_created=_when(ij.creation_time),
            job_started=_when(ij.start_time), job_completed=_when(ij.completion_time),
            per_op_statistic="the service profiler's per-layer minimum over the iterations (not a median)")
        provenance["measured_at"] = _when(ij.completion_time) or provenance["measured_at"]
        return Measurement(
            label=prepared.label, samples_ms=samples, provenance=provenance, per_op=per_op,
            session_ms=detail.cold_load_time / 1000.0 if detail.cold_load_time else None,
            first_inference_ms=None, warnings=warnings,
            extra={"estimated_inference_ms": detail.execution_time / 1000.0,
                   "warm_load_ms": detail.warm_load_time / 1000.0 if detail.warm_load_time else None,
                   "peak_memory_bytes": ([detail.execution_memory.peak.lower, detail.execution_memory.peak.upper]
                                         if detail.HasField("execution_memory") else None)})



def _unit_name(value: int) -> str:
    from qai_hub import public_api_pb2 as pb

    return pb.ComputeUnit.Name(value).removeprefix("COMPUTE_UNIT_")


def _token_refused(config: Any) -> str:
    return f"AI Hub refused the configured API token (401, bad or expired) at {config.api_url}: {CONFIGURE_HINT}"


def _too_old(detail: str) -> str:
    import qai_hub

    return (f"AI Hub no longer accepts this client, qai-hub {qai_hub.__version__} (426: {detail}); "
            "install a latbench whose [aihub] extra pins a newer qai-hub")


def _call(config: Any, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A `qai_hub.public_rest_api` function (the raw protobuf answers), its failures turned into
    latbench's: DeviceError (token, client too old, refused), _RateLimited, _Transient, _NotFound."""
    import requests
    from qai_hub import public_rest_api as api

    try:
        return fn(config, *args, **kwargs)
    except api.APIException as e:
        status, detail = e.status_code, one_line(e, config.api_token)
        if status == 401:
            raise DeviceError(_token_refused(config)) from None
        if status == 426:
            raise DeviceError(_too_old(detail)) from None
        if status == 429:
            raise _RateLimited(f"{what}: rate limited by AI Hub") from None
        if status == 404:
            raise _NotFound(detail) from None
        if status is None or status >= 500:
            raise _Transient(f"{what}: AI Hub answered {status or 'an error'}: {detail}") from None
        raise DeviceError(f"AI Hub refused {what} ({status}): {detail}") from None
    except requests.exceptions.RetryError as e:  # urllib3 gave up retrying 429 / 5xx answers
        raise _Transient(f"{what}: AI Hub kept answering with errors ({one_line(e, config.api_token)})") from None
    except requests.exceptions.RequestException as e:
        raise _Transient(f"{what}: cannot reach AI Hub at {config.api_url} ({first_line(e)})") from None


# -- the dispatcher ---------------------------------------------------------------------------
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

    def __init__(self, runner: AIHubRunner, detach: bool = False) -> None:
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


RUNNER = AIHubRunner
