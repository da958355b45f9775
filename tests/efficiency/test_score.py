import math

import numpy as np
import pandas as pd
import pytest

from latbench.core.errors import UsageError
from latbench.efficiency.score import (
    REFERENCE,
    MESConfig,
    config_with_overrides,
    parse_count,
    read_metrics_csv,
    reference_latency_ms,
    resolve,
)
from latbench.tables.table import BLOCK_COLUMNS, REFERENCE_KEY, LatencyTable


def table_with(keys_ms: dict[str, float], overhead=None) -> LatencyTable:
    rows = [{"key": k, "kind": k.split("-")[0], "latency_ms": v} for k, v in keys_ms.items()]
    meta = {"device_id": "pixel7", "resolution": 224, "overhead": overhead or {}}
    return LatencyTable(pd.DataFrame(rows, columns=BLOCK_COLUMNS), meta=meta)


EMPTY_IN = "empty-r224-c3-h224-w224"


def test_defaults_are_the_documented_constants():
    config = MESConfig()
    size, lat = config.metric("size"), config.metric("latency")
    assert config.score == 100
    assert (size.getter, size.unit, size.alpha) == ("params", 3e6, 0.5)
    assert (lat.getter, lat.unit, lat.alpha) == ("latency", REFERENCE, 1.0)


def test_mes_against_hand_computed_values():
    mes = resolve(config_with_overrides(MESConfig(), latency_unit="1ms"))
    # 100 * (6M / 3M)^-0.5 * (2 ms / 1 ms)^-1 = 100 / sqrt(2) / 2
    assert mes({"params": 6e6, "latency": 2.0}) == pytest.approx(100 / math.sqrt(2) / 2, rel=1e-12)
    # At every unit the score is exactly `score`.
    assert mes({"params": 3e6, "latency": 1.0}) == pytest.approx(100.0)
    # 1.5M params, 0.25 ms: 100 * 0.5^-0.5 * 0.25^-1 = 100 * sqrt(2) * 4
    assert mes({"params": 1.5e6, "latency": 0.25}) == pytest.approx(400 * math.sqrt(2), rel=1e-12)


def test_custom_exponents_and_units():
    config = config_with_overrides(MESConfig(), latency_unit="2ms", size_unit="5M", alpha_latency=0.7,
                                   alpha_size=0.2)
    mes = resolve(config)
    expect = 100 * (10e6 / 5e6) ** -0.2 * (3.0 / 2.0) ** -0.7
    assert mes({"params": 10e6, "latency": 3.0}) == pytest.approx(expect, rel=1e-12)
    line = mes.describe()
    for text in ("alpha=0.2", "alpha=0.7", "5,000,000 params", "2 ms"):
        assert text in line


def test_an_int8_table_s_size_unit_is_megabytes_of_the_model_file():
    from latbench.efficiency.score import for_precision

    int8 = for_precision(MESConfig(), "int8")
    assert int8.metric("size").getter == "model_mb"
    for given in ("4", "4MB", "4 mb", 4):
        assert config_with_overrides(int8, size_unit=given).metric("size").unit == pytest.approx(4.0)
    with pytest.raises(UsageError, match="in MB of the model file"):
        config_with_overrides(int8, size_unit="3M")  # three million MB
    assert config_with_overrides(MESConfig(), size_unit="3M").metric("size").unit == pytest.approx(3e6)


def test_reference_unit_comes_from_the_table_and_makes_mobilenetv2_score_its_size_term():
    table = table_with({REFERENCE_KEY: 4.0, EMPTY_IN: 0.1})
    mes = resolve(MESConfig(), table)
    assert mes.metric("latency").unit == pytest.approx(4.0)
    assert "mobilenetv2_100" in mes.describe()
    # MobileNetV2 itself: latency term 1, so MES = 100 * (3.504872M / 3M)^-0.5
    assert mes({"params": 3_504_872, "latency": 4.0}) == pytest.approx(100 * (3_504_872 / 3e6) ** -0.5)


def test_reference_unit_is_the_whole_model_measurement():
    # MobileNetV2 is measured whole: the block-sum calibration does not touch it.
    table = table_with({REFERENCE_KEY: 4.0, EMPTY_IN: 0.1}, {"scale": 1.1})
    assert reference_latency_ms(table) == pytest.approx(4.0)


def test_missing_reference_is_a_one_line_error_saying_how_to_add_it():
    table = table_with({"stem-r224-c32": 0.3})
    table.path = None
    with pytest.raises(UsageError) as err:
        resolve(MESConfig(), table)
    msg = str(err.value)
    assert "\n" not in msg
    assert REFERENCE_KEY in msg
    assert "latbench lut build --device pixel7 --model mobilenetv2_100 --out" in msg
    # The fixed unit does not need the table.
    assert resolve(config_with_overrides(MESConfig(), latency_unit="1ms"), table).metric("latency").unit == 1.0


def test_config_file_adds_a_column_metric(tmp_path):
    path = tmp_path / "mes.yaml"
    path.write_text(
        "score: 50\n"
        "metrics:\n"
        "  latency: {unit: 1ms}\n"
        "  size: {alpha: 0.25}\n"
        "  memory: {value: 'column:peak_mb', unit: 20, alpha: 0.5, unit_label: MB}\n"
    )
    config = MESConfig.load(path)
    assert [m.name for m in config.metrics] == ["size", "latency", "memory"]
    assert config.needs_columns() == ["peak_mb"]
    mes = resolve(config)
    value = mes({"params": 3e6, "latency": 2.0, "column:peak_mb": 80.0})
    assert value == pytest.approx(50 * 1.0 * 2.0 ** -1 * 4.0 ** -0.5)
    assert "memory: U=20 MB, alpha=0.5" in mes.describe()
    with pytest.raises(UsageError, match="column:peak_mb"):
        mes({"params": 3e6, "latency": 2.0})


@pytest.mark.parametrize(
    "text, match",
    [
        ("colour: red\n", "unknown key 'colour'"),
        ("metrics: {size: {alpha: fast}}\n", "alpha must be a finite number"),
        ("metrics: {size: {unit: -3}}\n", "positive number"),
        ("metrics: {latency: {unit: soon}}\n", "milliseconds"),
        ("metrics: {energy: {value: 'column:mj'}}\n", "missing key 'unit'"),
        ("metrics: {energy: {value: joules, unit: 1, alpha: 1}}\n", "not a built-in getter"),
        ("metrics: {size: {unit: reference}}\n", "positive number"),
        ("metrics: [size]\n", "must be a mapping"),
        ("score: 0\n", "score must be positive"),
    ],
)
def test_malformed_config_files_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "mes.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=match) as err:
        MESConfig.load(path)
    assert "\n" not in str(err.value)


def test_parse_count_suffixes_and_errors():
    assert parse_count("3M", "x") == 3e6
    assert parse_count("2.5k", "x") == 2500
    assert parse_count(7, "x") == 7
    for bad in ("", "three", "-1", True, None, "3X"):
        with pytest.raises(UsageError):
            parse_count(bad, "x")


def test_vectorised_equals_scalar():
    mes = resolve(config_with_overrides(MESConfig(), latency_unit="1.5ms"))
    params = np.array([1e6, 3e6, 9e6])
    lat = np.array([0.5, 1.5, 4.0])
    arr = mes.arrays({"params": params, "latency": lat})
    for p, ms, a in zip(params, lat, arr):
        assert a == pytest.approx(mes({"params": p, "latency": ms}), rel=1e-12)


def test_non_positive_values_are_rejected():
    mes = resolve(config_with_overrides(MESConfig(), latency_unit="1ms"))
    with pytest.raises(UsageError, match="positive"):
        mes({"params": 3e6, "latency": 0.0})


def test_metrics_csv(tmp_path):
    good = tmp_path / "m.csv"
    good.write_text("name,peak_mb,energy\nefficientformerv2_s0,40,1.5\n")
    assert read_metrics_csv(good, ["peak_mb"]) == {"efficientformerv2_s0": {"column:peak_mb": 40.0}}
    with pytest.raises(UsageError, match="lacks column 'flash'"):
        read_metrics_csv(good, ["flash"])
    bad = tmp_path / "bad.csv"
    bad.write_text("name,peak_mb\ns0,lots\n")
    with pytest.raises(UsageError, match="not a number"):
        read_metrics_csv(bad, ["peak_mb"])
    with pytest.raises(UsageError, match="does not exist"):
        read_metrics_csv(tmp_path / "nope.csv", [])
