"""The REAL qai-hub client (unmodified) against the fake AI Hub service (tests/fakes/fake_aihub.py).

Skipped when qai_hub is not installed (it comes with the `aihub` extra, which `make` installs).
Never asserts absolute times: measured times are only compared with an independent onnxruntime
timing of the same model, within a loose factor.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

qai_hub = pytest.importorskip("qai_hub")
ort = pytest.importorskip("onnxruntime")

import fake_aihub  # noqa: E402  (tests/fakes is on sys.path: tests/conftest.py)
from fake_aihub import FakeAIHub, fast_client_settings  # noqa: E402
from qai_hub import public_rest_api as rest  # noqa: E402
from qai_hub.client import RateLimitedError  # noqa: E402  (not exported at the top level)

S24 = "Samsung Galaxy S24 (Family)"
SHAPE = (1, 3, 64, 64)
ITERATIONS = 30
LOOSE = 5.0  # measured medians must agree within this factor, either way


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """A small real conv net exported by torch's TorchScript-based exporter."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(16)
            self.c2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.c1(x)))
            x = torch.relu(self.c2(x))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("aihub") / "tiny.onnx"
    torch.onnx.export(
        Net().eval(), (torch.randn(*SHAPE),), str(path), dynamo=False, input_names=["image"],
        output_names=["logits"], opset_version=17,
    )
    return path


@pytest.fixture
def fast():
    with fast_client_settings():
        yield


@pytest.fixture
def service(fast):
    with FakeAIHub(max_part_size=4096) as svc:
        yield svc


@pytest.fixture
def client(service):
    return qai_hub.Client(config=service.client_config())


def submit(client, model, device=S24, options=f"--max_profiler_iterations {ITERATIONS}", **kw):
    return client.submit_inference_job(model, qai_hub.Device(device), options=options, retry=False, **kw)


def ort_median_us(path: Path, runs: int = ITERATIONS) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = {"image": np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)}
    sess.run(None, x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        sess.run(None, x)
        times.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(times)


# --- devices and configuration --------------------------------------------------------------------


def test_devices_are_listed_and_filtered_by_the_service(client):
    names = {(d.name, d.os) for d in client.get_devices()}
    assert (S24, "14") in names and ("Samsung Galaxy S23 (Family)", "13") in names

    gen2 = client.get_devices(attributes="chipset:qualcomm-snapdragon-8gen2")
    assert {(d.name, d.os) for d in gen2} == {("Samsung Galaxy S23 (Family)", "13"), ("Samsung Galaxy S23 (Family)", "14")}
    both = client.get_devices(attributes=["framework:onnx", "vendor:samsung"])
    assert {d.name for d in both} == {S24, "Samsung Galaxy S23 (Family)"}
    newer = client.get_devices(name="Samsung Galaxy S23 (Family)", os="[14,)")
    assert [(d.name, d.os) for d in newer] == [("Samsung Galaxy S23 (Family)", "14")]
    assert client.get_devices(attributes="chipset:qualcomm-snapdragon-999") == []
    assert "chipset:qualcomm-snapdragon-8gen3" in client.get_device_attributes()


def test_select_picks_the_newest_os_and_soc_description_is_raw_only(service):
    config = service.client_config()
    raw = rest.get_device_list(config, name="Samsung Galaxy S23 (Family)", select=True)
    assert [(d.name, d.os) for d in raw.devices] == [("Samsung Galaxy S23 (Family)", "14")]
    assert "SM8550" in raw.devices[0].soc_description
    device = qai_hub.Client(config=config).get_devices(name=S24)[0]
    assert not hasattr(device, "soc_description")  # the client's Device drops it


def test_client_ini_through_qaihub_client_ini(service, tmp_path, monkeypatch):
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(service.write_client_ini(tmp_path / "client.ini")))
    assert {d.name for d in qai_hub.Client().get_devices(name=S24)} == {S24}

    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(service.write_client_ini(tmp_path / "bad.ini", token="not-it")))
    with pytest.raises(qai_hub.UserError, match="authenticate"):
        qai_hub.Client().get_devices()


# --- upload ---------------------------------------------------------------------------------------


def test_upload_goes_through_signed_part_urls(service, client, onnx_model):
    data = onnx_model.read_bytes()
    model = client.upload_model(str(onnx_model), name="tiny")
    puts = [p for m, p in service.requests if m == "PUT"]
    assert len(puts) == math.ceil(len(data) / 4096) > 1
    assert all(p.startswith(fake_aihub.UPLOAD_PREFIX) for p in puts)
    assert service.model_sha256(model.model_id) == hashlib.sha256(data).hexdigest()

    again = client.get_model(model.model_id)
    assert again.name == "tiny" and again.model_type == qai_hub.SourceModelType.ONNX
    assert again.input_spec == {None: [qai_hub.TensorSpec("image", "float32", SHAPE)]}


def test_upload_urls_are_signed(service):
    import requests

    r = requests.put(f"{service.storage_url}/_upload/u00000001/0?X-Expires=9999999999&X-Signature=forged", data=b"x")
    assert r.status_code == 403 and "SignatureDoesNotMatch" in r.text


def test_storage_refusing_a_part_is_an_internal_error(service, client, onnx_model):
    if service.storage_url == service.base_url:
        pytest.skip("no second loopback address: part URLs share the API's host")
    service.faults.reject_upload_parts = 1
    with pytest.raises(qai_hub.InternalError, match="AccessDenied"):
        client.upload_model(str(onnx_model))


# --- profile jobs ---------------------------------------------------------------------------------


def test_profile_job_times_come_from_really_running_the_model(service, client, onnx_model):
    model = client.upload_model(str(onnx_model))
    job = submit(client, model, options=f"--max_profiler_iterations {ITERATIONS} --compute_unit cpu")
    assert isinstance(job, qai_hub.InferenceJob) and job.profiling
    assert job.wait().success

    profile = job.download_profile()
    summary, layers = profile["execution_summary"], profile["execution_detail"]
    times = summary["all_inference_times"]
    assert len(times) == ITERATIONS and all(isinstance(t, int) and t > 0 for t in times)
    assert summary["estimated_inference_time"] == min(times)
    assert summary["inference_memory_peak_range"] is not None

    fake_median, ort_median = statistics.median(times), ort_median_us(onnx_model)
    assert 1 / LOOSE < fake_median / ort_median < LOOSE, (fake_median, ort_median)

    assert layers and {layer["compute_unit"] for layer in layers} == {"CPU"}
    assert {"Conv", "Gemm"} <= {layer["type"] for layer in layers}
    assert all(layer["execution_time"] >= 0 for layer in layers)

    # Provenance is only in the raw protobufs (public_rest_api), not in the client's dicts.
    config = service.client_config()
    detail = rest.get_job_results(config, job.job_id).inference_job_result.detail
    assert {t.name: t.version for t in detail.tool_versions}["onnxruntime"] == ort.__version__
    props = {p.key: p.value for c in detail.runtime_config for p in c.properties}
    assert props["requested_compute_unit"] == "cpu"
    assert "SM8650" in rest.get_job(config, job.job_id).inference_job.device.soc_description


def test_deprecated_submit_profile_job_is_an_inference_job(service, client, onnx_model, capsys):
    job = client.submit_profile_job(str(onnx_model), qai_hub.Device(S24), options="--max_profiler_iterations 3",
                                    retry=False)
    assert "deprecated" in capsys.readouterr().out
    assert qai_hub.ProfileJob is qai_hub.InferenceJob and isinstance(job, qai_hub.InferenceJob)
    assert len(job.download_profile()["execution_summary"]["all_inference_times"]) == 3


def test_state_machine_on_demand(fast, onnx_model):
    with FakeAIHub(auto_advance=False) as service:
        client = qai_hub.Client(config=service.client_config())
        job = submit(client, str(onnx_model), options="--max_profiler_iterations 3")
        assert job.get_status().pending and job.get_status().code == "CREATED"
        assert service.step(job.job_id) == qai_hub.JobStatus.State.PROVISIONING_DEVICE.value
        assert job.get_status().running
        service.step(job.job_id)
        assert job.get_status().code == "MEASURING_PERFORMANCE"
        assert service.measured == []
        service.complete(job.job_id)
        assert job.get_status().success and service.measured == [job.job_id]


def test_state_machine_on_the_clock(fast, onnx_model):
    class Clock:
        now = 1_000_000.0

        def __call__(self):
            return self.now

    clock = Clock()
    with FakeAIHub(clock=clock, queue_seconds=60, provision_seconds=30, job_lifetime_seconds=3600) as service:
        client = qai_hub.Client(config=service.client_config())
        job = submit(client, str(onnx_model), options="--max_profiler_iterations 3")
        service.tick()
        assert job.get_status().code == "CREATED"
        clock.now += 60
        service.tick()
        assert job.get_status().code == "PROVISIONING_DEVICE"
        clock.now += 30  # reaches the device; the ticker (or this tick) measures it
        service.tick()
        assert job.wait().success
        assert job.date.timestamp() == pytest.approx(1_000_000.0, abs=1)


def test_jobs_are_submitted_without_waiting_and_reattached_by_id(service, client, onnx_model):
    model = client.upload_model(str(onnx_model))
    ids = [submit(client, model, name=f"round{r}", options="--max_profiler_iterations 3").job_id for r in range(3)]
    assert len([p for m, p in service.requests if m == "PUT"]) == math.ceil(onnx_model.stat().st_size / 4096)

    fresh = qai_hub.Client(config=service.client_config())  # as after a crash: only the ids survive
    summaries = fresh.get_job_summaries(type=qai_hub.JobType.INFERENCE, limit=10)
    assert {s.job_id for s in summaries} == set(ids)
    for job_id in ids:
        job = fresh.get_job(job_id)
        assert isinstance(job, qai_hub.InferenceJob) and job.model.model_id == model.model_id
        assert job.wait().success
        assert len(job.download_profile()["execution_summary"]["all_inference_times"]) == 3
    assert service.measured == ids  # one device, first come first served
    done = fresh.get_job_summaries(state=qai_hub.JobStatus.State.SUCCESS)
    assert {s.job_id for s in done} == set(ids)


# --- failures -------------------------------------------------------------------------------------


def test_wrong_token_is_a_user_error(service):
    client = qai_hub.Client(config=service.client_config(token="wrong"))
    with pytest.raises(qai_hub.UserError, match="authenticate"):
        client.get_devices()


def test_unknown_ids_are_user_errors(client):
    with pytest.raises(qai_hub.UserError, match="could not be found"):
        client.get_job("j00000000")
    with pytest.raises(qai_hub.UserError, match="could not be found"):
        client.get_model("m00000000")


def test_unknown_device_and_unsupported_runtime(client, onnx_model):
    with pytest.raises(qai_hub.UserError, match="not available"):
        submit(client, str(onnx_model), device="Nokia 3310")
    with pytest.raises(qai_hub.UserError, match="does not support ONNX"):
        submit(client, str(onnx_model), device="Google Pixel 3")


def test_server_refuses_a_job_for_an_unknown_device(service, client, onnx_model):
    # The client checks devices before posting; the service checks again (raw call, no client check).
    from qai_hub import public_api_pb2 as pb

    model = client.upload_model(str(onnx_model))
    ij = pb.InferenceJob(model=pb.Model(model_id=model.model_id), name="x", device=pb.Device(name="Nokia 3310"),
                         is_profiling_on=True)
    with pytest.raises(rest.APIException) as err:
        rest.create_inference_job(service.client_config(), ij)
    assert err.value.status_code == 400 and "not available" in str(err.value)


def test_invalid_options_are_refused(client, onnx_model):
    with pytest.raises(qai_hub.UserError, match="--bogus"):
        submit(client, str(onnx_model), options="--bogus 1")
    with pytest.raises(qai_hub.UserError, match="compute_unit"):
        submit(client, str(onnx_model), options="--compute_unit tpu")


def test_failed_job_reports_its_reason(service, client, onnx_model):
    service.faults.fail_names["doomed"] = "Runtime crashed on device (fake)."
    job = submit(client, str(onnx_model), name="doomed")
    status = job.wait()
    assert status.failure and status.message == "Runtime crashed on device (fake)."
    assert job.download_profile() == {}
    assert service.measured == []


def test_job_expires_after_its_lifetime(service, client, onnx_model):
    service.faults.hold_in_queue = True
    service.job_lifetime_seconds = 0.3
    status = submit(client, str(onnx_model)).wait()
    assert status.failure and "timed out" in status.message


def test_client_side_wait_timeout(service, client, onnx_model):
    service.faults.hold_in_queue = True
    job = submit(client, str(onnx_model))
    with pytest.raises(TimeoutError):
        job.wait(timeout=1)
    assert job.get_status().pending


def test_rate_limited_job_creation(service, client, onnx_model):
    model = client.upload_model(str(onnx_model))
    service.faults.rate_limit_method = "POST"
    service.faults.rate_limit_path = "/api/v1/jobs/"
    service.faults.rate_limit = 2  # the client's own back-off (3 tries under fast settings) gets through
    assert submit(client, model).job_id
    assert service.faults.rate_limit == 0

    service.faults.rate_limit = 100
    assert issubclass(RateLimitedError, qai_hub.Error)
    with pytest.raises(RateLimitedError):
        submit(client, model)
    assert service.faults.rate_limit == 97  # 1 + MAX_RETRIES tries


def test_rate_limited_reads_surface_as_internal_errors(service, client):
    service.faults.rate_limit_method = "GET"
    service.faults.rate_limit = 100
    with pytest.raises(qai_hub.InternalError):
        client.get_devices()


def test_client_too_old(service, client):
    service.faults.min_client_version = "99.0"
    with pytest.raises(qai_hub.UserError, match="no longer supported"):
        client.get_devices()


def test_result_without_per_layer_detail(service, client, onnx_model):
    service.faults.drop_layer_detail = True
    profile = submit(client, str(onnx_model), options="--max_profiler_iterations 5").download_profile()
    assert profile["execution_detail"] == []
    assert len(profile["execution_summary"]["all_inference_times"]) == 5


def test_result_without_profile(service, client, onnx_model):
    service.faults.drop_profile = True
    job = submit(client, str(onnx_model), options="--max_profiler_iterations 5")
    assert job.wait().success and job.download_profile() == {}


# --- the fake's own helpers -----------------------------------------------------------------------


def test_os_intervals_and_options():
    assert fake_aihub.os_matches("14", "[14,)") and not fake_aihub.os_matches("13", "[14,)")
    assert fake_aihub.os_matches("13", "[,14)") and fake_aihub.os_matches("14", "14")
    opts = fake_aihub.parse_options("--compute_unit npu,cpu --max_profiler_iterations 7 --dequantize_outputs")
    assert opts.compute_unit == ("npu", "cpu") and opts.max_profiler_iterations == 7
    with pytest.raises(fake_aihub.OptionError):
        fake_aihub.parse_options("--max_profiler_iterations 0")
