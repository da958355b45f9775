"""A fake Qualcomm AI Hub service, for the real, unmodified `qai-hub` client to talk to.

It speaks the client's own wire protocol, built on the client's OWN bundled protobuf definitions
(`qai_hub.public_api_pb2`, imported from the installed package, never copied): protobuf bodies
over HTTP on a loopback port, `Authorization: token ...`, answers with
`Content-Type: application/x-protobuf`, every API path under `/api/v1/` ending with a slash.
See aihub_protocol.md (next to this file) for the endpoints and what the client does with each answer.

What it serves:
* a device catalogue (`DEFAULT_DEVICES`: Snapdragon phones with realistic attributes and SoC
  descriptions) with the server-side filtering the client relies on: exact name, every requested
  attribute, an OS version or right-open interval, and `select=True` (at most one device, the
  newest OS);
* token check: a wrong or missing token is answered 401;
* model upload through signed part URLs served by this same fake on a second loopback address
  standing in for the storage service (`PUT http://127.0.0.2:PORT/_upload/ID/PART?...`,
  HMAC-signed, expiring, answering an ETag), then completion with the ETags. It never hands out
  cloud credentials (`FileUploadResponse.credentials` is never set);
* inference jobs with `profile=True` and a job state machine CREATED -> PROVISIONING_DEVICE ->
  MEASURING_PERFORMANCE -> DONE / FAILED, advancing on the (injectable) clock by a background
  ticker, or only on demand (`auto_advance=False` with `step()` / `complete()`);
* profile results whose per-iteration inference times come from REALLY running the uploaded ONNX
  model with onnxruntime on this machine, per-layer detail from onnxruntime's profiler (each
  node's minimum over a few profiled runs, as the protobuf documents LayerDetail.execution_time;
  read from its Chrome-trace JSON: events with cat "Node", names ending "_kernel_time"), and raw-only
  provenance: `ProfileDetail.tool_versions` / `runtime_config` and `Device.soc_description`;
* job listing (`GET /api/v1/jobs/`, `GET /api/v1/job_summaries/`) to re-attach to jobs by id;
* failure injection (`Faults`, `fail()`, `expire()`): a job failing with a reason, rate limiting
  (429), a client too old (426, keyed on the `Client-Version` header the client sends), job
  expiry after a fixed lifetime, a result without per-layer detail or without any profile, and
  unknown devices (an empty device list, a 400 on job creation).

Everything is deterministic except the measured times themselves: ids come from counters, the
random model inputs from a fixed seed, and measurements run one at a time in creation order.
`fast_client_settings()` makes the client's own retry back-off and job polling fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import json
import re
import secrets
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from packaging.version import InvalidVersion, Version
from qai_hub import public_api_pb2 as pb

API_PREFIX = "/api/v1/"
UPLOAD_PREFIX = "/_upload/"
PROTOBUF = "application/x-protobuf"
HUB_VERSION = "fake-aihub-1"
USER_EMAIL = "latbench-tests@example.invalid"

ST = pb.JobState
IN_PROGRESS = (ST.JOB_STATE_CREATED, ST.JOB_STATE_PROVISIONING_DEVICE, ST.JOB_STATE_MEASURING_PERFORMANCE)
FINISHED = (ST.JOB_STATE_DONE, ST.JOB_STATE_FAILED)
PROFILED_RUNS = 3  # runs of the profiling session whose per-node minimum is the per-layer time
WARMUP_SECONDS = 0.05  # untimed runs before a job's timed iterations (at least one)


# --- devices -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubDevice:
    name: str
    os: str
    attributes: tuple[str, ...]
    soc_description: str

    def to_pb(self) -> pb.Device:
        return pb.Device(
            name=self.name, os=self.os, attributes=list(self.attributes), soc_description=self.soc_description
        )


_ANDROID_PHONE = ("format:phone", "os:android")
_ALL_RUNTIMES = ("framework:onnx", "framework:qnn", "framework:tflite")

DEFAULT_DEVICES: tuple[HubDevice, ...] = (
    HubDevice(
        "Samsung Galaxy S24 (Family)",
        "14",
        ("chipset:qualcomm-snapdragon-8gen3", *_ANDROID_PHONE, *_ALL_RUNTIMES, "hexagon:v75", "vendor:samsung"),
        "Qualcomm Snapdragon 8 Gen 3 (SM8650)",
    ),
    HubDevice(
        "Samsung Galaxy S23 (Family)",
        "13",
        ("chipset:qualcomm-snapdragon-8gen2", *_ANDROID_PHONE, *_ALL_RUNTIMES, "hexagon:v73", "vendor:samsung"),
        "Qualcomm Snapdragon 8 Gen 2 (SM8550)",
    ),
    HubDevice(
        "Samsung Galaxy S23 (Family)",
        "14",
        ("chipset:qualcomm-snapdragon-8gen2", *_ANDROID_PHONE, *_ALL_RUNTIMES, "hexagon:v73", "vendor:samsung"),
        "Qualcomm Snapdragon 8 Gen 2 (SM8550)",
    ),
    HubDevice(
        "Snapdragon 8 Elite QRD",
        "15",
        ("chipset:qualcomm-snapdragon-8-elite", *_ANDROID_PHONE, *_ALL_RUNTIMES, "hexagon:v79", "vendor:qualcomm"),
        "Qualcomm Snapdragon 8 Elite (SM8750)",
    ),
    HubDevice(
        "Google Pixel 3",
        "12",
        ("chipset:qualcomm-snapdragon-845", *_ANDROID_PHONE, "framework:tflite", "vendor:google"),
        "Qualcomm Snapdragon 845 (SDM845)",
    ),
)


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def os_matches(device_os: str, wanted: str) -> bool:
    """An empty filter, an exact version, or a right-open interval "[lo,hi)" (either side may be empty)."""
    if not wanted:
        return True
    m = re.fullmatch(r"\[([^,]*),([^)]*)\)", wanted)
    have = _version(device_os)
    if m is None:
        want = _version(wanted)
        return device_os == wanted or (have is not None and want is not None and have == want)
    if have is None:
        return False
    lo, hi = m.group(1).strip(), m.group(2).strip()
    return (not lo or have >= Version(lo)) and (not hi or have < Version(hi))


def filter_devices(
    devices: tuple[HubDevice, ...], name: str = "", os: str = "", attributes: list[str] | None = None,
    select: bool = False,
) -> list[HubDevice]:
    wanted = set(attributes or [])
    found = [
        d for d in devices
        if (not name or d.name == name) and wanted <= set(d.attributes) and os_matches(d.os, os)
    ]
    if select and found:
        # One device: the newest OS among the matches (ties: catalogue order).
        found = [max(found, key=lambda d: (_version(d.os) or Version("0"), -devices.index(d)))]
    return found


# --- measuring with onnxruntime ------------------------------------------------------------------

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}
_API_DTYPES = {
    "float32": pb.TENSOR_DTYPE_FLOAT32, "float16": pb.TENSOR_DTYPE_FLOAT16, "int32": pb.TENSOR_DTYPE_INT32,
    "int64": pb.TENSOR_DTYPE_INT64, "int8": pb.TENSOR_DTYPE_INT8, "uint8": pb.TENSOR_DTYPE_UINT8,
    "int16": pb.TENSOR_DTYPE_INT16, "uint16": pb.TENSOR_DTYPE_UINT16, "bool": pb.TENSOR_DTYPE_BOOL,
}
_COMPUTE_UNITS = {
    "CPUExecutionProvider": pb.COMPUTE_UNIT_CPU,
    "QNNExecutionProvider": pb.COMPUTE_UNIT_NPU,
    "OpenCLExecutionProvider": pb.COMPUTE_UNIT_GPU,
}


@dataclass
class LayerTime:
    name: str
    op_type: str
    provider: str
    time_us: int


@dataclass
class Measurement:
    times_us: list[int]
    cold_load_us: int
    warm_load_us: int
    layers: list[LayerTime]
    memory_increase: int
    memory_peak: int
    inputs: list[tuple[str, tuple[int, ...], str]]
    ort_version: str
    threads: int


def _rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process, from /proc (0, 0 where unavailable)."""
    cur = peak = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def read_ort_layer_times(trace_path: str | Path, skip_runs: int = 1) -> list[LayerTime]:
    """Per-node kernel times from an onnxruntime profile (Chrome trace JSON): each node's MINIMUM
    over the runs recorded after the first `skip_runs` (AI Hub's LayerDetail.execution_time is,
    by its protobuf's own documentation, "the minimum execution time for this layer").

    Node events have cat "Node", a name "<node>_kernel_time", dur in microseconds and
    args.op_name / args.provider; each run is a cat "Session" event named "model_run". Nodes
    keep the order of their first appearance."""
    events = json.loads(Path(trace_path).read_text())
    if isinstance(events, dict):
        events = events.get("traceEvents", [])
    runs = sorted(ev.get("ts", 0) for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run")
    cutoff = runs[skip_runs] if 0 < skip_runs < len(runs) else None
    layers: dict[str, LayerTime] = {}
    for ev in events:
        name = ev.get("name", "")
        if ev.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        if cutoff is not None and ev.get("ts", 0) < cutoff:
            continue
        node = name[: -len("_kernel_time")]
        args = ev.get("args", {})
        dur = int(ev.get("dur", 0))
        if node in layers:
            layers[node].time_us = min(layers[node].time_us, dur)
        else:
            layers[node] = LayerTime(node, args.get("op_name", ""), args.get("provider", ""), dur)
    return list(layers.values())


def measure_onnx(
    model_path: str | Path, *, iterations: int = 100, max_seconds: float = 600.0, threads: int = 1,
    layer_detail: bool = True, workdir: str | Path | None = None, seed: int = 0,
) -> Measurement:
    """Really run an ONNX model with onnxruntime's CPU provider, as a profile job would on a phone.

    Times `iterations` runs one by one (stopping early once `max_seconds` are spent, like
    --max_profiler_time), after untimed warm-up runs (at least one, and for at least
    WARMUP_SECONDS: how a profiler settles caches and clocks first; the service's own warm-up is
    not documented). With one thread each run is timed by
    this thread's CPU clock (onnxruntime runs a single-threaded session on the calling thread),
    the clock latbench's own cpu runner picks for one thread: a phone lent by the service is
    nobody else's while it measures, and this host is shared (other processes, and this fake's
    own server threads holding the GIL when a run returns) -- waits that a wall clock would add
    to every sample. Several threads: the wall clock. Then, when `layer_detail`, one more
    session with onnxruntime's profiler runs 1 + PROFILED_RUNS times and each node's minimum over
    the runs after the first is kept."""
    import onnxruntime as ort

    def options(profile_prefix: str | None = None) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        return so

    rss_before, _ = _rss_bytes()
    t0 = time.perf_counter_ns()
    sess = ort.InferenceSession(str(model_path), options(), providers=["CPUExecutionProvider"])
    cold = (time.perf_counter_ns() - t0) // 1000
    t0 = time.perf_counter_ns()
    ort.InferenceSession(str(model_path), options(), providers=["CPUExecutionProvider"])
    warm = (time.perf_counter_ns() - t0) // 1000

    rng = np.random.default_rng(seed)
    feeds, inputs = {}, []
    for i in sess.get_inputs():
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in i.shape)
        dtype = _ORT_TYPES.get(i.type, np.float32)
        arr = rng.standard_normal(shape) if np.issubdtype(dtype, np.floating) else rng.integers(0, 2, shape)
        feeds[i.name] = np.asarray(arr).astype(dtype)
        inputs.append((i.name, shape, np.dtype(dtype).name))

    warm_until = time.perf_counter() + WARMUP_SECONDS
    sess.run(None, feeds)  # warm-up, untimed
    while time.perf_counter() < warm_until:
        sess.run(None, feeds)
    times: list[int] = []
    clock = time.thread_time_ns if threads == 1 else time.perf_counter_ns
    deadline = time.perf_counter() + max_seconds
    for _ in range(max(1, iterations)):
        t0 = clock()
        sess.run(None, feeds)
        times.append(max(1, (clock() - t0) // 1000))
        if time.perf_counter() > deadline:
            break
    rss_after, peak = _rss_bytes()

    layers: list[LayerTime] = []
    if layer_detail:
        tmp = Path(tempfile.mkdtemp(prefix="ortprof-", dir=workdir))
        try:
            psess = ort.InferenceSession(
                str(model_path), options(str(tmp / "profile")), providers=["CPUExecutionProvider"]
            )
            for _ in range(1 + PROFILED_RUNS):  # a warm-up run, then the runs the minimum is taken over
                psess.run(None, feeds)
            layers = read_ort_layer_times(psess.end_profiling(), skip_runs=1)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Measurement(
        times, int(cold), int(warm), layers, max(0, rss_after - rss_before), peak, inputs, ort.__version__, threads
    )


def onnx_io_spec(data: bytes) -> tuple[pb.NamedTensorTypeList, pb.NamedTensorTypeList] | None:
    """Input and output specs of an ONNX model, as the client reads them from a Model."""
    try:
        import onnx
        from onnx import helper

        model = onnx.load_model_from_string(data)
    except Exception:  # not ONNX, or onnx missing: no spec, like a model the hub cannot parse
        return None

    def specs(values) -> pb.NamedTensorTypeList:
        out = pb.NamedTensorTypeList()
        for v in values:
            tt = v.type.tensor_type
            try:
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
            except Exception:
                continue
            if dtype not in _API_DTYPES:
                continue
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            out.types.append(
                pb.NamedTensorType(name=v.name, tensor_type=pb.TensorType(shape=shape, dtype=_API_DTYPES[dtype]))
            )
        return out

    initializers = {i.name for i in model.graph.initializer}
    return specs([i for i in model.graph.input if i.name not in initializers]), specs(model.graph.output)


# --- job options ---------------------------------------------------------------------------------


class OptionError(ValueError):
    pass


@dataclass
class JobOptions:
    compute_unit: tuple[str, ...] = ()
    max_profiler_iterations: int = 100
    max_profiler_time: int = 600
    qairt_version: str | None = None
    other: dict[str, str] = field(default_factory=dict)


# Flags the fake understands. Real AI Hub documents more (tflite/qnn/onnx runtime options); the
# fake records those it knows and refuses the rest, as a server validating options would.
_VALUE_FLAGS = {"--compute_unit", "--max_profiler_iterations", "--max_profiler_time", "--qairt_version",
                "--onnx_execution_providers", "--onnx_options", "--qnn_options"}
_BOOL_FLAGS = {"--dequantize_outputs"}


def parse_options(text: str) -> JobOptions:
    opts = JobOptions()
    words = shlex.split(text or "")
    i = 0
    while i < len(words):
        flag = words[i]
        if flag in _BOOL_FLAGS:
            opts.other[flag] = "true"
            i += 1
            continue
        if flag not in _VALUE_FLAGS:
            raise OptionError(f"Unknown option {flag!r}")
        if i + 1 >= len(words):
            raise OptionError(f"Option {flag} needs a value")
        value = words[i + 1]
        i += 2
        if flag == "--compute_unit":
            units = tuple(u.strip().lower() for u in value.split(",") if u.strip())
            if not units or any(u not in ("cpu", "gpu", "npu") for u in units):
                raise OptionError(f"--compute_unit takes cpu, gpu or npu (comma-separated), not {value!r}")
            opts.compute_unit = units
        elif flag in ("--max_profiler_iterations", "--max_profiler_time"):
            if not value.isdigit() or int(value) < 1:
                raise OptionError(f"{flag} takes a positive integer, not {value!r}")
            setattr(opts, flag[2:], int(value))
        elif flag == "--qairt_version":
            opts.qairt_version = value
        else:
            opts.other[flag] = value
    return opts


# --- service state -------------------------------------------------------------------------------


@dataclass
class Faults:
    """Misbehaviour on demand; change the fields at any time (they are read on every request/tick)."""

    rate_limit: int = 0  # the next N matching API requests are answered 429
    rate_limit_method: str | None = None  # only requests of this method ("POST", "GET") count; None: all
    rate_limit_path: str = ""  # only paths starting with this (e.g. "/api/v1/jobs/")
    retry_after: str | None = None  # a Retry-After header on 429 answers (urllib3 honours it)
    min_client_version: str | None = None  # clients whose Client-Version header is older get 426
    fail_jobs_with: str | None = None  # every job reaching the device fails with this reason
    fail_names: dict[str, str] = field(default_factory=dict)  # job name -> failure reason
    fail_matching: dict[str, str] = field(default_factory=dict)  # regex searched in job names -> failure reason
    expire_next: int = 0  # the next N jobs leaving the queue expire there instead (their lifetime ran out)
    hold_in_queue: bool = False  # jobs stay CREATED (until their lifetime ends)
    drop_layer_detail: bool = False  # profile results without per-layer detail
    drop_profile: bool = False  # results without any ProfileDetail (download_profile() gives {})
    reject_upload_parts: int = 0  # the next N part uploads are refused by the storage (403 AccessDenied)


@dataclass
class _Upload:
    upload_id: str
    model_id: str
    size: int
    part_size: int
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # part -> (data, etag)


@dataclass
class _Model:
    model_id: str
    name: str
    model_type: int
    is_directory: bool
    created: float
    path: Path | None = None
    sha256: str | None = None
    upload: _Upload | None = None
    io_spec: tuple[pb.NamedTensorTypeList, pb.NamedTensorTypeList] | None = None

    def to_pb(self) -> pb.Model:
        m = pb.Model(
            model_id=self.model_id, name=self.name, model_type=self.model_type, is_directory=self.is_directory,
            file_upload_complete=self.path is not None, creation_time=_ts(self.created),
        )
        if self.io_spec is not None:
            m.input_spec.CopyFrom(self.io_spec[0])
            m.output_spec.CopyFrom(self.io_spec[1])
        return m


@dataclass
class _Job:
    job_id: str
    name: str
    model_id: str
    device: HubDevice
    options: str
    parsed: JobOptions
    profile: bool
    created: float
    state: int = ST.JOB_STATE_CREATED
    started: float | None = None
    completed: float | None = None
    failure_reason: str | None = None
    failure_type: int = pb.JOB_FAILURE_TYPE_UNSPECIFIED
    measuring: bool = False
    detail: pb.ProfileDetail | None = None
    tensor_types: pb.NamedTensorTypeList | None = None
    drop_profile: bool = False


def _ts(t: float | None) -> Timestamp:
    ts = Timestamp()
    if t is not None:
        ts.FromNanoseconds(int(t * 1e9))
    return ts


_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _make_id(prefix: str, n: int) -> str:
    """Ids shaped like the hub's ("j" + 8 lowercase alphanumerics), from a counter."""
    out = ""
    for _ in range(8):
        n, r = divmod(n, 36)
        out = _ALPHABET[r] + out
    return prefix + out


class FakeAIHub:
    """The service: state, state machine, measurements. `serve()` (or `with FakeAIHub() as hub`)
    puts it on a loopback port; `client_config()` / `write_client_ini()` point the client at it.

    * `token`: the API token it accepts (random by default; a fake, never a real credential).
    * `auto_advance`: jobs move CREATED -> PROVISIONING_DEVICE after `queue_seconds`, then
      MEASURING_PERFORMANCE after `provision_seconds`, on `clock` (default time.time; inject a
      callable to drive it by hand), checked every `tick_seconds` by a background ticker and by
      `tick()`. With False, only `step()` / `complete()` move jobs. Either way a job not finished
      `job_lifetime_seconds` after its creation fails (expiry), and `fail()` / `expire()` act now.
    * `max_part_size`: the upload part size it hands out (small values exercise multipart).
    * `ort_threads`: onnxruntime intra-op threads for the measurements (one device, one job at a time).
    * `storage_host`: the loopback address serving the signed part URLs.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        devices: tuple[HubDevice, ...] = DEFAULT_DEVICES,
        auto_advance: bool = True,
        queue_seconds: float = 0.05,
        provision_seconds: float = 0.05,
        job_lifetime_seconds: float = 3600.0,
        max_part_size: int = 5 * 1024 * 1024,
        upload_url_ttl: float = 600.0,
        ort_threads: int = 1,
        clock: Callable[[], float] = time.time,
        tick_seconds: float = 0.02,
        storage_host: str = "127.0.0.2",
    ):
        self.token = token if token is not None else secrets.token_hex(16)
        self.devices = devices
        self.auto_advance = auto_advance
        self.queue_seconds = queue_seconds
        self.provision_seconds = provision_seconds
        self.job_lifetime_seconds = job_lifetime_seconds
        self.max_part_size = max_part_size
        self.upload_url_ttl = upload_url_ttl
        self.ort_threads = ort_threads
        self.clock = clock
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.measured: list[str] = []  # job ids in the order their measurements ran
        self._lock = threading.RLock()
        self._measure_lock = threading.Lock()  # one device at a time: measurements never overlap
        self._models: dict[str, _Model] = {}
        self._uploads: dict[str, _Upload] = {}
        self._jobs: dict[str, _Job] = {}
        self._counter = 0
        self._signing_key = secrets.token_bytes(32)
        self._storage = Path(tempfile.mkdtemp(prefix="fake-aihub-"))
        self._server: http.server.ThreadingHTTPServer | None = None
        self._storage_server: http.server.ThreadingHTTPServer | None = None
        self._storage_host = storage_host
        self.storage_url = ""
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._tick_seconds = tick_seconds
        self.base_url = ""

    # -- lifecycle

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> FakeAIHub:
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ValueError("the fake AI Hub only listens on loopback")
        self._server = http.server.ThreadingHTTPServer((host, port), type("Api", (_Handler,), {"hub": self}))
        self.base_url = f"http://{host}:{self._server.server_address[1]}"
        # Signed part URLs point at another host, as real ones point at the storage service (the
        # client tells hub answers from others by the api_url prefix). Same server if it cannot bind.
        storage = type("Storage", (_Handler,), {"hub": self, "role": "storage"})
        try:
            self._storage_server = http.server.ThreadingHTTPServer((self._storage_host, 0), storage)
            self.storage_url = f"http://{self._storage_host}:{self._storage_server.server_address[1]}"
        except OSError:
            self._storage_server, self.storage_url = None, self.base_url
        self._threads = [threading.Thread(target=self._ticker, daemon=True)]
        for server in (self._server, self._storage_server):
            if server is not None:
                server.daemon_threads = True
                self._threads.append(
                    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                )
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        for server in (self._server, self._storage_server):
            if server is not None:
                server.shutdown()
                server.server_close()
        for t in self._threads:
            t.join(timeout=30)
        shutil.rmtree(self._storage, ignore_errors=True)

    def __enter__(self) -> FakeAIHub:
        return self.serve() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- client configuration

    def client_config(self, token: str | None = None):
        """A qai_hub.ClientConfig pointing at this fake (with its token unless one is given)."""
        import qai_hub

        return qai_hub.ClientConfig(
            api_token=self.token if token is None else token, api_url=self.base_url, web_url=self.base_url,
            verbose=False,
        )

    def write_client_ini(self, path: str | Path, token: str | None = None) -> Path:
        """A client.ini for QAIHUB_CLIENT_INI (the [api] section the client reads)."""
        path = Path(path)
        path.write_text(
            "[api]\n"
            f"api_token = {self.token if token is None else token}\n"
            f"api_url = {self.base_url}\n"
            f"web_url = {self.base_url}\n"
            "verbose = false\n"
        )
        return path

    # -- ids

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            return _make_id(prefix, self._counter)

    # -- on-demand control

    def job_state(self, job_id: str) -> int:
        with self._lock:
            return self._jobs[job_id].state

    def job_ids(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def step(self, job_id: str) -> int:
        """Advance a job by one state (measuring really runs on the step into DONE)."""
        with self._lock:
            job = self._jobs[job_id]
            if job.state == ST.JOB_STATE_CREATED:
                job.state, job.started = ST.JOB_STATE_PROVISIONING_DEVICE, self.clock()
                return job.state
            if job.state == ST.JOB_STATE_PROVISIONING_DEVICE:
                job.state = ST.JOB_STATE_MEASURING_PERFORMANCE
                return job.state
            if job.state in FINISHED or job.measuring:
                return job.state
            job.measuring = True
        self._run_job(job)
        return job.state

    def complete(self, job_id: str) -> int:
        """Run a job through to its end now."""
        while self.job_state(job_id) not in FINISHED:
            self.step(job_id)
        return self.job_state(job_id)

    def fail(self, job_id: str, reason: str, failure_type: int = pb.JOB_FAILURE_TYPE_UNKNOWN) -> None:
        with self._lock:
            self._finish_failed(self._jobs[job_id], reason, failure_type)

    def expire(self, job_id: str) -> None:
        with self._lock:
            self._expire(self._jobs[job_id])

    # -- the state machine

    def _finish_failed(self, job: _Job, reason: str, failure_type: int) -> None:
        job.state, job.failure_reason, job.failure_type = ST.JOB_STATE_FAILED, reason, failure_type
        job.completed = self.clock()

    def _expire(self, job: _Job) -> None:
        self._finish_failed(
            job,
            f"Job timed out: not finished {self.job_lifetime_seconds:g} s after its creation.",
            pb.JOB_FAILURE_TYPE_RUNTIME_TIMEOUT,
        )

    def _ticker(self) -> None:
        while not self._stop.wait(self._tick_seconds):
            self.tick()

    def tick(self) -> None:
        """Advance jobs by the clock; then run at most one pending measurement."""
        now = self.clock()
        to_run = None
        with self._lock:
            for job in self._jobs.values():
                if job.state in FINISHED or job.measuring:
                    continue
                if now - job.created >= self.job_lifetime_seconds:
                    self._expire(job)
                    continue
                if not self.auto_advance or self.faults.hold_in_queue:
                    continue
                if job.state == ST.JOB_STATE_CREATED and now - job.created >= self.queue_seconds:
                    if self.faults.expire_next > 0:
                        self.faults.expire_next -= 1
                        self._expire(job)
                        continue
                    job.state, job.started = ST.JOB_STATE_PROVISIONING_DEVICE, now
                if job.state == ST.JOB_STATE_PROVISIONING_DEVICE and now - job.started >= self.provision_seconds:
                    job.state = ST.JOB_STATE_MEASURING_PERFORMANCE
                if job.state == ST.JOB_STATE_MEASURING_PERFORMANCE and to_run is None:
                    job.measuring = True
                    to_run = job
        if to_run is not None:
            self._run_job(to_run)

    def _run_job(self, job: _Job) -> None:
        """Measure (outside the service lock, one job at a time) and finish the job."""
        faults = self.faults
        reason = (faults.fail_names.get(job.name)
                  or next((r for pattern, r in faults.fail_matching.items() if re.search(pattern, job.name)), None)
                  or faults.fail_jobs_with)
        try:
            if reason:
                with self._lock:
                    self._finish_failed(job, reason, pb.JOB_FAILURE_TYPE_RUNTIME_CRASH)
                return
            with self._lock:
                model = self._models[job.model_id]
            with self._measure_lock:
                self.measured.append(job.job_id)
                try:
                    m = measure_onnx(
                        model.path, iterations=job.parsed.max_profiler_iterations,
                        max_seconds=job.parsed.max_profiler_time, threads=self.ort_threads,
                        layer_detail=job.profile and not faults.drop_layer_detail, workdir=self._storage,
                    )
                except Exception as e:  # the runtime refused the model: the job fails, as on a phone
                    with self._lock:
                        self._finish_failed(job, f"Failed to profile the model: {e}", pb.JOB_FAILURE_TYPE_MODEL_INVALID)
                    return
            with self._lock:
                if job.state in FINISHED:  # failed or expired on demand meanwhile
                    return
                job.detail = self._profile_detail(job, m)
                job.drop_profile = faults.drop_profile
                job.tensor_types = pb.NamedTensorTypeList(
                    types=[
                        pb.NamedTensorType(
                            name=n, tensor_type=pb.TensorType(shape=list(s), dtype=_API_DTYPES.get(d, 1))
                        )
                        for n, s, d in m.inputs
                    ]
                )
                job.state, job.completed = ST.JOB_STATE_DONE, self.clock()
        finally:
            job.measuring = False

    def _profile_detail(self, job: _Job, m: Measurement) -> pb.ProfileDetail:
        est = min(m.times_us)
        detail = pb.ProfileDetail(
            major_version=1, minor_version=2, execution_time=est, peak_memory_usage=m.memory_peak,
            after_execution_peak_memory=m.memory_peak, cold_load_time=m.cold_load_us,
            warm_load_time=m.warm_load_us, load_time=m.cold_load_us,
            all_execution_times=m.times_us, all_cold_load_times=[m.cold_load_us],
            all_warm_load_times=[m.warm_load_us],
        )
        rng = pb.Range(lower=m.memory_increase, upper=m.memory_increase)
        peak = pb.Range(lower=m.memory_peak, upper=m.memory_peak)
        detail.execution_memory.CopyFrom(pb.ProfileDetail.MemoryUsage(increase=rng, peak=peak))
        for i, layer in enumerate(m.layers):
            detail.layer_details.append(
                pb.LayerDetail(
                    name=layer.name, layer_type_name=layer.op_type, id=str(i), delegate_name=layer.provider,
                    compute_unit=_COMPUTE_UNITS.get(layer.provider, pb.COMPUTE_UNIT_CPU),
                    execution_time=layer.time_us,
                )
            )
        detail.tool_versions.append(pb.ToolVersion(name="onnxruntime", version=m.ort_version))
        if job.parsed.qairt_version:
            detail.tool_versions.append(pb.ToolVersion(name="QAIRT", version=job.parsed.qairt_version))
        props = {
            "execution_providers": "CPUExecutionProvider",
            "intra_op_num_threads": str(m.threads),
            "requested_compute_unit": ",".join(job.parsed.compute_unit) or "default",
            "iterations": str(len(m.times_us)),
        }
        detail.runtime_config.append(
            pb.RuntimeConfig(
                name="onnxruntime",
                properties=[pb.RuntimeConfigProperty(key=k, value=v) for k, v in props.items()],
            )
        )
        return detail

    # -- protobuf views

    def _job_pb(self, job: _Job) -> pb.Job:
        ij = pb.InferenceJob(
            inference_job_id=job.job_id, user=pb.User(email=USER_EMAIL), model=self._models[job.model_id].to_pb(),
            device=job.device.to_pb(), job_state=job.state, name=job.name, creation_time=_ts(job.created),
            options=job.options, last_updated_time=_ts(self.clock()), is_profiling_on=job.profile,
        )
        ij.queued_time.CopyFrom(_ts(job.created))
        if job.started is not None:
            ij.start_time.CopyFrom(_ts(job.started))
        if job.completed is not None:
            ij.completion_time.CopyFrom(_ts(job.completed))
        if job.failure_reason is not None:
            ij.failure_reason = job.failure_reason
        if job.detail is not None:
            ij.execution_time = job.detail.execution_time
            ij.execution_peak_memory.CopyFrom(job.detail.execution_memory.peak)
        if job.tensor_types is not None:
            ij.tensor_type_list.CopyFrom(job.tensor_types)
        return pb.Job(inference_job=ij, hub_version=HUB_VERSION, failure_type=job.failure_type)

    def _summary_pb(self, job: _Job) -> pb.JobSummary:
        s = pb.InferenceJobSummary(
            job_id=job.job_id, user=pb.User(email=USER_EMAIL), name=job.name, job_state=job.state,
            device_name=job.device.name, device_os_version=job.device.os, creation_time=_ts(job.created),
            is_profiling_on=job.profile,
        )
        if job.detail is not None:
            s.execution_time = job.detail.execution_time
            s.execution_peak_memory.CopyFrom(job.detail.execution_memory.peak)
        return pb.JobSummary(inference_job_summary=s)

    # -- request handling (called by _Handler with the lock NOT held)

    def sign(self, upload_id: str, part: int, expires: int) -> str:
        return hmac.new(self._signing_key, f"{upload_id}:{part}:{expires}".encode(), hashlib.sha256).hexdigest()

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers, body: bytes, role: str = "api"):
        """Returns (status, content_type, body, extra headers)."""
        self.requests.append((method, path))
        if path.startswith(UPLOAD_PREFIX) and (role == "storage" or self.storage_url == self.base_url):
            return self._handle_upload_part(method, path, query, body)
        if role != "api" or not path.startswith(API_PREFIX):
            return _error(404, "Not found.")
        too_old = self._client_too_old(headers.get("Client-Version", ""))
        if too_old:
            return too_old
        limited = self._rate_limited(method, path)
        if limited:
            return limited
        token = headers.get("Authorization", "")
        if not hmac.compare_digest(token.encode(), f"token {self.token}".encode()):
            return _error(401, "Invalid token.")
        rel = re.sub(r"^projects/[^/]+/", "", path[len(API_PREFIX):])
        for pattern, meth, func in self._routes():
            m = re.fullmatch(pattern, rel)
            if m and method == meth:
                return func(query, body, *m.groups())
        return _error(404, "Not found.")

    def _routes(self):
        return (
            (r"devices/", "GET", self._get_devices),
            (r"users/auth/user/", "GET", self._get_user),
            (r"frameworks/", "GET", self._get_frameworks),
            (r"models/", "POST", self._create_model),
            (r"models/", "GET", self._list_models),
            (r"models/([^/]+)/", "GET", self._get_model),
            (r"models/([^/]+)/multipart_upload/", "GET", self._start_upload),
            (r"models/([^/]+)/multipart_upload/", "POST", self._complete_upload),
            (r"jobs/", "POST", self._create_job),
            (r"jobs/", "GET", self._list_jobs),
            (r"job_summaries/", "GET", self._list_job_summaries),
            (r"jobs/([^/]+)/", "GET", self._get_job),
            (r"jobs/([^/]+)/", "PATCH", self._rename_job),
            (r"jobs/([^/]+)/result/", "GET", self._get_job_result),
        )

    def _client_too_old(self, client_version: str):
        minimum = self.faults.min_client_version
        if not minimum:
            return None
        have = _version(client_version)
        if have is None or have < Version(minimum):
            return _error(426, f"qai-hub {client_version or '(unknown)'} is no longer supported; {minimum} or newer is required.")
        return None

    def _rate_limited(self, method: str, path: str):
        f = self.faults
        with self._lock:
            if f.rate_limit <= 0:
                return None
            if f.rate_limit_method and method != f.rate_limit_method:
                return None
            if not path.startswith(f.rate_limit_path):
                return None
            f.rate_limit -= 1
        headers = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
        return _error(429, "Request was throttled.", headers)

    # devices, user, frameworks

    def _get_devices(self, query, body):
        found = filter_devices(
            self.devices, name=_q(query, "name"), os=_q(query, "os"), attributes=query.get("attributes", []),
            select=_q(query, "select").lower() == "true",
        )
        return _ok(pb.DeviceList(devices=[d.to_pb() for d in found], total_query_count=len(found)))

    def _get_user(self, query, body):
        return _ok(pb.User(id=1, first_name="latbench", last_name="tests", email=USER_EMAIL, org_id=1))

    def _get_frameworks(self, query, body):
        import onnxruntime as ort

        fw = pb.Framework(name="ONNX Runtime", api_version=".".join(ort.__version__.split(".")[:2]),
                          api_tags=["default", "latest"], full_version=ort.__version__)
        return _ok(pb.FrameworkList(frameworks=[fw], total_query_count=1))

    # models

    def _create_model(self, query, body):
        req = pb.Model.FromString(body)
        if not req.name:
            return _ok(pb.CreateUpdateResponse(status="A model needs a name."))
        model = _Model(self._next_id("m"), req.name, req.model_type, req.is_directory, self.clock())
        with self._lock:
            self._models[model.model_id] = model
        return _ok(pb.CreateUpdateResponse(id=model.model_id, creation_time=_ts(model.created)))

    def _list_models(self, query, body):
        with self._lock:
            models = sorted(self._models.values(), key=lambda m: (m.created, m.model_id), reverse=True)
        page = _page(models, query)
        return _ok(pb.ModelList(models=[m.to_pb() for m in page], total_query_count=len(models)))

    def _get_model(self, query, body, model_id):
        with self._lock:
            model = self._models.get(model_id)
            return _ok(model.to_pb()) if model else _error(404, "Not found.")

    def _start_upload(self, query, body, model_id):
        size = int(_q(query, "file_size") or 0)
        with self._lock:
            model = self._models.get(model_id)
            if model is None:
                return _error(404, "Not found.")
            if model.path is not None:
                return _error(409, "This model's file was already uploaded.")
            upload = _Upload(self._next_id("u"), model_id, size, self.max_part_size)
            self._uploads[upload.upload_id] = upload
            model.upload = upload
        expires = int(time.time() + self.upload_url_ttl)
        n_parts = max(1, -(-size // upload.part_size))
        urls = [
            f"{self.storage_url}{UPLOAD_PREFIX}{upload.upload_id}/{p}"
            f"?X-Expires={expires}&X-Signature={self.sign(upload.upload_id, p, expires)}"
            for p in range(n_parts)
        ]
        resp = pb.FileUploadResponse(
            multipart_url=pb.FileMultipartUploadURL(urls=urls, upload_id=upload.upload_id, max_part_size=upload.part_size)
        )
        return _ok(resp)

    def _handle_upload_part(self, method, path, query, body):
        m = re.fullmatch(re.escape(UPLOAD_PREFIX) + r"([^/]+)/(\d+)", path)
        if method != "PUT" or m is None:
            return _s3_error(405 if m else 404, "MethodNotAllowed" if m else "NoSuchKey", "Not supported.")
        upload_id, part = m.group(1), int(m.group(2))
        expires, signature = _q(query, "X-Expires"), _q(query, "X-Signature")
        if not expires.isdigit() or not hmac.compare_digest(signature, self.sign(upload_id, part, int(expires))):
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
        if int(expires) < time.time():
            return _s3_error(403, "AccessDenied", "Request has expired")
        with self._lock:
            if self.faults.reject_upload_parts > 0:
                self.faults.reject_upload_parts -= 1
                return _s3_error(403, "AccessDenied", "Access Denied")
        etag = f'"{hashlib.md5(body).hexdigest()}"'
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is None:
                return _s3_error(404, "NoSuchUpload", "The specified upload does not exist.")
            upload.parts[part] = (body, etag)
        return 200, "text/plain", b"", {"ETag": etag}

    def _complete_upload(self, query, body, model_id):
        req = pb.FileMultipartUploadComplete.FromString(body)
        with self._lock:
            model = self._models.get(model_id)
            upload = self._uploads.get(req.upload_id)
            if model is None:
                return _error(404, "Not found.")
            if upload is None or upload.model_id != model_id:
                return _ok(pb.CreateUpdateResponse(status="Unknown upload id."))
            parts = [upload.parts.get(i) for i in range(len(req.etags))]
            if any(p is None for p in parts) or [p[1] for p in parts] != list(req.etags):
                return _ok(pb.CreateUpdateResponse(status="The uploaded parts do not match the ETags."))
            data = b"".join(p[0] for p in parts)
            if upload.size and len(data) != upload.size:
                return _ok(pb.CreateUpdateResponse(status=f"Expected {upload.size} bytes, got {len(data)}."))
            path = self._storage / f"{model_id}.onnx"
            path.write_bytes(data)
            model.path, model.sha256 = path, hashlib.sha256(data).hexdigest()
            model.io_spec = onnx_io_spec(data)
            del self._uploads[req.upload_id]
        return _ok(pb.CreateUpdateResponse(id=model_id, creation_time=_ts(model.created)))

    def model_sha256(self, model_id: str) -> str | None:
        with self._lock:
            return self._models[model_id].sha256

    # jobs

    def _create_job(self, query, body):
        req = pb.Job.FromString(body)
        if req.WhichOneof("job") != "inference_job":
            return _error(400, "The fake AI Hub only runs inference (and profile) jobs.")
        ij = req.inference_job
        if ij.HasField("dataset") and ij.dataset.dataset_id:
            return _error(400, "The fake AI Hub does not take input datasets; profile with random inputs.")
        with self._lock:
            model = self._models.get(ij.model.model_id)
        if model is None or model.path is None:
            return _error(400, f"Model {ij.model.model_id!r} does not exist or its upload is not complete.")
        found = filter_devices(
            self.devices, ij.device.name, ij.device.os, list(ij.device.attributes), select=True
        )
        if not found:
            return _error(400, f"Device {ij.device.name!r} is not available.")
        if model.model_type == pb.MODEL_TYPE_ONNX and "framework:onnx" not in found[0].attributes:
            return _error(400, f"Device {found[0].name!r} does not support ONNX model input.")
        try:
            parsed = parse_options(ij.options)
        except OptionError as e:
            return _error(400, str(e))
        job = _Job(
            self._next_id("j"), ij.name or model.name, model.model_id, found[0], ij.options, parsed,
            bool(ij.is_profiling_on), self.clock(),
        )
        with self._lock:
            self._jobs[job.job_id] = job
        return _ok(pb.CreateUpdateResponse(id=job.job_id, creation_time=_ts(job.created)))

    def _filtered_jobs(self, query) -> list[_Job]:
        states = {int(s) for s in _q(query, "state").split(",") if s.strip().isdigit()}
        job_type = _q(query, "type")
        with self._lock:
            jobs = [j for j in self._jobs.values() if not states or j.state in states]
        if job_type and job_type not in ("inference", "profile"):
            jobs = []
        return sorted(jobs, key=lambda j: (j.created, j.job_id), reverse=True)

    def _list_jobs(self, query, body):
        jobs = self._filtered_jobs(query)
        with self._lock:
            return _ok(pb.JobList(jobs=[self._job_pb(j) for j in _page(jobs, query)], total_query_count=len(jobs)))

    def _list_job_summaries(self, query, body):
        jobs = self._filtered_jobs(query)
        with self._lock:
            page = [self._summary_pb(j) for j in _page(jobs, query)]
        return _ok(pb.JobSummaryList(job_summaries=page, total_query_count=len(jobs)))

    def _get_job(self, query, body, job_id):
        with self._lock:
            job = self._jobs.get(job_id)
            return _ok(self._job_pb(job)) if job else _error(404, "Not found.")

    def _rename_job(self, query, body, job_id):
        req = pb.JobPublicUpdate.FromString(body)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return _error(404, "Not found.")
            if req.HasField("name"):
                job.name = req.name
            return _ok(pb.CreateUpdateResponse(id=job_id))

    def _get_job_result(self, query, body, job_id):
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return _error(404, "Not found.")
            res = pb.InferenceJobResult(inference_job_id=job_id)
            if job.state == ST.JOB_STATE_DONE and job.detail is not None and not job.drop_profile:
                res.detail.CopyFrom(job.detail)
            return _ok(pb.JobResult(inference_job_result=res))


def _q(query: dict[str, list[str]], key: str) -> str:
    return (query.get(key) or [""])[0]


def _page(items: list, query) -> list:
    offset = int(_q(query, "offset") or 0)
    limit = _q(query, "limit")
    return items[offset: offset + int(limit)] if limit else items[offset:]


def _ok(message) -> tuple[int, str, bytes, dict]:
    return 200, PROTOBUF, message.SerializeToString(), {}


def _error(status: int, detail: str, headers: dict | None = None) -> tuple[int, str, bytes, dict]:
    return status, "application/json", json.dumps({"detail": detail}).encode(), headers or {}


def _s3_error(status: int, code: str, message: str) -> tuple[int, str, bytes, dict]:
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return status, "application/xml", body.encode(), {}


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: FakeAIHub
    role = "api"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet; never echoes headers (no token in logs)
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        body = self._body()
        try:
            status, ctype, payload, headers = self.hub.handle(
                self.command, url.path, parse_qs(url.query, keep_blank_values=True), self.headers, body, self.role
            )
        except Exception as e:  # a bug in the fake: a 500 the client reports as an internal error
            status, ctype, payload, headers = _error(500, f"fake AI Hub error: {type(e).__name__}: {e}")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


# --- making the real client fast -----------------------------------------------------------------


@contextlib.contextmanager
def fast_client_settings(*, polling_interval: float = 0.125, max_retries: int = 2,
                         backoff_factor: float = 0.01, max_wait: float = 0.05) -> Iterator[None]:
    """Shrink the client's own waits, restoring them afterwards.

    * `qai_hub.client.Job._polling_interval` (class attribute, seconds, default 10): Job.wait()
      sleeps this long between polls (1 s when the client is verbose) and re-polls when the slept
      total is a multiple of it, so it must be an integer or an exact binary fraction (0.125, 0.25).
    * `qai_hub.util.session.MAX_RETRIES` (6), `BACKOFF_FACTOR` (0.75 s), `MAX_WAIT` (10 s): the
      retry budget of urllib3 (idempotent requests; GET 429/5xx) and of `backoff` around job and
      model creation (any method; 429/5xx). Read when each request is made, except by the upload /
      download helpers decorated at import time (`_try_upload_asset`, `_download_to_verified_path`).
    """
    import qai_hub.client as client_mod
    import qai_hub.util.session as session_mod

    saved = (client_mod.Job._polling_interval, session_mod.MAX_RETRIES, session_mod.BACKOFF_FACTOR, session_mod.MAX_WAIT)
    client_mod.Job._polling_interval = polling_interval
    session_mod.MAX_RETRIES, session_mod.BACKOFF_FACTOR, session_mod.MAX_WAIT = max_retries, backoff_factor, max_wait
    try:
        yield
    finally:
        (client_mod.Job._polling_interval, session_mod.MAX_RETRIES, session_mod.BACKOFF_FACTOR,
         session_mod.MAX_WAIT) = saved


__all__ = [
    "DEFAULT_DEVICES", "FakeAIHub", "Faults", "HubDevice", "JobOptions", "LayerTime", "Measurement",
    "fast_client_settings", "filter_devices", "measure_onnx", "onnx_io_spec", "os_matches", "parse_options",
    "read_ort_layer_times",
]
