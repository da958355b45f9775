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
import math
import re
import shlex
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from device_runners.aihub_client import (
    INSTALL_HINT,
    _BadResult,
    _call,
    _NotFound,
    _RateLimited,
    _token_refused,
    _too_old,
    _Transient,
    _unit_name,
    load_config,
    one_line,
)
from device_runners.aihub_dispatcher import MODELS_META, AIHubDispatcher
from device_runners.base import DeviceInfo, Prepared, Runner
from device_runners.ort_common import artifact_info
from latbench.core.errors import DeviceError, UsageError
from latbench.export.inspect import onnx_inputs, onnx_precision
from latbench.measuring.measurement import Measurement, OpTime, SamplingPolicy
from latbench.measuring.session import Job

COMPUTE_UNITS = ("cpu", "gpu", "npu")
#: Profiler iterations of a job whose policy is adaptive (AI Hub's own default).
DEFAULT_ITERATIONS = 100


_ATTRIBUTE = re.compile(r"^[a-z][a-z0-9_]*:[A-Za-z0-9._+-]+$")
_OS = re.compile(r"^(\d+(\.\d+)*|\[(\d+(\.\d+)*)?,(\d+(\.\d+)*)?\))$")



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
    table_option_fields = ("compute_units",)
    # int8: the QDQ ONNX is uploaded as it is and profiled by the service's ONNX Runtime (QDQ
    # graphs are what its QNN execution provider runs in int8 on the NPU); no quantize job: the
    # artifact, its recipe and its parity check stay latbench's.
    precisions = ("fp32", "fp16", "int8")

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
        info = artifact_info(onnx_inputs(artifact), onnx_precision(artifact))  # the graph's precision
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




__all__ = ["MODELS_META", "AIHubDispatcher", "AIHubRunner", "parse_device_id", "sampling_options"]

RUNNER = AIHubRunner
