"""onnxruntime_perf_test output parsing, against real outputs of several versions and broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_runners.perf_test_output import parse_perf_test_output, parse_result_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ort_perf_test"


def load(name: str) -> str:
    text = (FIXTURES / name).read_text()
    assert text.startswith("# source: https://github.com/"), "fixtures cite where they came from"
    return text


def test_fixture_set_covers_several_wordings():
    assert len(list(FIXTURES.glob("*.txt"))) >= 3


def test_newest_wording_average_total_and_percentiles_in_seconds():
    r = parse_perf_test_output(load("arm_learning_paths_sme2_ort1x.txt"))
    assert r.average_ms == pytest.approx(98.961997)
    assert r.p50_ms == pytest.approx(99.5086)
    assert r.p90_ms == r.p95_ms == r.p99_ms == pytest.approx(101.519)
    assert r.min_ms == pytest.approx(95.8204) and r.max_ms == pytest.approx(101.519)
    assert r.session_creation_ms == pytest.approx(217.932)
    assert r.first_inference_ms == pytest.approx(196.0)
    assert r.requests == 5
    assert r.typical_ms == pytest.approx(99.5086)


def test_legacy_wording_is_and_sec():
    r = parse_perf_test_output(load("onnxruntime_issue_17313_legacy.txt"))
    assert r.average_ms == pytest.approx(58.8053)
    assert r.p50_ms == pytest.approx(58.7108)
    assert r.p90_ms == pytest.approx(59.9845)
    assert r.p95_ms == pytest.approx(60.5676)
    assert r.p99_ms == pytest.approx(61.9517)
    assert r.total_ms == pytest.approx(58805.3)  # "Total time cost: 58.8053" has no unit: seconds
    assert r.requests == 1000
    assert r.session_creation_ms is None


def test_summary_without_percentiles_uses_the_average():
    r = parse_perf_test_output(load("computelibrary_issue_850_ort13.txt"))
    assert r.average_ms == pytest.approx(144.871)
    assert r.p50_ms is None and r.p90_ms is None
    assert r.session_creation_ms == pytest.approx(127.918)
    assert r.requests == 10
    assert r.typical_ms == pytest.approx(144.871)


def test_no_space_after_colon_and_log_noise():
    r = parse_perf_test_output(load("onnxruntime_pr_2798_nospace.txt"))
    assert r.average_ms == pytest.approx(734.606)
    assert r.session_creation_ms == pytest.approx(1841.49)
    assert r.total_ms == pytest.approx(734.606)
    assert r.requests == 1


def test_other_units_are_converted():
    r = parse_perf_test_output("P50 Latency: 1500 us\nP90 Latency = 2 ms\nAverage inference time cost: 0.0016 s\n")
    assert r.p50_ms == pytest.approx(1.5)
    assert r.p90_ms == pytest.approx(2.0)
    assert r.average_ms == pytest.approx(1.6)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Segmentation fault\n",
        "\x00\x17 garbage 12.5 bananas\n",
        # truncated before any latency figure
        "Setting intra_op_num_threads to 1\nSession creation time cost: 0.2 s\nFirst inference time cost: 196 ms\nTotal infer",
        "Average inference time cost: nan ms\n",
        "Run failed:failed to initialize.\n",
    ],
)
def test_garbage_and_truncated_output_is_rejected(text):
    with pytest.raises(ValueError, match="no latency figures"):
        parse_perf_test_output(text)


def test_result_file_five_and_six_columns_and_stats_block():
    five = "model,0.0012,41000000,97,0\nmodel,0.0013,41000000,97,1\n\nMin Latency: 0.0012 s\nP50 Latency: 0.0012 s\n"
    assert parse_result_file(five) == pytest.approx([1.2, 1.3])
    six = "model,1e-05,0.0021,41000000,97,0\nmodel,1e-05,0.0022,41000000,97,1\n"
    assert parse_result_file(six) == pytest.approx([2.1, 2.2])
    assert parse_result_file("not,a,result,file,at all\n") == []
    assert parse_result_file("") == []
