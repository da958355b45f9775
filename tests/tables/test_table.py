import pandas as pd
import pytest

from latbench.blocks.configs import space_blocks
from latbench.core.errors import UsageError
from latbench.measuring.measurement import Measurement, OpTime
from latbench.space import SearchSpace
from latbench.tables.table import BLOCK_COLUMNS, LatencyTable, row_config


def m(samples, label="x", **prov):
    return Measurement(label, samples, provenance={"measured_at": "now", **prov},
                       per_op=[OpTime("Conv", "c1", 0.5), OpTime("Gelu", "g", 0.25)])


def test_table_round_trip_and_pandas_one_call(tmp_path):
    configs = space_blocks(SearchSpace.default())[:5]
    rows = [{**c.fields(), "key": c.key, "latency_ms": 0.1 * (i + 1), "consensus": True, "agreement": "3/3"}
            for i, c in enumerate(configs)]
    table = LatencyTable(pd.DataFrame(rows, columns=BLOCK_COLUMNS), meta={"device": {"runtime": "onnxruntime"}})
    table.save(tmp_path / "t")
    df = pd.read_csv(tmp_path / "t" / "blocks.csv")  # one call, as documented
    assert list(df["key"]) == [c.key for c in configs]
    back = LatencyTable.load(tmp_path / "t")
    assert back.latency_ms()[configs[2].key] == pytest.approx(0.3)
    assert back.flagged() == {}
    assert [row_config(r) for r in back.blocks.to_dict("records")] == configs
    assert not list((tmp_path / "t").glob(".*.tmp"))


def test_load_errors(tmp_path):
    with pytest.raises(UsageError, match="is not a latency table"):
        LatencyTable.load(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    (tmp_path / "blocks.csv").write_text("key,kind,latency_ms\n")
    with pytest.raises(UsageError, match="meta.json is not valid JSON.*no journal to rederive it from"):
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
