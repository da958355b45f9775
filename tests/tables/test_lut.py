"""Lookup-table builds on the real CPU runner and real exports, on a tiny space."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from _support import REPO

from latbench.measuring.models import PASS_AGREEMENT

TINY = {
    "name": "tiny",
    "resolutions": [224],
    "stages": [
        {"widths": [32], "depth": [1, 2], "expansions": [4], "attention": False},
        {"widths": [48], "depth": [1, 1], "expansions": [4], "attention": False},
        {"widths": [96], "depth": [2, 2], "expansions": [3, 4], "attention": True},
        {"widths": [176], "depth": [2, 2], "expansions": [4], "attention": True},
    ],
}
# One round each and no more: on a busy host (CI runs two workers) the heat and slow-period rules
# otherwise give some entries another round, and the counts below would depend on the host.
FAST = ["--runs", "15", "--rounds", "1", "--max-rounds", "1", "--jobs", "1"]


@pytest.fixture
def tiny_space(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def journal_rows(table):
    db = sqlite3.connect(table / "journal.sqlite")
    return db.execute("select key, round, measured_at from measurements order by key, round").fetchall()


@pytest.mark.slow
def test_build_small_space_then_incremental(run_cli_json, tiny_space, tmp_path):
    out = tmp_path / "t"
    [s] = run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--calibrate", "1", *FAST)
    blocks = pd.read_csv(out / "blocks.csv")
    kinds = set(blocks["kind"])
    assert {"stem", "ffn", "mhsa", "embed", "attndown", "head", "empty", "model"} <= kinds
    assert "model-mobilenetv2_100-r224" in set(blocks["key"])  # the MES latency unit, measured whole
    assert s["blocks"] == len(blocks) and s["measured_now"] == len(blocks) + 1  # + 1 calibration model
    assert (blocks["n"] == 15).all() and (blocks["latency_ms"] > 0).all()
    assert blocks["consensus"].all() and (blocks["agreement"] == "1/1").all()  # one round: its own consensus
    ops = pd.read_csv(out / "ops.csv")
    assert set(ops["block_key"]) >= set(blocks.loc[blocks.kind == "ffn", "key"])
    assert abs(ops.groupby("block_key")["share"].sum() - 1).max() < 1e-6
    meta = json.loads((out / "meta.json").read_text())
    for k in ("runtime", "runtime_version", "threads", "soc", "os"):
        assert k in meta["device"]
    assert meta["space"]["name"] == "tiny" and meta["latbench_version"]
    assert meta["overhead"]["calibrated"] and meta["overhead"]["calibrated_on"] and meta["overhead"]["scale"] > 0
    assert meta["anchors"]["keys"] and all(v > 0 for v in meta["anchors"]["levels_ms"].values())
    assert "per-round p2" in meta["consensus"]["rule"]
    assert (blocks["raw_latency_ms"] > 0).all()  # the latency before the time base sits beside it
    before = {k: t for k, _, t in journal_rows(out)}

    # Nothing new: nothing measured.
    [s2] = run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--calibrate", "1", *FAST)
    assert s2["measured_now"] == 0
    # Grow the space: only the new configurations are measured.
    grown = dict(TINY, stages=[dict(st) for st in TINY["stages"]])
    grown["stages"][3]["expansions"] = [3, 4]
    tiny_space.write_text(yaml.safe_dump(grown))
    [s3] = run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--calibrate", "1", *FAST)
    after = {k: t for k, _, t in journal_rows(out)}
    new = set(after) - set(before)
    # The new block, plus the calibration subnet when the grown space samples a different one.
    assert {k for k in new if not k.startswith("arch-")} == {"ffn-r224-s4-c176-e3"}
    assert s3["measured_now"] == len(new)
    assert all(after[k] == before[k] for k in before)  # nothing re-measured
    # --force re-measures everything.
    [s4] = run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--calibrate", "0",
                        "--force", *FAST)
    assert s4["measured_now"] == len([k for k in after if not k.startswith("arch-")])


@pytest.mark.slow
def test_resume_after_sigkill_loses_and_duplicates_nothing(tiny_space, tmp_path):
    out = tmp_path / "t"
    args = [sys.executable, "-m", "latbench", "lut", "build", "--space",
            str(tiny_space), "--out", str(out), "--calibrate", "0", "--runs", "400", "--rounds", "2", "--max-rounds", "3",
            "--jobs", "1", "--no-reference", "--json"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if (out / "journal.sqlite").exists():
                try:
                    if len(journal_rows(out)) >= 4:
                        break
                except sqlite3.OperationalError:
                    pass
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first = journal_rows(out)
    assert 4 <= len(first)
    assert not (out / "meta.json").exists() or json.loads((out / "meta.json").read_text())  # never half-written
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    [summary] = json.loads(done.stdout)
    rows = journal_rows(out)
    keys = {k for k, _, _ in rows}
    assert len(rows) == len(set((k, r) for k, r, _ in rows))  # no (key, round) twice
    for k in keys:  # every key has both rounds (and any consensus asked for), numbered without gaps
        rounds = sorted(r for kk, r, _ in rows if kk == k)
        assert rounds == list(range(len(rounds))) and len(rounds) >= 2
    assert set(first) <= set(rows)  # what the killed run committed is kept as it was
    assert summary["measured_now"] == len(rows) - len(first)
    blocks = pd.read_csv(out / "blocks.csv")
    assert len(blocks) == len(keys) and (blocks["rounds"] >= 2).all()


@pytest.mark.slow
def test_estimate_show_diff_and_staleness(run_cli, run_cli_json, tiny_space, tmp_path):
    out = tmp_path / "t"
    run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--calibrate", "0", *FAST)
    arch = {"name": "a1", "resolution": 224, "stages": [
        {"width": 32, "expansions": [4, 4]}, {"width": 48, "expansions": [4]},
        {"width": 96, "expansions": [3, 4], "attention": 1}, {"width": 176, "expansions": [4, 4], "attention": 2}]}
    (tmp_path / "a1.yaml").write_text(yaml.safe_dump(arch))
    [est] = run_cli_json("lut", "estimate", str(out), str(tmp_path / "a1.yaml"))
    assert est["name"] == "a1" and est["latency_ms"] > 0
    table = pd.read_csv(out / "blocks.csv").set_index("key")["latency_ms"]
    expect = sum(b["count"] * (table[b["key"]] - b["overhead_ms"]) for b in est["blocks"]) + est["input_overhead_ms"]
    assert est["latency_ms"] == pytest.approx(expect * est["scale"])
    assert est["plain_sum_ms"] == pytest.approx(sum(b["count"] * table[b["key"]] for b in est["blocks"]))
    assert est["calibrated"] is False and "uncalibrated" in est["warnings"][0]
    # (further warnings may name entries this host's noise made doubtful; none says the table is stale)
    assert not any("stale" in w for w in est["warnings"])

    # An arch outside the table's space (its blocks are not in the table): one line naming what is outside.
    arch["stages"][3]["expansions"] = [2, 4]
    (tmp_path / "a2.yaml").write_text(yaml.safe_dump(arch))
    code, _, err = run_cli("lut", "estimate", str(out), str(tmp_path / "a2.yaml"))
    assert code == 2 and "stage 4 block 1 expansion 2 not in [4]" in err and "lut build" in err
    assert err.count("\n") == 1

    shown = run_cli_json("lut", "show", str(out))
    assert len(shown["blocks"]) == len(table)

    # Staleness: pretend the table came from another onnxruntime.
    meta = json.loads((out / "meta.json").read_text())
    meta["device"]["runtime_version"] = "0.0.1"
    (out / "meta.json").write_text(json.dumps(meta))
    code, outp, err = run_cli("lut", "estimate", str(out), str(tmp_path / "a1.yaml"), "--json")
    assert code == 0 and any("runtime_version" in w for w in json.loads(outp)[0]["warnings"])
    code, _, err = run_cli("lut", "estimate", str(out), str(tmp_path / "a1.yaml"), "--strict")
    assert code == 2 and "stale" in err and "runtime_version" in err

    diff = run_cli_json("lut", "diff", str(out), str(out))
    assert diff["median_ratio"] == pytest.approx(1.0) and diff["common"] == len(table)


@pytest.mark.slow
def test_validate_json_shape(run_cli_json, tiny_space, tmp_path):
    out = tmp_path / "t"
    run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--calibrate", "0", *FAST)
    res = run_cli_json("lut", "validate", str(out), "--samples", "2", "--seed", "3", "--rounds", "1")
    assert res["n"] == 2  # S0-L are not in the tiny space
    for k in ("mean_abs_pct_error", "within_5pct", "within_10pct", "kendall_tau", "baselines", "noise"):
        assert k in res
    noise = res["noise"]
    assert noise["passes"] == 2 and 0 <= noise["median_pct"] <= noise["max_pct"]
    assert 0 <= noise["within_noise"] <= 1 and len(noise["time_base_factors"]) == 2 + noise["extra_passes"]
    for m in res["models"]:
        # A pass more than 10 % slower than the model's fastest read it in a slow state: left out
        # (measured again in an extra pass, None for the models it did not measure).
        assert len(m["pass_ms"]) == 2 + noise["extra_passes"]
        values = [v for v in m["pass_ms"] if v is not None]
        agreed = [v for v in values if v <= (1 + PASS_AGREEMENT) * min(values)]
        assert sorted(m["slow_pass_ms"]) == sorted(v for v in values if v not in agreed)
        assert m["measured_ms"] == pytest.approx(sum(agreed) / len(agreed))
        if m["passes_agree"]:
            assert m["pass_noise_pct"] == pytest.approx(100 * (max(agreed) - min(agreed)) / m["measured_ms"])
        assert isinstance(m["slow_period"], bool)  # measured only in slow periods of the device (warned)
    assert set(res["baselines"]) == {"plain_sum", "macs_proportional"}
    assert 0 <= res["within_5pct"] <= res["within_10pct"] <= 1
    assert all(m["measured_ms"] > 0 and m["latency_ms"] > 0 for m in res["models"])
    # Both latencies: the fast state and the typical one, each against its own measurement.
    assert 0 <= res["typical"]["within_5pct"] <= res["typical"]["within_10pct"] <= 1
    for m in res["models"]:
        assert m["typical_ms"] >= m["latency_ms"] and m["measured_typical_ms"] >= m["measured_ms"] * 0.98
        assert m["typical_error_pct"] == pytest.approx(100 * (m["typical_ms"] / m["measured_typical_ms"] - 1))


def test_build_bad_input(run_cli, tmp_path):
    code, _, err = run_cli("lut", "build")
    assert code == 2 and "--space" in err
    code, _, err = run_cli("lut", "build", "--space", "--resolution", "256")
    assert code == 2 and "not in space" in err
    code, _, err = run_cli("lut", "build", "--device", "nokia3310", "--space")
    assert code == 2 and "unknown device" in err
    code, _, err = run_cli("lut", "show", str(tmp_path))
    assert code == 2 and "not a latency table" in err


@pytest.mark.slow
def test_model_only_build_into_a_table_keeps_its_anchor(run_cli_json, tiny_space, tmp_path):
    out = tmp_path / "t"
    run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--calibrate", "0",
                 "--no-reference", *FAST)
    anchors = json.loads((out / "meta.json").read_text())["anchors"]
    run_cli_json("lut", "build", "--model", "mobilenetv2_100", "--out", str(out), *FAST)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["anchors"]["keys"] == anchors["keys"] and meta["anchors"]["levels_ms"] == anchors["levels_ms"]
    row = pd.read_csv(out / "blocks.csv").set_index("key").loc["model-mobilenetv2_100-r224"]
    # The whole model is put on the table's time base by the same anchors: its one round is scaled
    # by exactly the factor its session's anchors give, not by some other reference. (The factor
    # itself depends on how busy the host was in either build, so it is not bounded here.)
    factors = meta["time_base"]["sessions"]
    base = meta["anchors"]["base_session"]
    [later] = [f for s, f in factors.items() if s != base]
    assert row["rounds"] == 1 and factors[base] == 1.0
    assert row["latency_ms"] / row["raw_latency_ms"] == pytest.approx(later, rel=1e-6)


@pytest.mark.slow
def test_model_build_into_a_space_table_keeps_space_and_calibration(run_cli_json, tiny_space, tmp_path):
    out = tmp_path / "t"
    run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--calibrate", "1",
                 "--no-reference", *FAST)
    before = json.loads((out / "meta.json").read_text())
    run_cli_json("lut", "build", "--model", "mobilenetv2_100", "--out", str(out), *FAST)
    after = json.loads((out / "meta.json").read_text())
    assert after["space"]["digest"] == before["space"]["digest"]
    assert after["overhead"]["scale"] == pytest.approx(before["overhead"]["scale"])
    assert after["overhead"]["calibrated_on"] == before["overhead"]["calibrated_on"]


@pytest.mark.slow
def test_a_model_table_is_calibrated_on_its_models_and_says_so(run_cli_json, tmp_path):
    out = tmp_path / "t"
    [s] = run_cli_json("lut", "build", "--model", "efficientformerv2_s0", "--out", str(out), *FAST)
    assert s["overhead"]["calibrated"] and s["overhead"]["calibrated_on"] == ["efficientformerv2_s0"]
    models = pd.read_csv(out / "models.csv")
    assert list(models["name"]) == ["efficientformerv2_s0"] and models["latency_ms"].iloc[0] > 0
    [est] = run_cli_json("lut", "estimate", str(out), "efficientformerv2_s0")
    assert est["calibrated"] is True and "calibrated x" in est["method"]
    assert not any("uncalibrated" in w for w in est["warnings"])
    # One model fitted with one scale: the estimate of that model is its end-to-end measurement.
    assert est["latency_ms"] == pytest.approx(models["latency_ms"].iloc[0], rel=1e-6)
    # ... for both latencies: the typical one is calibrated the same way.
    assert est["typical_ms"] == pytest.approx(models["typical_ms"].iloc[0], rel=1e-5)
    assert est["typical_ms"] >= est["latency_ms"]


@pytest.mark.slow
def test_check_fix_repairs_a_planted_bad_entry(run_cli_json, tiny_space, tmp_path):
    from latbench.measuring.journal import Journal
    from latbench.tables.build import derive_table

    out = tmp_path / "t"
    run_cli_json("lut", "build", "--space", str(tiny_space), "--out", str(out), "--calibrate", "0",
                 "--no-reference", "--runs", "30", "--rounds", "2", "--max-rounds", "4", "--jobs", "1")
    before = pd.read_csv(out / "blocks.csv").set_index("key")["latency_ms"]
    bad = "mhsa-r224-s3-c96"
    # Plant a value 2.5x too slow whose rounds agree (a burst over all of them): consensus cannot see
    # it. (Large, so a re-measurement on a loaded test machine still tells it apart.) The rounds keep
    # their times, so the slow-period view of them (their neighbours in time) is the one they had.
    with Journal(out / "journal.sqlite") as j:
        for row in j.rows(keys=[bad])[bad]:
            m = row.measurement
            m.samples_ms = [x * 2.5 for x in m.samples_ms]
            j.record(bad, row.round, row.role, row.fields, m, row.content_hash, device=row.device,
                     session=row.session, at=row.measured_at)
        derive_table(j, out).save()
    planted = pd.read_csv(out / "blocks.csv").set_index("key")["latency_ms"][bad]
    assert planted == pytest.approx(2.5 * before[bad], rel=0.02)

    others = ["ffn-r224-s3-c96-e4", "stem-r224-c32"]
    # Two rounds plus the confirming ones fit the table's bound of 4 (bounded: each later wave waits longer).
    res = run_cli_json("lut", "check", str(out), "--rounds", "2", "--key", bad, "--key", others[0], "--key", others[1])
    by = {r["key"]: r for r in res["entries"]}
    assert bad in res["moved"] and by[bad]["ratio"] < 0.7 and res["fixed"] == []
    assert set(by) == {bad, *others} and all(by[k]["noise"] > 0 for k in by)
    assert pd.read_csv(out / "blocks.csv").set_index("key")["latency_ms"][bad] == planted  # untouched

    res = run_cli_json("lut", "check", str(out), "--rounds", "2", "--key", bad, "--fix")
    assert res["fixed"] == [bad]
    after = pd.read_csv(out / "blocks.csv").set_index("key")
    assert after["latency_ms"][bad] < 0.7 * planted and after["rounds"][bad] > 2
    with Journal(out / "journal.sqlite") as j:
        assert [s["purpose"] for s in j.sessions()][-1] == "check"
