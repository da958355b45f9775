import sqlite3

import pandas as pd
import pytest

from latbench.blocks import space_blocks
from latbench.errors import UsageError
from latbench.measurement import Measurement, OpTime
from latbench.space import SearchSpace
from latbench.tables import BLOCK_COLUMNS, Journal, LatencyTable, block_row, merge_measurements, row_config


def m(samples, label="x", **prov):
    return Measurement(label, samples, provenance={"measured_at": "now", **prov},
                       per_op=[OpTime("Conv", "c1", 0.5), OpTime("Gelu", "g", 0.25)])


def test_journal_records_rounds_and_survives_reopen(tmp_path):
    path = tmp_path / "journal.sqlite"
    with Journal(path) as j:
        j.record("a", 0, "block", {"kind": "ffn"}, m([1.0, 2.0, 3.0]), "h1")
        j.record("a", 1, "block", {"kind": "ffn"}, m([4.0]), "h1")
        j.record("a", 1, "block", {"kind": "ffn"}, m([5.0]), "h1")  # same round again replaces, never duplicates
        j.record("cal", 0, "model", {"kind": "model"}, m([9.0]), "h2")
    with Journal(path) as j:
        assert j.rounds_done("block") == {"a": {0, 1}}
        fields, ms, ch = j.measurements("block")["a"]
        assert fields == {"kind": "ffn"} and ch == "h1"
        assert [x.samples_ms for x in ms] == [[1.0, 2.0, 3.0], [5.0]]
        assert set(j.measurements()) == {"a", "cal"}
        j.forget(["a"])
        assert j.rounds_done() == {"cal": {0}}
    count = sqlite3.connect(path).execute("select count(*) from measurements").fetchone()[0]
    assert count == 1


def test_merge_pools_samples():
    merged = merge_measurements([m([1.0, 2.0]), m([3.0])])
    assert merged.samples_ms == [1.0, 2.0, 3.0] and merged.median == 2.0
    assert merged.per_op


def test_table_round_trip_and_pandas_one_call(tmp_path):
    configs = space_blocks(SearchSpace.default())[:5]
    rows = [block_row(c.fields(), c.key, [m([0.1 * (i + 1)] * 5)], "h", c.params(), c.input_shape)
            for i, c in enumerate(configs)]
    table = LatencyTable(pd.DataFrame(rows, columns=BLOCK_COLUMNS), meta={"device": {"runtime": "onnxruntime"}})
    table.save(tmp_path / "t")
    df = pd.read_csv(tmp_path / "t" / "blocks.csv")  # one call, as documented
    assert list(df["key"]) == [c.key for c in configs]
    back = LatencyTable.load(tmp_path / "t")
    assert back.median_ms()[configs[2].key] == pytest.approx(0.3)
    assert [row_config(r) for r in back.blocks.to_dict("records")] == configs
    assert not list((tmp_path / "t").glob(".*.tmp"))


def test_load_errors(tmp_path):
    with pytest.raises(UsageError, match="is not a latency table"):
        LatencyTable.load(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    (tmp_path / "blocks.csv").write_text("key,kind,median_ms\n")
    with pytest.raises(UsageError, match="corrupt"):
        LatencyTable.load(tmp_path)


def test_provenance_diff_and_strict():
    table = LatencyTable(pd.DataFrame(columns=BLOCK_COLUMNS),
                         meta={"device": {"runtime": "onnxruntime", "runtime_version": "1.20.0", "threads": 1},
                               "latbench_version": "0.1.0"})
    diffs = table.check_provenance({"runtime": "onnxruntime", "runtime_version": "1.31.1", "threads": 1})
    assert diffs == ["runtime_version: '1.20.0' -> '1.31.1'"]
    with pytest.raises(UsageError, match="stale.*runtime_version"):
        table.check_provenance({"runtime_version": "1.31.1"}, strict=True)
    assert table.check_provenance({"runtime_version": "1.20.0"}) == []


def test_rounds_stats_counts_each_round_once():
    from latbench.tables import rounds_stats

    quiet1, quiet2 = m([1.0] * 50), m([1.02] * 50)
    disturbed = m([1.5] * 500)  # a disturbed round that adaptive sampling kept going for longer
    stats = rounds_stats([quiet1, disturbed, quiet2])
    assert stats["median_ms"] == pytest.approx(1.02)  # pooling would have said 1.5
    assert stats["n"] == 600 and stats["p95_ms"] == pytest.approx(1.5)


def test_rounds_stats_normalises_by_the_anchor():
    from latbench.tables import rounds_stats

    slow_phase = m([1.2] * 50, anchor_ms=0.6)  # the host ran 20 % slow: so did the anchor
    normal = m([1.0] * 50, anchor_ms=0.5)
    normal2 = m([1.02] * 50, anchor_ms=0.5)
    stats = rounds_stats([slow_phase, normal, normal2], anchor_reference_ms=0.5)
    assert stats["median_ms"] == pytest.approx(1.0)
    assert stats["raw_median_ms"] == pytest.approx(1.02)
    assert rounds_stats([slow_phase], anchor_reference_ms=0.5)["median_ms"] == pytest.approx(1.0)
    assert rounds_stats([slow_phase])["median_ms"] == pytest.approx(1.2)  # no reference: untouched
