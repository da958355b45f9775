"""The `aihub` device kind through the REAL, unmodified qai-hub client against the fake service
(tests/fakes/fake_aihub.py: the client's own protobufs on a loopback port, jobs that really run
the uploaded model with onnxruntime here).

The client is pointed at the fake through its own config ($QAIHUB_CLIENT_INI) and made fast
through its own settings (fast_client_settings). Skipped when qai_hub is not installed (the
`aihub` extra, which `make` installs).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

qai_hub = pytest.importorskip("qai_hub")

from fake_aihub import FakeAIHub, fast_client_settings  # noqa: E402

import device_runners.aihub as aihub  # noqa: E402
from device_runners import open_runner  # noqa: E402
from latbench.core.errors import DeviceError, UsageError  # noqa: E402
from latbench.measuring.journal import Journal  # noqa: E402
from latbench.measuring.measurement import SamplingPolicy  # noqa: E402
from latbench.measuring.session import Artifact, Job  # noqa: E402

S24 = "Samsung Galaxy S24 (Family)"
DEVICE = f"aihub:{S24}"
TINY = {
    "name": "tiny",
    "resolutions": [224],
    "stages": [
        {"widths": [32], "depth": [1, 1], "expansions": [4], "attention": False},
        {"widths": [48], "depth": [1, 1], "expansions": [4], "attention": False},
        {"widths": [96], "depth": [1, 1], "expansions": [4], "attention": False},
        {"widths": [176], "depth": [1, 2], "expansions": [4], "attention": True},
    ],
}
SMALL_BUILD = ["--no-reference", "--calibrate", "0", "--runs", "5", "--rounds", "2", "--max-rounds", "2",
               "--jobs", "1"]


def start_hub(monkeypatch, tmp_path: Path, **kw) -> FakeAIHub:
    svc = FakeAIHub(**kw).serve()
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(svc.write_client_ini(tmp_path / "client.ini")))
    return svc


@pytest.fixture
def fast():
    with fast_client_settings():
        yield


@pytest.fixture
def hub(fast, monkeypatch, tmp_path):
    svc = start_hub(monkeypatch, tmp_path)
    yield svc
    svc.close()


@pytest.fixture
def held_hub(fast, monkeypatch, tmp_path):
    """Jobs move only when the test says so (step / complete)."""
    svc = start_hub(monkeypatch, tmp_path, auto_advance=False)
    yield svc
    svc.close()


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def requests_to(svc: FakeAIHub, method: str, path: str) -> int:
    return sum(1 for m, p in svc.requests if m == method and p == path)


def assert_no_token(svc: FakeAIHub, *texts: str, directory: Path | None = None) -> None:
    for text in texts:
        assert svc.token not in text
    if directory is not None:
        for f in directory.rglob("*"):
            if f.is_file():
                assert svc.token.encode() not in f.read_bytes(), f


def jobs_per_round(svc: FakeAIHub) -> Counter:
    """(key, round) -> jobs the service got for it (anchors excluded)."""
    names = [svc._jobs[j].name for j in svc.job_ids()]
    out: Counter = Counter()
    for name in names:
        parts = name.split("/")
        if parts[2] != "anchor":
            out[(parts[2], parts[3])] += 1
    return out


# -- ids, discovery, opening ----------------------------------------------------------------------
def test_device_ids_are_parsed_and_checked():
    assert aihub.parse_device_id(DEVICE) == (S24, [], "")
    assert aihub.parse_device_id(f"{DEVICE}@14") == (S24, [], "14")
    assert aihub.parse_device_id("aihub:chipset:qualcomm-snapdragon-8gen3") == (
        "", ["chipset:qualcomm-snapdragon-8gen3"], "")
    assert aihub.parse_device_id("aihub:vendor:samsung,format:phone@[14,15)") == (
        "", ["vendor:samsung", "format:phone"], "[14,15)")
    for bad in ("aihub", "aihub:", "aihub:\x00evil"):
        with pytest.raises(UsageError):
            aihub.parse_device_id(bad)
    policy = SamplingPolicy(runs=7, time_cap_s=2.5)
    assert aihub.sampling_options(policy) == (7, 3)
    assert aihub.sampling_options(SamplingPolicy(runs=None, max_runs=400, time_cap_s=1.5)) == (aihub.DEFAULT_ITERATIONS, 2)


def test_devices_lists_the_catalogue(hub, run_cli, run_cli_json):
    rows = {d["id"]: d for d in run_cli_json("devices") if d["kind"] == "aihub"}
    s24 = rows[f"{DEVICE}@14"]
    assert s24["available"] and s24["provenance"]["soc"] == "Qualcomm Snapdragon 8 Gen 3 (SM8650)"
    assert s24["provenance"]["os"] == "Android 14"
    assert {"aihub:Samsung Galaxy S23 (Family)@13", "aihub:Samsung Galaxy S23 (Family)@14"} <= set(rows)
    pixel = rows["aihub:Google Pixel 3@12"]  # no ONNX runtime on it: listed, not usable
    assert not pixel["available"] and "framework:onnx" in pixel["reason"]
    code, out, err = run_cli("devices")
    assert code == 0 and "aihub:Samsung Galaxy S24" in out and "(SM8650)" in out  # (wrapped at 80 columns)
    assert_no_token(hub, out, err)


@pytest.mark.parametrize("setup, needle", [
    ("missing", "no AI Hub API token configured"),
    ("broken", "not a usable AI Hub client.ini"),
    ("wrong", "refused the configured API token"),
])
def test_devices_without_a_usable_token_say_why(hub, run_cli, monkeypatch, tmp_path, setup, needle):
    ini = tmp_path / "other.ini"
    if setup == "broken":
        ini.write_text("[api]\napi_token = x\n")
    elif setup == "wrong":
        hub.write_client_ini(ini, token="not-the-token")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    code, out, err = run_cli("devices", "--json")
    assert code == 0, err
    [row] = [d for d in json.loads(out) if d["kind"] == "aihub"]
    assert not row["available"] and needle in row["reason"] and "qai-hub configure" in row["reason"]
    assert_no_token(hub, out, err)


def test_opening_pins_one_device_by_name_or_attributes(hub):
    with open_runner("aihub:chipset:qualcomm-snapdragon-8gen2") as r:
        assert r.device_id == "aihub:Samsung Galaxy S23 (Family)@14"  # the service's pick: newest OS
        d = r.describe()
        assert d["soc"] == "Qualcomm Snapdragon 8 Gen 2 (SM8550)" and d["runtime"] == "onnxruntime"
        assert d["runtime_version"] and d["compute_units"] == "cpu"
        assert hub.token not in json.dumps(d)
    with open_runner("aihub:Samsung Galaxy S23 (Family)@13") as r:
        assert r.device_id == "aihub:Samsung Galaxy S23 (Family)@13"
    with pytest.raises(UsageError, match="no AI Hub device matches"):
        open_runner("aihub:Nokia 3310")
    with pytest.raises(UsageError, match="does not run ONNX"):
        open_runner("aihub:Google Pixel 3")
    with pytest.raises(UsageError, match="cpu, gpu or npu"):
        open_runner(DEVICE, compute_units="ALL")


# -- measuring -------------------------------------------------------------------------------------
def test_measure_reads_samples_per_op_and_provenance_from_the_finished_job(hub, models):
    with open_runner(DEVICE, compute_units="npu") as r:
        p = r.prepare(models["medium"])
        m = r.measure(p, SamplingPolicy(runs=7, time_cap_s=5), profile=True)
    [job_id] = hub.job_ids()
    job = hub._jobs[job_id]
    assert job.options.split() == ["--compute_unit", "npu", "--max_profiler_iterations", "7",
                                   "--max_profiler_time", "5"]
    assert len(m.samples_ms) == 7 and all(s > 0 for s in m.samples_ms)
    assert job.detail is not None and [round(t / 1000, 3) for t in job.detail.all_execution_times] == m.samples_ms
    assert {o.op_type for o in m.per_op} >= {"Conv", "GlobalAveragePool"}
    prov = m.provenance
    assert prov["aihub_job"] == job_id and prov["aihub_model"] == job.model_id
    assert prov["device_model"] == S24 and prov["os"] == "Android 14" and prov["soc"].endswith("(SM8650)")
    assert prov["runtime"] == "onnxruntime" and prov["runtime_version"] == prov["runtimes"]["onnxruntime"]
    assert prov["job_created"] and prov["job_completed"] and prov["compute_units"] == "npu"
    assert "minimum" in prov["per_op_statistic"] and prov["sampling"]["timed_runs"] == 7
    assert prov["input_shape"] == [1, 3, 32, 32] and prov["latbench_version"]
    # The fake really ran the model here on the CPU: a requested NPU that fell back is said so.
    assert any("fallback" in w for w in m.warnings)


def test_an_int8_qdq_model_is_uploaded_as_it_is_and_profiled(hub, int8_models):
    """The service runs the QDQ graph in its ONNX Runtime (the fake: really, here), which fuses the
    quantize/dequantize pairs into integer kernels: the per-layer detail shows them."""
    aihub.AIHubRunner.check_precision("int8")
    with open_runner(DEVICE) as r:
        p = r.prepare(int8_models["onnx"])
        m = r.measure(p, SamplingPolicy(runs=5, time_cap_s=5), profile=True)
    [job_id] = hub.job_ids()
    model = hub._models[hub._jobs[job_id].model_id]
    assert model.path.read_bytes() == int8_models["onnx"].read_bytes()  # uploaded as it is, no quantize job
    assert len(m.samples_ms) == 5 and all(s > 0 for s in m.samples_ms)
    assert m.provenance["precision"] == "int8" and m.provenance["input_dtype"] == "float32"
    ops = {o.op_type for o in m.per_op}
    assert any(t.startswith("QLinear") or t in ("QuantizeLinear", "DequantizeLinear") for t in ops), ops


def test_upload_once_per_content_hash_remembered_in_the_journal(hub, models, tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    art = {"a": Artifact("a", models["small"], "h-small"), "b": Artifact("b", models["small"], "h-small"),
           "c": Artifact("c", models["medium"], "h-medium")}
    with open_runner(DEVICE) as r:
        d = r.dispatcher()
        d.attach(journal, "s1")
        d.prepare(art, lambda *a: None)
    assert requests_to(hub, "POST", "/api/v1/models/") == 2
    known = journal.get_meta(aihub.MODELS_META)
    assert set(known) == {"h-small", "h-medium"}
    with open_runner(DEVICE) as r:  # a later run: the models are looked up, not uploaded again
        d = r.dispatcher()
        d.attach(journal, "s2")
        d.prepare(art, lambda *a: None)
        assert d.prepared["c"].handle.model_id == known["h-medium"]
    assert requests_to(hub, "POST", "/api/v1/models/") == 2
    journal.close()


def wait_for(cond, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_wave_is_submitted_without_waiting_and_collected_as_jobs_finish(held_hub, models, tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    policy = SamplingPolicy(runs=3)
    jobs = [Job(k, rnd, "block", policy) for rnd in (0, 1) for k in ("a", "b", "c")]  # round by round
    got: list[tuple[str, int, bool, int]] = []
    seen: dict = {}

    def on_result(res, is_anchor):
        # handed over as each finishes, before the dispatcher marks it collected
        rows = journal.execute("SELECT COUNT(*) FROM aihub_jobs WHERE state = 'submitted'")[0][0]
        got.append((res.job.key, res.job.round, is_anchor, rows))

    def service_side():
        db = sqlite3.connect(tmp_path / "journal.sqlite")
        try:
            def journalled(n):
                seen["rows"] = db.execute("SELECT name, job_id, state FROM aihub_jobs ORDER BY created").fetchall()
                return sum(1 for row in seen["rows"] if row[2] == "submitted") == n

            # anchor, a0 b0 c0, anchor, anchor: submitted while nothing has finished; the second
            # rounds wait for their first (an entry's rounds run at different times)
            wait_for(lambda: journalled(6), "the first wave submitted and journalled")
            time.sleep(0.3)
            seen["first"] = list(seen["rows"])
            seen["results_before"] = len(got)
            while len(got) < 9:  # finish the newest unfinished job, one at a time
                job_id = next(j for j in reversed(held_hub.job_ids()) if held_hub.job_state(j) not in (10, 30))
                n = len(got)
                held_hub.complete(job_id)
                wait_for(lambda n=n: len(got) == n + 1, f"result of {job_id}")
                wait_for(lambda: len(got) == 9 or any(held_hub.job_state(j) not in (10, 30)
                                                      for j in held_hub.job_ids()), "the next submission")
        except BaseException as e:  # noqa: BLE001  (the test reports it)
            seen["error"] = e
            for job_id in held_hub.job_ids():
                held_hub.fail(job_id, "test gave up")
        db.close()

    with open_runner(DEVICE) as r:
        d = r.dispatcher()
        d.attach(journal, "s1")
        d.prepare({k: Artifact(k, models["small" if k != "b" else "medium"], f"h{k}") for k in ("a", "b", "c")}
                  | {"anc": Artifact("anc", models["small"], "ha")}, lambda *a: None)
        helper = threading.Thread(target=service_side, daemon=True)
        helper.start()
        pending = d.execute(jobs, [Job("anc", 0, "anchor", policy)], 3, on_result)
        helper.join(30)
    assert "error" not in seen, seen
    assert pending is None and seen["results_before"] == 0
    first = seen["first"]
    assert all(job_id and state == "submitted" for _, job_id, state in first)
    assert [n.split("/", 3)[2:] for n, _, _ in first][1:4] == [["a", "r0/a1"], ["b", "r0/a1"], ["c", "r0/a1"]]
    assert [n.split("/")[2] for n, _, _ in first] == ["anchor", "a", "b", "c", "anchor", "anchor"]
    assert len(got) == 9 and journal.execute("SELECT COUNT(*) FROM aihub_jobs WHERE state = 'collected'") == [(9,)]
    # each second round was created only after its entry's first round had finished on the service
    by_name = {held_hub._jobs[j].name.split("/", 2)[2]: held_hub._jobs[j] for j in held_hub.job_ids()}
    for k in ("a", "b", "c"):
        assert by_name[f"{k}/r1/a1"].created >= by_name[f"{k}/r0/a1"].completed
    journal.close()


# -- lut build / validate / profile / mes report on the fake ------------------------------------
def test_lut_build_end_to_end_then_validate(hub, run_cli, run_cli_json, tiny_space, tmp_path):
    out = tmp_path / "t"
    code, stdout, err = run_cli("lut", "build", "--device", DEVICE, "--space", str(tiny_space), "--out", str(out),
                                *SMALL_BUILD, "--json")
    assert code == 0, err
    [s] = json.loads(stdout)
    assert s["device"] == f"{DEVICE}@14" and s["pending"] == []
    blocks = __import__("pandas").read_csv(out / "blocks.csv")
    assert (blocks["n"] == 10).all() and (blocks["latency_ms"] > 0).all() and (blocks["rounds"] == 2).all()
    assert set(__import__("pandas").read_csv(out / "ops.csv")["block_key"]) >= set(
        blocks.loc[blocks.kind == "ffn", "key"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["device"]["device_kind"] == "aihub" and meta["device"]["soc"].endswith("(SM8650)")
    # every (key, round) is its own job, each submitted once; every artifact uploaded once
    assert set(jobs_per_round(hub).values()) == {1} and len(jobs_per_round(hub)) == 2 * len(blocks)
    db = sqlite3.connect(out / "journal.sqlite")
    provs = [json.loads(m)["provenance"] for (m,) in db.execute("SELECT measurement FROM measurements")]
    assert len({p["aihub_job"] for p in provs}) == len(provs) == 2 * len(blocks)
    models = len(json.loads(db.execute("SELECT value FROM meta WHERE name = 'aihub_models'").fetchone()[0]))
    assert requests_to(hub, "POST", "/api/v1/models/") == models
    db.close()
    # nothing is measured again
    n_jobs = len(hub.job_ids())
    [s2] = run_cli_json("lut", "build", "--device", DEVICE, "--space", str(tiny_space), "--out", str(out),
                        *SMALL_BUILD)
    assert s2["measured_now"] == 0 and len(hub.job_ids()) == n_jobs
    # the same phone on its NPU is another table: resuming this one there is refused, no job submitted
    code, _, err = run_cli("lut", "build", "--device", DEVICE, "--space", str(tiny_space), "--out", str(out),
                           *SMALL_BUILD, "--compute-units", "npu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and len(hub.job_ids()) == n_jobs
    assert "another device or runtime" in err and "compute_units: 'cpu' -> 'npu'" in err
    # validate against end-to-end jobs of whole subnets on the same (fake) phone
    code, vout, verr = run_cli("lut", "validate", str(out), "--samples", "2", "--no-named", "--rounds", "1",
                               "--passes", "2", "--jobs", "1", "--json")
    assert code == 0, verr
    v = json.loads(vout)
    assert v["mean_abs_pct_error"] >= 0 and len(hub.job_ids()) > n_jobs
    assert_no_token(hub, stdout, err, vout, verr, directory=out)


def test_lut_adapt_on_aihub_submits_jobs_only_for_what_it_measures(hub, run_cli_json, tiny_space, tmp_path):
    from latbench.space import SearchSpace
    from latbench.tables.synthetic import synthetic_table
    from latbench.tables.table import LatencyTable

    source = tmp_path / "source"
    synthetic_table(SearchSpace.load(tiny_space)).save(source)
    entries = len(LatencyTable.load(source).blocks)
    out = tmp_path / "t"
    args = ("lut", "adapt", str(source), "--device", DEVICE, "--budget", "4", "--calibrate", "0", "--out", str(out),
            "--runs", "5", "--rounds", "2", "--max-rounds", "2", "--jobs", "1")
    summary = run_cli_json(*args)
    # The point of adapting on AI Hub: jobs for the chosen entries' rounds only (plus the anchors),
    # each submitted once, against one per round of every entry for a full table.
    jobs = jobs_per_round(hub)
    assert {key for key, _ in jobs} == set(summary["adapt"]["selected"]) and set(jobs.values()) == {1}
    assert len(jobs) == 2 * 4 < 2 * entries
    table = LatencyTable.load(out)
    assert table.meta["device"]["device_kind"] == "aihub" and len(table.predicted()) == entries - 4
    n_jobs = len(hub.job_ids())
    again = run_cli_json(*args)  # resumes: nothing left to measure, no job submitted
    assert again["measured_now"] == 0 and len(hub.job_ids()) == n_jobs


def test_lut_adapt_detach_submits_and_returns_then_a_later_run_collects(held_hub, run_cli_json, tiny_space,
                                                                        tmp_path):
    from latbench.space import SearchSpace
    from latbench.tables.synthetic import synthetic_table
    from latbench.tables.table import LatencyTable

    source = tmp_path / "source"
    synthetic_table(SearchSpace.load(tiny_space)).save(source)
    out = tmp_path / "t"
    args = ("lut", "adapt", str(source), "--device", DEVICE, "--budget", "3", "--calibrate", "0", "--out", str(out),
            "--runs", "5", "--rounds", "2", "--max-rounds", "2", "--jobs", "1", "--detach")
    first = run_cli_json(*args)
    assert first["measured_now"] == 0 and len(first["pending"]) == 2 * 3
    n = len(held_hub.job_ids())
    for job_id in held_hub.job_ids():
        held_hub.complete(job_id)
    second = run_cli_json(*args)
    assert second["pending"] == [] and second["adapt"]["measured"] == 3
    assert len(held_hub.job_ids()) == n  # collected, never resubmitted
    table = LatencyTable.load(out)
    assert len(table.blocks) - len(table.predicted()) == 3


def test_profile_and_mes_report_measure_on_aihub(hub, run_cli, run_cli_json, models, tmp_path):
    res = run_cli_json("profile", str(models["medium"]), "--device", DEVICE, "--runs", "4", "--rounds", "2",
                       "--compute-units", "gpu", "--out", str(tmp_path / "prof"))
    assert {hub._jobs[j].options.split()[1] for j in hub.job_ids()} == {"gpu"}  # --compute_unit gpu
    assert res["provenance"]["compute_units"] == "gpu"
    assert res["n"] >= 8 and res["n"] % 4 == 0 and res["provenance"]["device_kind"] == "aihub"
    assert res["per_op_type"] and res["per_op_type"][0]["op_type"] in ("Conv", "Relu", "GlobalAveragePool")
    assert len(hub.job_ids()) == res["n"] // 4  # one job per round
    from latbench.space import SearchSpace
    from latbench.space.arch import Arch, StageArch
    from latbench.tables.synthetic import synthetic_table

    table = synthetic_table(SearchSpace.from_dict(TINY, source="tiny")).save(tmp_path / "synthetic")
    arch_file = tmp_path / "arch.yaml"
    Arch((StageArch(32, (4,)), StageArch(48, (4,)), StageArch(96, (4,)), StageArch(176, (4, 4), 0)), 224).save(
        arch_file)
    code, out, err = run_cli("mes", "report", "--lut", str(table), str(arch_file), "--measure", DEVICE,
                             "--rounds", "1", "--latency-unit", "1ms", "--out", str(tmp_path / "mes"), "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert row["measured_ms"] > 0
    assert len(hub.job_ids()) > res["n"] // 4
    assert_no_token(hub, out, err, directory=tmp_path / "mes")


# -- killed builds, --detach ------------------------------------------------------------------------
def test_a_killed_build_reattaches_to_its_jobs(hub, run_cli, run_cli_json, tiny_space, tmp_path, monkeypatch):
    from latbench.measuring.session import MeasuringSession

    out = tmp_path / "t"
    real_commit = MeasuringSession._commit
    seen = []

    def dying_commit(self, res, is_anchor):
        real_commit(self, res, is_anchor)
        seen.append(res.job.key)
        if len(seen) == 5:
            raise KeyboardInterrupt  # the client dies mid-wave, jobs still queued or running

    monkeypatch.setattr(MeasuringSession, "_commit", dying_commit)
    hub.queue_seconds = 0.3  # so that jobs are still outstanding when it dies
    code, _, err = run_cli("lut", "build", "--device", DEVICE, "--space", str(tiny_space), "--out", str(out),
                           *SMALL_BUILD)
    assert code == 130, err
    monkeypatch.setattr(MeasuringSession, "_commit", real_commit)
    db = sqlite3.connect(out / "journal.sqlite")
    before = dict(db.execute("SELECT key || '#' || round, measured_at FROM measurements"))
    states = Counter(s for (s,) in db.execute("SELECT state FROM aihub_jobs"))
    db.close()
    assert 0 < len(before) and states["submitted"] > 0
    first_run_jobs = set(hub.job_ids())
    [s] = run_cli_json("lut", "build", "--device", DEVICE, "--space", str(tiny_space), "--out", str(out), *SMALL_BUILD)
    assert s["pending"] == []
    # nothing was submitted twice, nothing measured again: the first run's rows are untouched
    assert set(jobs_per_round(hub).values()) == {1}
    assert len(hub.measured) == len(set(hub.measured))
    db = sqlite3.connect(out / "journal.sqlite")
    after = dict(db.execute("SELECT key || '#' || round, measured_at FROM measurements"))
    assert {k: after[k] for k in before} == before and len(after) == 2 * s["blocks"]
    # rounds the first run submitted but did not live to collect were collected from those jobs
    jobs = {k: json.loads(m)["provenance"]["aihub_job"]
            for k, m in db.execute("SELECT key || '#' || round, measurement FROM measurements")}
    assert any(jobs[k] in first_run_jobs for k in set(after) - set(before))
    db.close()


def test_a_job_id_lost_between_request_and_journal_is_adopted_by_name(hub, models, tmp_path, monkeypatch):
    journal = Journal(tmp_path / "journal.sqlite")
    policy = SamplingPolicy(runs=3)
    jobs = [Job("a", 0, "block", policy), Job("a", 1, "block", policy)]
    art = {"a": Artifact("a", models["small"], "ha")}
    with open_runner(DEVICE) as r:
        d = r.dispatcher()
        d.attach(journal, "s1")
        d.prepare(art, lambda *a: None)
        real_submit = type(r).submit

        def submit_then_die(self, *a, **kw):
            real_submit(self, *a, **kw)  # the job exists on the service ...
            raise KeyboardInterrupt  # ... but its id never reached the journal

        monkeypatch.setattr(type(r), "submit", submit_then_die)
        with pytest.raises(KeyboardInterrupt):
            d.execute(jobs, [], 12, lambda res, a: None)
        monkeypatch.setattr(type(r), "submit", real_submit)
    assert journal.execute("SELECT state, job_id FROM aihub_jobs") == [("intent", None)]
    got = []
    with open_runner(DEVICE) as r:
        d = r.dispatcher()
        d.attach(journal, "s2")
        d.prepare(art, lambda *a: None)
        d.execute(jobs, [], 12, lambda res, a: got.append((res.job.round, res.measurement.provenance["aihub_job"])))
    assert sorted(got)[0][1] == hub.job_ids()[0]  # round 0 is the job of the first run, adopted
    assert len(hub.job_ids()) == 2 and sorted(g[0] for g in got) == [0, 1]
    journal.close()


def test_detach_submits_and_returns_then_a_later_run_collects(held_hub, run_cli, run_cli_json, tiny_space,
                                                               tmp_path):
    out = tmp_path / "t"
    [s] = run_cli_json("lut", "build", "--device", DEVICE, "--space", str(tiny_space), "--out", str(out),
                       *SMALL_BUILD, "--detach")
    n = len(held_hub.job_ids())
    assert s["measured_now"] == 0 and {p.rsplit("#", 1)[1] for p in s["pending"]} == {"0", "1"}
    assert n > len(s["pending"])  # every round of every entry, plus anchors
    code, text, err = run_cli("lut", "build", "--device", DEVICE, "--space", str(tiny_space), "--out", str(out),
                              *SMALL_BUILD, "--detach")  # nothing finished yet: still pending, nothing resubmitted
    assert code == 0 and f"pending: {len(s['pending'])} measurement(s) left running" in " ".join(text.split()), err
    assert len(held_hub.job_ids()) == n
    for job_id in held_hub.job_ids():
        held_hub.complete(job_id)
    [s2] = run_cli_json("lut", "build", "--device", DEVICE, "--space", str(tiny_space), "--out", str(out),
                        *SMALL_BUILD, "--detach")
    assert s2["pending"] == [] and 2 * s2["blocks"] == len(s["pending"])
    assert len(held_hub.job_ids()) == n  # collected, never resubmitted
    blocks = __import__("pandas").read_csv(out / "blocks.csv")
    assert len(blocks) == s2["blocks"] and (blocks["rounds"] == 2).all()


# -- failures: one line each, nothing lost ---------------------------------------------------------
def fail_token(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "nowhere.ini"))


def wrong_token(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(hub.write_client_ini(tmp_path / "w.ini", token="wrong")))


def rate_limited(hub, monkeypatch, tmp_path):
    import qai_hub.client

    monkeypatch.setattr(qai_hub.client, "RATE_LIMIT_RETRY_TIMEOUT", 0.02)  # minutes, the client's own setting
    hub.faults.rate_limit, hub.faults.rate_limit_method, hub.faults.rate_limit_path = 10**6, "POST", "/api/v1/jobs/"


FAILURES = {
    "no token": (fail_token, 1, "no AI Hub API token configured"),
    "wrong token": (wrong_token, 1, "refused the configured API token"),
    "unknown device": (None, 2, "no AI Hub device matches"),
    "job failed": (lambda h, m, t: setattr(h.faults, "fail_jobs_with", "Tensor shape mismatch in layer 3"), 1,
                   "failed: Tensor shape mismatch in layer 3"),
    "rate limited": (rate_limited, 1, "kept refusing submissions"),
    "client too old": (lambda h, m, t: setattr(h.faults, "min_client_version", "99.0"), 1,
                       "no longer accepts this client, qai-hub 0.56.0"),
    "job expired": (lambda h, m, t: setattr(h.faults, "expire_next", 100), 1, "expired: Job timed out"),
    "no profile": (lambda h, m, t: setattr(h.faults, "drop_profile", True), 1, "finished without a profile"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failures_are_one_line(hub, run_cli, models, monkeypatch, tmp_path, case):
    setup, exit_code, needle = FAILURES[case]
    if setup is not None:
        setup(hub, monkeypatch, tmp_path)
    device = "aihub:Nokia 3310" if case == "unknown device" else DEVICE
    code, out, err = run_cli("profile", str(models["small"]), "--device", device, "--runs", "3", "--rounds", "1",
                             "--json")
    assert code == exit_code, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert_no_token(hub, out, err)


def test_expired_jobs_are_resubmitted_before_giving_up(hub, run_cli_json, models):
    hub.faults.expire_next = 1  # the first job expires in the queue; its retry runs
    res = run_cli_json("profile", str(models["small"]), "--device", DEVICE, "--runs", "3", "--rounds", "1")
    assert res["n"] == 3
    names = sorted(hub._jobs[j].name for j in hub.job_ids())
    assert [n.rsplit("/", 1)[1] for n in names] == ["a1", "a2"]


def test_result_without_per_layer_detail_keeps_the_samples_and_says_so(hub, run_cli_json, models):
    hub.faults.drop_layer_detail = True
    res = run_cli_json("profile", str(models["small"]), "--device", DEVICE, "--runs", "3", "--rounds", "1")
    assert res["n"] == 3 and res["per_op_type"] == []
    assert any("no per-layer detail" in w for w in res["warnings"])


def test_a_failed_round_loses_nothing_else(hub, run_cli, tiny_space, tmp_path):
    out = tmp_path / "t"
    hub.faults.fail_matching = {r"/ffn-r224-s2-c48-e4/r1/": "Out of memory on device"}
    code, _, err = run_cli("lut", "build", "--device", DEVICE, "--space", str(tiny_space), "--out", str(out),
                           *SMALL_BUILD, "--json")
    assert code == 1 and "Out of memory on device" in err and len(err.strip().splitlines()) == 1, err
    db = sqlite3.connect(out / "journal.sqlite")
    done = {k for (k,) in db.execute("SELECT key || '#' || round FROM measurements")}
    db.close()
    assert "ffn-r224-s2-c48-e4#0" in done and "ffn-r224-s2-c48-e4#1" not in done and len(done) > 10


def test_rate_limited_polls_are_waited_out(hub, run_cli_json, models):
    hub.faults.rate_limit, hub.faults.rate_limit_method, hub.faults.rate_limit_path = 6, "GET", "/api/v1/job_summaries/"
    res = run_cli_json("profile", str(models["small"]), "--device", DEVICE, "--runs", "3", "--rounds", "1")
    assert res["n"] == 3 and hub.faults.rate_limit == 0  # every refused poll was answered, then waited out
    assert len(hub.job_ids()) == 1


def test_a_pause_between_waves_costs_no_jobs(hub, models, tmp_path):
    policy = SamplingPolicy(runs=3)
    with open_runner(DEVICE, detach=True) as r:
        d = r.dispatcher()
        d.attach(Journal(tmp_path / "journal.sqlite"), "s1")
        d.prepare({"a": Artifact("a", models["small"], "ha")}, lambda *a: None)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:  # what MeasuringSession._separate does between waves
            assert d.execute([], [Job("a", 0, "anchor", policy)], 12, lambda res, a: None) is None
    assert hub.job_ids() == []


def test_detach_and_aihub_compute_units_are_refused_where_they_do_not_apply(run_cli, tiny_space, tmp_path):
    code, _, err = run_cli("lut", "build", "--device", "cpu", "--space", str(tiny_space), "--out", str(tmp_path / "t"),
                           "--detach")
    assert code == 2 and "--detach does not apply to cpu devices" in err
    code, _, err = run_cli("profile", "efficientformerv2_s0", "--device", "cpu", "--compute-units", "npu")
    assert code == 2 and "--compute-units does not apply to cpu devices" in err


def test_a_model_gone_from_the_service_is_one_line_then_uploaded_again(hub, models, tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    art = {"a": Artifact("a", models["small"], "ha")}
    job = Job("a", 0, "block", SamplingPolicy(runs=3))
    got = []
    with open_runner(DEVICE) as r:
        d = r.dispatcher()
        d.attach(journal, "s1")
        d.prepare(art, lambda *a: None)
        hub._models.clear()  # deleted on the service after the upload
        with pytest.raises(DeviceError) as err:
            d.execute([job], [], 12, lambda res, a: got.append(res))
    assert "\n" not in str(err.value) and hub.token not in str(err.value) and not got
    with open_runner(DEVICE) as r:  # the next run finds the remembered id gone and uploads again
        d = r.dispatcher()
        d.attach(journal, "s2")
        d.prepare(art, lambda *a: None)
        d.execute([job], [], 12, lambda res, a: got.append(res))
    assert len(got) == 1 and requests_to(hub, "POST", "/api/v1/models/") == 2
    journal.close()
