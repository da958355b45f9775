"""The journal: rounds, anchors and sessions committed one by one; old journals still open."""

import json
import sqlite3

from latbench.measuring.journal import Journal
from latbench.measuring.measurement import Measurement, OpTime


def m(samples, label="x"):
    return Measurement(label, samples, provenance={"measured_at": "now"}, per_op=[OpTime("Conv", "c1", 0.5)])


def test_journal_records_rounds_and_survives_reopen(tmp_path):
    path = tmp_path / "journal.sqlite"
    with Journal(path) as j:
        s = j.start_session("build", "cpu", {"runtime": "onnxruntime"})
        j.record("a", 0, "block", {"kind": "ffn"}, m([1.0, 2.0, 3.0]), "h1", device="cpu", session=s)
        j.record("a", 1, "block", {"kind": "ffn"}, m([4.0]), "h1")
        j.record("a", 1, "block", {"kind": "ffn"}, m([5.0]), "h1")  # same round again replaces, never duplicates
        j.record("cal", 0, "model", {"kind": "model"}, m([9.0]), "h2")
        j.record_anchor(s, "cpu", 0, "anc", m([0.5]))
        j.record_anchor(s, "cpu", 1, "anc", m([0.6]))
    with Journal(path) as j:
        assert j.rounds_done("block") == {"a": {0, 1}}
        fields, ms, ch = j.measurements("block")["a"]
        assert fields == {"kind": "ffn"} and ch == "h1"
        assert [x.samples_ms for x in ms] == [[1.0, 2.0, 3.0], [5.0]]
        rows = j.rows("block")["a"]
        assert rows[0].device == "cpu" and rows[0].session == s and rows[1].session is None
        assert [a.measurement.samples_ms for a in j.anchors(s)] == [[0.5], [0.6]]
        assert j.sessions()[0]["purpose"] == "build"
        assert set(j.measurements()) == {"a", "cal"}
        j.forget(["a"])
        assert j.rounds_done() == {"cal": {0}}
    count = sqlite3.connect(path).execute("select count(*) from measurements").fetchone()[0]
    assert count == 1


def test_a_journal_from_before_devices_and_sessions_opens(tmp_path):
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE measurements (key TEXT NOT NULL, round INTEGER NOT NULL, role TEXT NOT NULL,
            fields TEXT NOT NULL, measurement TEXT NOT NULL, content_hash TEXT, measured_at REAL NOT NULL,
            PRIMARY KEY (key, round));
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);""")
    db.execute("INSERT INTO measurements VALUES ('a', 0, 'block', '{}', ?, 'h', 0)", (json.dumps(m([1.0]).to_dict()),))
    db.commit()
    db.close()
    with Journal(path) as j:
        [row] = j.rows()["a"]
        assert row.device is None and row.session is None and row.measurement.samples_ms == [1.0]
        j.record("b", 0, "block", {}, m([2.0]), "h", device="cpu", session="s1")
        assert j.rows()["b"][0].device == "cpu"


def test_in_memory_journal():
    with Journal(":memory:") as j:
        j.record("a", 0, "block", {}, m([1.0]), None)
        assert j.rounds_done() == {"a": {0}} and j.path is None
