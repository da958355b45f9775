"""benchmark_model's command line and output: real outputs of several TFLite/LiteRT versions, broken
ones, the op-profiling CSV, and the single runs and per-op rows latbench keeps.

Fixtures are verbatim copies (several cut where the public source's excerpt ends); SOURCES.md
beside them says where each comes from. Expected values are read off the fixture text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from device_runners.benchmark_model_output import (
    BenchmarkModelReport,
    benchmark_args,
    op_times,
    parse_benchmark_model_output,
    parse_op_profiling,
    parse_op_table_row,
    run_samples,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmark_model"


def load(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_every_fixture_is_listed_in_sources() -> None:
    sources = load("SOURCES.md")
    names = sorted(p.name for p in FIXTURES.glob("*.txt"))
    assert len(names) >= 8
    rows = {line.split("|")[1].strip(" `"): line for line in sources.splitlines() if line.startswith("| `")}
    assert sorted(rows) == names, "every fixture, and only fixtures, in SOURCES.md"
    for name, line in rows.items():
        source = line.split("|")[2]
        assert "https://github.com/" in source or "same file" in source or "tool library" in source, name


def test_classic_format_with_profiling_header_cut_off() -> None:
    # tensorflow/tensorflow#42507: 4 threads, op profiling on; the excerpt ends inside the init table.
    r = parse_benchmark_model_output(load("tf_issue_42507_classic.txt"))
    assert r.format == "classic"
    assert r.init_ms == pytest.approx(0.855)
    assert r.first_ms == pytest.approx(49.060)
    assert r.warmup_avg_ms == pytest.approx(34.8251)
    assert r.avg_ms == pytest.approx(33.2094)
    # "count=50 first=32891 curr=33978 min=32641 max=34005 avg=33209.4 std=450" is the timed phase
    assert r.count == 50 and r.warmup_count == 15
    assert r.min_ms == pytest.approx(32.641) and r.max_ms == pytest.approx(34.005)
    assert r.std_ms == pytest.approx(0.450)
    assert r.truncated


def test_xnnpack_issue_999_int8_run() -> None:
    r = parse_benchmark_model_output(load("xnnpack_issue_999_int8.txt"))
    assert r.format == "classic"
    assert (r.init_ms, r.first_ms) == (pytest.approx(18.777), pytest.approx(64.791))
    assert r.warmup_avg_ms == pytest.approx(57.7582)
    assert r.avg_ms == pytest.approx(55.0432)
    assert r.count == 50 and r.warmup_count == 9
    assert r.std_ms == pytest.approx(1.562)
    assert r.min_ms == pytest.approx(53.077) and r.max_ms == pytest.approx(60.727)


def test_info_prefix_and_e_notation_ti_sdk() -> None:
    r = parse_benchmark_model_output(load("ti_sdk_am62x_no_xnnpack.txt"))
    assert r.format == "info-prefixed"
    assert r.init_ms == pytest.approx(6.418)
    assert r.first_ms == pytest.approx(1041.765)
    assert r.warmup_avg_ms == pytest.approx(1041.76)  # "Warmup (avg): 1.04176e+06"
    assert r.avg_ms == pytest.approx(971.535)
    assert r.count == 50 and r.warmup_count == 1  # warm-up printed as "count=1 curr=1041765"
    assert r.std_ms == pytest.approx(39.112)
    assert r.min_ms == pytest.approx(911.877) and r.max_ms == pytest.approx(1112.273)
    assert not r.truncated and r.op_rows == []

    x = parse_benchmark_model_output(load("ti_sdk_am62x_xnnpack.txt"))
    assert x.avg_ms == pytest.approx(602.943) and x.init_ms == pytest.approx(592.232)
    assert x.std_ms == pytest.approx(27.690)


def test_info_prefix_warmup_and_timed_phases_arm_tc2() -> None:
    r = parse_benchmark_model_output(load("arm_tc2_info_prefix_xnnpack.txt"))
    assert r.format == "info-prefixed"
    assert r.avg_ms == pytest.approx(6.4795)
    assert r.warmup_avg_ms == pytest.approx(7.18107)
    assert r.count == 2 and r.warmup_count == 70
    assert r.min_ms == pytest.approx(6.449) and r.max_ms == pytest.approx(6.510)
    assert r.std_ms == pytest.approx(0.030)


def test_op_profiling_tables_with_xnnpack_delegate_rows() -> None:
    r = parse_benchmark_model_output(load("arm_tc2_op_profiling_delegate_rows.txt"))
    assert r.avg_ms == pytest.approx(7.45497)
    assert r.count == 67 and r.std_ms == pytest.approx(0.256)

    init = r.ops("Run Order", phase="init")
    assert [(o.node_type, o.name) for o in init] == [
        ("ModifyGraphWithDelegate", "ModifyGraphWithDelegate/0"), ("AllocateTensors", "AllocateTensors/0")]
    assert init[0].avg_ms == pytest.approx(14.842) and init[0].percent == pytest.approx(99.317)

    run = r.ops("Run Order")
    assert len(run) == 115  # "115 nodes observed"
    first = run[0]
    assert first.node_type == "Convolution (NHWC, QU8) IGEMM"  # commas inside the type...
    assert first.name == "Delegate/Convolution (NHWC, QU8) IGEMM:0"  # ...and inside the name
    assert first.first_ms == pytest.approx(0.267) and first.avg_ms == pytest.approx(0.278)
    assert first.percent == pytest.approx(3.783) and first.times_called == 1
    adds = [o for o in run if o.node_type == "Add (ND, QU8)"]
    assert adds[0].name == "Delegate/Add (ND, QU8):9" and adds[0].avg_ms == pytest.approx(0.051)

    by_type = {o.node_type: o for o in r.ops("Summary by node type")}
    assert by_type["Convolution (NHWC, QU8) GEMM"].count == 54
    assert by_type["Convolution (NHWC, QU8) GEMM"].avg_ms == pytest.approx(3.340)
    assert by_type["Convolution (NHWC, QU8) GEMM"].percent == pytest.approx(45.622)
    assert by_type["TFLite_Detection_PostProcess"].avg_ms == pytest.approx(1.339)
    assert sum(o.count for o in by_type.values()) == 115

    top = r.ops("Top by Computation Time")
    assert top[0].node_type == "TFLite_Detection_PostProcess"
    assert top[0].name.startswith("[TFLite_Detection_PostProcess, TFLite_Detection_PostProcess:1")


def test_table_with_start_column_cut_mid_row() -> None:
    # tensorflow/tensorflow#27948 (TF 1.13): [start] column, no summary line; the stat line gives the average.
    r = parse_benchmark_model_output(load("tf_issue_27948_run_order_with_start.txt"))
    assert r.avg_ms == pytest.approx(947.350)
    assert r.count == 50 and r.std_ms == pytest.approx(2.060)
    rows = r.ops("Run Order")
    assert len(rows) == 6  # the seventh row is cut after its start value
    assert rows[0].node_type == "DEPTHWISE_CONV_2D" and rows[0].name == "[srnetwork/Conv/Relu]"
    assert rows[0].first_ms == pytest.approx(538.139) and rows[0].avg_ms == pytest.approx(536.830)
    assert rows[0].percent == pytest.approx(56.668)
    assert rows[-1].avg_ms == pytest.approx(36.718)
    assert r.truncated


def test_legacy_average_line_and_names_with_commas_in_spaced_table() -> None:
    r = parse_benchmark_model_output(load("tf_issue_25904_average_timings_legacy.txt"))
    assert r.format == "legacy-average"
    assert r.avg_ms == pytest.approx(116.375)  # "no stats: 116375"
    assert r.warmup_avg_ms == pytest.approx(4385.33)  # "Warmup: 4.38533e+06"
    assert r.init_ms == pytest.approx(31.021)
    assert r.count == 50 and r.min_ms == pytest.approx(87.415) and r.max_ms == pytest.approx(197.387)

    d = parse_benchmark_model_output(load("deepspeech_issue_2270_names_with_commas.txt"))
    assert d.avg_ms == pytest.approx(23.3135) and d.init_ms == pytest.approx(21528.106)
    rows = d.ops("Run Order")
    assert [o.node_type for o in rows] == ["DELEGATE", "SPLIT", "ADD"]  # LOGISTIC's row is cut
    assert rows[1].name.startswith("[cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell/split, ")
    assert rows[1].name.endswith("split:3]")
    assert rows[0].avg_ms == pytest.approx(21.287) and rows[0].percent == pytest.approx(91.329)


def test_android_logcat_prefix() -> None:
    r = parse_benchmark_model_output(load("tf_issue_56301_logcat.txt"))
    assert r.format == "logcat"
    assert r.init_ms == pytest.approx(126.059)
    assert r.first_ms == pytest.approx(32.942)
    assert r.avg_ms == pytest.approx(12.1676)
    assert r.count == 75 and r.warmup_count == 40
    assert r.std_ms == pytest.approx(0.325)


def test_litert_compiled_model_benchmark_results() -> None:
    r = parse_benchmark_model_output(load("mobile_app_open_issue_1134_litert_compiled_model.txt"))
    assert r.format == "litert-compiled-model"
    assert r.init_ms == pytest.approx(23744.73)
    assert r.first_ms == pytest.approx(7441.04) and r.warmup_avg_ms == pytest.approx(7441.04)
    assert r.avg_ms == pytest.approx(7430.20) and r.count == 10
    assert r.min_ms == pytest.approx(7416.40) and r.max_ms == pytest.approx(7448.86)
    assert r.std_ms == pytest.approx(9.92)


def test_op_rows_without_timing_lines() -> None:
    # tensorflow/tensorflow#57758: a table without [start]; names with commas, NNAPI and XNNPACK partitions.
    text = load("tf_issue_57758_delegate_partitions.txt")
    with pytest.raises(ValueError, match="no inference average"):
        parse_benchmark_model_output(text)
    rows = parse_op_profiling(text)
    assert [o.node_type for o in rows] == ["TfLiteNnapiDelegate", "TfLiteXNNPackDelegate", "TfLiteNnapiDelegate"]
    assert rows[1].name == "[tfl.quantize4]:222" and rows[1].avg_ms == pytest.approx(5.078)
    assert rows[2].name.endswith("model/tf.math.add_56/Add/y1]:218") and ", model/tf.nn.relu_24/Relu;" in rows[2].name
    assert rows[2].first_ms == pytest.approx(10.697) and rows[2].percent == pytest.approx(15.675)


# CSV mode: no public sample with a traceable source was found, so these rows are written to the
# format of tensorflow/core/util/stats_calculator.cc (HeaderString / ColumnString with
# format_as_csv): "type, start, first, avg_ms, pct%, cdf%, mem KB, times called, name".
CSV = """Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
node type, start, first, avg_ms, %, cdf%, mem KB, times called, name
Convolution (NHWC, F32) IGEMM, 0, 0.16, 0.1999, 11.4405%, 11.4405%, 0, 1, Delegate/Convolution (NHWC, F32) IGEMM:0
HardSwish (NC), 0.2, 0.016, 0.0656, 3.75436%, 15.1949%, 0, 1, Delegate/HardSwish (NC):1

============================== Summary by node type ==============================
node type, count, avg_ms, avg %, cdf %, mem KB, times called
Convolution (NHWC, F32) IGEMM, 3, 0.6, 40.5%, 40.5%, 0, 3
HardSwish (NC), 1, 0.065, 4.4%, 44.9%, 0, 1

"""


def test_csv_rows_with_commas_in_type_and_name() -> None:
    rows = parse_op_profiling(CSV)
    run = [o for o in rows if o.section == "Run Order"]
    assert run[0].node_type == "Convolution (NHWC, F32) IGEMM"
    assert run[0].name == "Delegate/Convolution (NHWC, F32) IGEMM:0"
    assert run[0].avg_ms == pytest.approx(0.1999) and run[0].percent == pytest.approx(11.4405)
    assert run[1].first_ms == pytest.approx(0.016)
    summary = [o for o in rows if o.section == "Summary by node type"]
    assert [(o.node_type, o.count, o.avg_ms) for o in summary] == [
        ("Convolution (NHWC, F32) IGEMM", 3, pytest.approx(0.6)), ("HardSwish (NC)", 1, pytest.approx(0.065))]
    # Builds without the [start] column write one field fewer.
    row = parse_op_table_row("Sum (ND) Reduce, 0.016, 0.0148, 0.847021%, 18.3769%, 0, 1, Delegate/Sum (ND) Reduce:3",
                             "Run Order", "run", [])
    assert row is not None and row.node_type == "Sum (ND) Reduce" and row.avg_ms == pytest.approx(0.0148)


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("", "'Inference timings in us' line"),
        ("\x00\x17 garbage 12.5 bananas\ncount=abc\n", "'Inference timings in us' line"),
        # crash after start-up
        ("INFO: STARTING!\nINFO: Graph: [m.tflite]\nINFO: Loaded model m.tflite\nSegmentation fault (core dumped)\n",
         "'Inference timings in us' line"),
        # load failure
        ("STARTING!\nERROR: Could not open 'missing.tflite'.\nFailed to mmap model missing.tflite\n",
         "'Inference timings in us' line"),
        # truncated inside the summary line
        ("count=1 curr=980043\n\nInference timings in us: Init: 855, First inference: 49",
         "'Inference timings in us' line"),
        ("========== BENCHMARK RESULTS ==========\nINFO: [benchmark_litert_model.h:94] Model initialization: 2.1 ms\n",
         "'Inference (avg)' line"),
    ],
)
def test_garbage_truncated_empty_and_crash_outputs_raise_one_line(text: str, missing: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_benchmark_model_output(text)
    message = str(exc.value)
    assert "no inference average" in message and missing in message
    assert "\n" not in message


def test_non_text_and_tableless_inputs() -> None:
    with pytest.raises(ValueError, match="must be text"):
        parse_benchmark_model_output(b"Inference timings in us: ...")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no op-profiling table rows"):
        parse_op_profiling(load("ti_sdk_am62x_xnnpack.txt"))


def test_a_graph_without_nodes_profiles_to_no_rows_but_a_cut_table_still_raises() -> None:
    # The `empty` entry converts to a graph whose output is its input: the tool prints the headers,
    # no rows, and its own "0 nodes observed" footer.
    empty = ("INFO: Operator-wise Profiling Info for Regular Benchmark Runs:\n"
             "INFO: ============================== Run Order ==============================\n"
             "INFO: \t[node type]\t[start]\t[first]\t[avg ms]\t[%]\t[cdf%]\t[mem KB]\t[times called]\t[Name]\n"
             "INFO: \nINFO: Timings (microseconds): count=4 curr=2\nINFO: 0 nodes observed\n")
    assert parse_op_profiling(empty) == []
    with pytest.raises(ValueError, match="no op-profiling table rows"):
        parse_op_profiling(empty.replace("0 nodes observed", "10 nodes observed"))


def test_newer_statistics_lines_with_percentiles() -> None:
    r = parse_benchmark_model_output(load("android_apk_logcat_percentiles.txt"))
    assert r.format == "logcat"
    assert r.avg_ms == pytest.approx(145.528) and r.init_ms == pytest.approx(92.318)
    assert r.count == 25 and r.warmup_count == 3
    assert (r.p5_ms, r.median_ms, r.p95_ms) == (pytest.approx(140.545), pytest.approx(141.253), pytest.approx(187.533))
    assert r.curr_ms == pytest.approx(140.990) and r.min_ms == pytest.approx(140.071)
    assert not r.truncated and not r.all_same


# -- the single runs latbench keeps ---------------------------------------------------------------

# The lines below follow Stat::OutputToStream (tensorflow/core/util/stats_calculator.h): a phase
# whose runs all took the same time prints `count=N curr=X`, with "(all same)" glued on for N > 1.
SUMMARY = "INFO: Inference timings in us: Init: 5000, First inference: 900, Warmup (avg): 800, Inference (avg): {avg}\n"


def two_runs(stat: str, avg: str) -> BenchmarkModelReport:
    return parse_benchmark_model_output(f"INFO: count=3 first=900 curr=800 min=780 max=900 avg=826.667 std=52\n\n"
                                        f"INFO: {stat}\n\n" + SUMMARY.format(avg=avg))


def test_run_samples_of_one_and_two_run_invocations() -> None:
    one = parse_benchmark_model_output("INFO: count=5 first=900 curr=800 min=780 max=900 avg=836 std=40\n\n"
                                       "INFO: count=1 curr=612\n\n" + SUMMARY.format(avg="612"))
    assert one.count == 1 and one.warmup_count == 5 and run_samples(one, 1) == [pytest.approx(0.612)]
    two = two_runs("count=2 first=655 curr=601 min=601 max=655 avg=628 std=27", "628")
    assert run_samples(two, 2) == [pytest.approx(0.601), pytest.approx(0.655)]
    same = two_runs("count=2 curr=640(all same)", "640")
    assert same.all_same and same.count == 2 and run_samples(same, 2) == [pytest.approx(0.640)] * 2
    litert = parse_benchmark_model_output(load("mobile_app_open_issue_1134_litert_compiled_model.txt"))
    with pytest.raises(ValueError, match="timed 10 runs, 2 asked for"):
        run_samples(litert, 2)
    with pytest.raises(ValueError, match="1- or 2-run"):
        run_samples(two, 3)
    # An output whose timed-phase line is missing cannot give two single runs.
    no_stats = parse_benchmark_model_output(SUMMARY.format(avg="628"))
    with pytest.raises(ValueError, match="no min/max"):
        run_samples(no_stats, 2)


def test_benchmark_args_are_explicit_about_runs_threads_and_xnnpack() -> None:
    args = benchmark_args("/data/local/tmp/benchmark_model", "/data/local/tmp/latbench/h.tflite", threads=2,
                          xnnpack=True, runs=2, warmup_runs=10, warmup_s=0.05, max_s=60)
    assert args == ["/data/local/tmp/benchmark_model", "--graph=/data/local/tmp/latbench/h.tflite", "--num_threads=2",
                    "--use_xnnpack=true", "--num_runs=2", "--min_secs=0", "--max_secs=60", "--warmup_runs=10",
                    "--warmup_min_secs=0.05"]
    prof = benchmark_args("bm", "m.tflite", threads=1, xnnpack=False, runs=20, warmup_runs=1, warmup_s=0, max_s=60,
                          profile_file="/tmp/p.csv")
    assert "--use_xnnpack=false" in prof and prof[-3:] == [
        "--enable_op_profiling=true", "--op_profiling_output_mode=csv", "--op_profiling_output_file=/tmp/p.csv"]


def test_op_times_are_the_regular_runs_run_order() -> None:
    ops = op_times(parse_op_profiling(load("arm_tc2_op_profiling_delegate_rows.txt")))
    assert len(ops) == 115 and ops[0].op_type == "Convolution (NHWC, QU8) IGEMM"
    assert ops[0].node_name == "Delegate/Convolution (NHWC, QU8) IGEMM:0" and ops[0].median_ms == pytest.approx(0.278)
    assert "AllocateTensors" not in {o.op_type for o in ops}  # the init phase is not an op of a run
    with pytest.raises(ValueError, match="no Run Order rows"):
        op_times(parse_op_profiling(load("tf_issue_27948_run_order_with_start.txt").replace("Run Order", "Other")))
