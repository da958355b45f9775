"""What LiteRT/TFLite `benchmark_model` takes and prints: its command line, a defensive parser of
its output (and of its op-profiling file), and the samples and per-op rows latbench keeps.

Output formats seen in real runs (tests/fixtures/benchmark_model/, sources in SOURCES.md):

- The summary, in microseconds (large values in e-notation):
      Inference timings in us: Init: 16599, First inference: 8539, Warmup (avg): 7181.07, Inference (avg): 6479.5
  and the oldest wording (TF 1.13):
      Average inference timings in us: Warmup: 4.38533e+06, Init: 31021, no stats: 116375
- One statistics line per phase (warm-up, then the timed runs), microseconds, from
  tensorflow/core/util/stats_calculator.h `Stat::OutputToStream`:
      count=50 first=1249964 curr=1240143 min=1238588 max=1252566 avg=1.24027e+06 std=2565
  newer builds append `p5=... median=... p95=...`; when every run took the same time it is
  `count=N curr=X` (with `(all same)` glued on for N > 1).
- A log prefix on every line or none: `INFO: ` (TFLite >= 2.14), an Android logcat prefix
  `05-30 15:16:46.366  3380  3380 I tflite  : `, `INFO: [file.h:92] ` (LiteRT), documentation indent.
- `--enable_op_profiling=true` tables (same header file): sections `==== Run Order ====`,
  `Top by Computation Time`, `Summary by node type`, tab-separated fixed-width columns
  `[node type] [start] [first] [avg ms] [%] [cdf%] [mem KB] [times called] [Name]` (builds since
  ~2.13 drop `[start]`), under "Profiling Info for Benchmark Initialization:" and then
  "Operator-wise Profiling Info for Regular Benchmark Runs:". XNNPACK's per-operator rows
  (TF >= 2.9.1) hold commas and spaces in type and name: `Convolution (NHWC, F32) IGEMM`,
  `Delegate/Convolution (NHWC, F32) IGEMM:0`.
- `--op_profiling_output_mode=csv --op_profiling_output_file=FILE`: the same sections with rows
  `node type, start, first, avg_ms, %, cdf%, mem KB, times called, name` (stats_calculator.cc with
  format_as_csv); since type and name contain ", " themselves, the numeric run anchors the split.
- LiteRT's CompiledModel tool prints a `========== BENCHMARK RESULTS ==========` block with
  `Model initialization`, `Warmup (first)`, `Inference (avg|min|max|std)` in milliseconds.

Per-run times: benchmark_model keeps each run only inside its Stat accumulator and prints the
aggregate line above, so `run_samples` reads single runs out of a 1- or 2-run invocation (see
device_runners/android.py for why latbench invokes it that way). All times returned are
milliseconds. Parsing raises a one-line ValueError naming what is missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from latbench.measuring.measurement import OpTime

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# Log prefixes in front of a line: logcat, "INFO: ", "I tflite  : ", "INFO: [file.h:92] ".
_LOGCAT = r"\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+[\w.-]+\s*:\s?"
_PREFIX = re.compile(rf"^\s*(?:{_LOGCAT})?(?:(?:INFO|WARNING|WARN|ERROR|VERBOSE):\s)?(?:\[[\w./-]+:\d+\]\s)?")
_SUMMARY = re.compile(
    rf"Inference timings in us:\s*Init:\s*(?P<init>{_NUM}),\s*First inference:\s*(?P<first>{_NUM}),\s*"
    rf"Warmup \(avg\):\s*(?P<warmup>{_NUM}),\s*Inference \(avg\):\s*(?P<avg>{_NUM})"
)
_SUMMARY_OLD = re.compile(
    rf"Average inference timings in us:\s*Warmup:\s*(?P<warmup>{_NUM}),\s*Init:\s*(?P<init>{_NUM}),\s*"
    rf"(?:no stats|Inference):\s*(?P<avg>{_NUM})"
)
_ALL_SAME = "(all same)"
_STAT_LINE = re.compile(r"^count=\d+(?:\s+\w+=\S+)*\s*$")
_STAT_FIELD = re.compile(rf"(\w+)=({_NUM})(?=\s|$)")
_LITERT = {
    "init_ms": re.compile(rf"^Model initialization:\s*({_NUM})\s*ms"),
    "first_ms": re.compile(rf"^Warmup \(first\):\s*({_NUM})\s*ms"),
    "warmup_avg_ms": re.compile(rf"^Warmup \(avg\):\s*({_NUM})\s*ms"),
    "avg_ms": re.compile(rf"^Inference \(avg\):\s*({_NUM})\s*ms(?:\s*\((\d+) runs\))?"),
    "min_ms": re.compile(rf"^Inference \(min\):\s*({_NUM})\s*ms"),
    "max_ms": re.compile(rf"^Inference \(max\):\s*({_NUM})\s*ms"),
    "median_ms": re.compile(rf"^Inference \(median\):\s*({_NUM})\s*ms"),
    "std_ms": re.compile(rf"^Inference \(std\):\s*({_NUM})"),
}
_SECTION = re.compile(r"^=+\s*(?P<title>[A-Za-z][A-Za-z ]*?)\s*=+\s*$")
_CSV_ROW = re.compile(
    rf"^(?P<type>.+?),\s*(?:(?P<start>{_NUM}),\s*)?(?P<first>{_NUM}),\s*(?P<avg>{_NUM}),\s*(?P<pct>{_NUM})%,\s*"
    rf"(?P<cdf>{_NUM})%,\s*(?P<mem>{_NUM}),\s*(?P<times>\d+),\s*(?P<name>.*)$"
)
_CSV_TYPE_ROW = re.compile(
    rf"^(?P<type>.+?),\s*(?P<count>\d+),\s*(?P<avg>{_NUM}),\s*(?P<pct>{_NUM})%,\s*(?P<cdf>{_NUM})%,\s*"
    rf"(?P<mem>{_NUM}),\s*(?P<times>\d+)\s*$"
)
_HEADER_COLUMNS = {
    "[node type]": "type", "[start]": "start", "[first]": "first", "[avg ms]": "avg", "[%]": "pct",
    "[avg %]": "pct", "[cdf%]": "cdf", "[cdf %]": "cdf", "[mem kb]": "mem", "[times called]": "times",
    "[name]": "name", "[count]": "count",
}  # fmt: skip
_TABLE_END = ("Timings (microseconds)", "Memory (bytes)", "Number of nodes executed")
RUN_ORDER = "Run Order"


@dataclass(frozen=True)
class OpRow:
    """One row of an op-profiling table (times in ms). `name` is empty in "Summary by node type"."""

    section: str  # "Run Order", "Top by Computation Time", "Summary by node type", ...
    phase: str  # "init" (Benchmark Initialization) or "run" (Regular Benchmark Runs)
    node_type: str
    name: str
    avg_ms: float
    percent: float | None
    first_ms: float | None = None
    count: int | None = None  # nodes of this type ("Summary by node type" only)
    times_called: int | None = None


@dataclass
class BenchmarkModelReport:
    """What one benchmark_model run printed; times in milliseconds, None where not printed."""

    format: str  # "classic" | "info-prefixed" | "logcat" | "legacy-average" | "litert-compiled-model"
    init_ms: float | None = None
    first_ms: float | None = None  # the first warm-up run
    warmup_avg_ms: float | None = None
    avg_ms: float | None = None  # of the timed runs, as every other figure below
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    curr_ms: float | None = None  # the last timed run
    p5_ms: float | None = None
    median_ms: float | None = None
    p95_ms: float | None = None
    count: int | None = None
    all_same: bool = False  # every timed run took the same time (`count=N curr=X(all same)`)
    warmup_count: int | None = None
    op_rows: list[OpRow] = field(default_factory=list)
    truncated: bool = False  # the text ended inside a table or mid-line

    def ops(self, section: str = RUN_ORDER, phase: str = "run") -> list[OpRow]:
        return [r for r in self.op_rows if r.section == section and r.phase == phase]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("op_rows")
        return d


# -- the command line -----------------------------------------------------------------------------


def benchmark_args(binary: str, model: str, *, threads: int, xnnpack: bool, runs: int, warmup_runs: int,
                   warmup_s: float, max_s: float, profile_file: str | None = None) -> list[str]:
    """benchmark_model's argument list: exactly `runs` timed runs (`--min_secs=0`), the warm-up by
    count and time, threads and XNNPACK explicit; with `profile_file`, op profiling written there
    as CSV. Flags are those of tensorflow/lite/tools/benchmark (benchmark_model.cc and
    benchmark_tflite_model.cc), present in every build since TF 2.4."""
    args = [binary, f"--graph={model}", f"--num_threads={threads}", f"--use_xnnpack={str(xnnpack).lower()}",
            f"--num_runs={runs}", "--min_secs=0", f"--max_secs={max_s:g}", f"--warmup_runs={warmup_runs}",
            f"--warmup_min_secs={warmup_s:g}"]
    if profile_file is not None:
        args += ["--enable_op_profiling=true", "--op_profiling_output_mode=csv",
                 f"--op_profiling_output_file={profile_file}"]
    return args


# -- parsing --------------------------------------------------------------------------------------


def _num(s: str | None) -> float | None:
    if s is None:
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _us_to_ms(s: str | float | None) -> float | None:
    v = _num(s) if isinstance(s, str) or s is None else float(s)
    return None if v is None else v / 1000.0


def _detect_format(lines: list[str]) -> str:
    if any(re.match(rf"^\s*{_LOGCAT}", ln) for ln in lines):
        return "logcat"
    if any("BENCHMARK RESULTS" in ln or "benchmark_litert_model" in ln for ln in lines):
        return "litert-compiled-model"
    if any(re.match(r"^\s*INFO:\s", ln) and ("Inference timings" in ln or "STARTING" in ln or "count=" in ln)
           for ln in lines):
        return "info-prefixed"
    if any("Average inference timings in us" in ln for ln in lines):
        return "legacy-average"
    return "classic"


def _stat_fields(line: str) -> dict[str, float] | None:
    all_same = line.rstrip().endswith(_ALL_SAME)
    body = line.rstrip().removesuffix(_ALL_SAME)
    if not _STAT_LINE.match(body):
        return None
    out: dict[str, float] = {"all_same": float(all_same)}
    for key, val in _STAT_FIELD.findall(body):
        v = _num(val)
        if v is not None:
            out[key] = v
    return out if "count" in out else None


def parse_op_table_row(line: str, section: str, phase: str, columns: list[str]) -> OpRow | None:
    """One table row: tab-separated (the text tables), comma-separated (CSV mode), or with the
    tabs turned into runs of spaces (copied from a terminal). None if it does not fit."""
    body = line.strip()
    if not body:
        return None
    if "\t" in body:
        return _row_from_cells([c.strip() for c in body.split("\t")], section, phase, columns)
    if _CSV_ROW.match(body) or _CSV_TYPE_ROW.match(body):
        return _row_from_csv(body, section, phase)
    return _row_from_cells([c for c in re.split(r"\s{2,}", body) if c], section, phase, columns)


def _row_from_cells(cells: list[str], section: str, phase: str, columns: list[str]) -> OpRow | None:
    if not columns or len(cells) < len(columns):
        return None
    if len(cells) > len(columns):
        if columns[-1] != "name":
            return None
        cells = cells[: len(columns) - 1] + [" ".join(cells[len(columns) - 1:])]
    values = dict(zip(columns, cells))
    avg = _num(values.get("avg"))
    if avg is None:
        return None
    return OpRow(
        section=section, phase=phase, node_type=values.get("type", ""), name=values.get("name", ""), avg_ms=avg,
        percent=_num(values.get("pct", "").rstrip("%")), first_ms=_num(values.get("first")),
        count=int(values["count"]) if values.get("count", "").isdigit() else None,
        times_called=int(values["times"]) if values.get("times", "").isdigit() else None,
    )  # fmt: skip


def _row_from_csv(body: str, section: str, phase: str) -> OpRow | None:
    m = _CSV_TYPE_ROW.match(body) if section == "Summary by node type" else _CSV_ROW.match(body)
    if not m:
        return None
    g = m.groupdict()
    return OpRow(
        section=section, phase=phase, node_type=g["type"].strip(), name=(g.get("name") or "").strip(),
        avg_ms=float(g["avg"]), percent=_num(g["pct"]), first_ms=_num(g.get("first")),
        count=int(g["count"]) if g.get("count") else None, times_called=int(g["times"]),
    )  # fmt: skip


def _header_columns(line: str) -> list[str] | None:
    body = line.strip()
    if "[node type]" in body.lower():
        cols = [_HEADER_COLUMNS.get(tok.strip().lower()) for tok in re.findall(r"\[[^\]]*\]", body)]
        return [c for c in cols if c] or None
    if body.lower().startswith("node type,"):
        return ["csv"]  # CSV rows are split by their numeric run, not by the header
    return None


def parse_benchmark_model_output(text: str) -> BenchmarkModelReport:
    """Parse benchmark_model / benchmark_litert_model stdout (or a logcat capture of it).

    ValueError (one line, saying what is missing and quoting the first line) when there is no
    inference average: empty output, a crash, a failed model load, or a run cut before the end.
    """
    rep = _scan(text)
    if rep.avg_ms is None or rep.avg_ms < 0:
        snippet = next((ln.strip() for ln in text.splitlines() if ln.strip()), "<empty>")[:120]
        missing = "'Inference (avg)' line" if rep.format == "litert-compiled-model" else "'Inference timings in us' line"
        raise ValueError(f"no inference average in benchmark_model output (missing the {missing}; "
                         f"first line: {snippet!r})")
    return rep


def parse_op_profiling(text: str) -> list[OpRow]:
    """The op-profiling rows of a benchmark_model output, or of the file `--op_profiling_output_file`
    names (tables only). ValueError when the text holds no profiling table row, unless the tool's own
    footer says the graph had no nodes (a model whose output is its input)."""
    rows = _scan(text).op_rows
    if not rows and not any(_PREFIX.sub("", ln, count=1).strip() == "0 nodes observed" for ln in text.splitlines()):
        snippet = next((ln.strip() for ln in text.splitlines() if ln.strip()), "<empty>")[:120]
        raise ValueError(f"no op-profiling table rows in the text (first line: {snippet!r})")
    return rows


def _scan(text: str) -> BenchmarkModelReport:
    if not isinstance(text, str):
        raise ValueError(f"benchmark_model output must be text, got {type(text).__name__}")
    raw_lines = text.splitlines()
    rep = BenchmarkModelReport(format=_detect_format(raw_lines))
    stat_lines: list[dict[str, float]] = []
    phase, section, columns, in_table = "run", "", [], False

    for raw in raw_lines:
        line = _PREFIX.sub("", raw, count=1).rstrip("\r\n")
        body = line.strip()
        if "Profiling Info for Benchmark Initialization" in body:
            phase, in_table = "init", False
            continue
        if "Profiling Info for Regular Benchmark Runs" in body:
            phase, in_table = "run", False
            continue
        m = _SECTION.match(body)
        if m and "BENCHMARK RESULTS" not in body:
            section, columns, in_table = m.group("title"), [], True
            continue
        if in_table:
            cols = _header_columns(line)
            if cols:
                columns = cols
                continue
            if not body or body.startswith(_TABLE_END):
                in_table = False
            else:
                row = parse_op_table_row(line, section, phase, [] if columns == ["csv"] else columns)
                if row is not None:
                    rep.op_rows.append(row)
                elif columns:
                    rep.truncated = True  # a row that does not fit the header: cut or mangled
                continue
        _scan_timing_line(rep, body, stat_lines)

    _apply_stat_lines(rep, stat_lines)
    if text and not text.endswith("\n"):
        rep.truncated = True
    return rep


def _scan_timing_line(rep: BenchmarkModelReport, body: str, stat_lines: list[dict[str, float]]) -> None:
    if (m := _SUMMARY.search(body)) is not None:
        rep.init_ms, rep.first_ms = _us_to_ms(m["init"]), _us_to_ms(m["first"])
        rep.warmup_avg_ms, rep.avg_ms = _us_to_ms(m["warmup"]), _us_to_ms(m["avg"])
    elif (m := _SUMMARY_OLD.search(body)) is not None:
        rep.init_ms, rep.warmup_avg_ms, rep.avg_ms = _us_to_ms(m["init"]), _us_to_ms(m["warmup"]), _us_to_ms(m["avg"])
    elif (fields := _stat_fields(body)) is not None:
        stat_lines.append(fields)
    elif rep.format == "litert-compiled-model":
        for key, rx in _LITERT.items():
            if (m := rx.match(body)) is not None:
                setattr(rep, key, _num(m.group(1)))
                if key == "avg_ms" and m.group(2):
                    rep.count = int(m.group(2))
                break


def _apply_stat_lines(rep: BenchmarkModelReport, stats: list[dict[str, float]]) -> None:
    """The last `count=` line is the timed runs, the one before it the warm-up (microseconds)."""
    if not stats:
        return
    timed = stats[-1]
    if len(stats) >= 2:
        rep.warmup_count = int(stats[-2]["count"])
    else:
        # A single stat line is the timed phase only if it agrees with a summary; alone (a run cut
        # after its warm-up) it may be the warm-up's.
        value = timed.get("avg", timed.get("curr"))
        if rep.avg_ms is None or value is None or not math.isclose(value / 1000.0, rep.avg_ms, rel_tol=1e-3):
            return
    rep.count = int(timed["count"])
    rep.all_same = bool(timed.get("all_same"))
    for key in ("std", "min", "max", "curr", "p5", "median", "p95"):
        if key in timed:
            setattr(rep, f"{key}_ms", _us_to_ms(timed[key]))
    if rep.avg_ms is None:
        rep.avg_ms = _us_to_ms(timed.get("avg", timed.get("curr")))


# -- what latbench keeps --------------------------------------------------------------------------


def run_samples(rep: BenchmarkModelReport, runs: int) -> list[float]:
    """The single timed runs (ms) an invocation of `runs` (1 or 2) timed runs printed exactly.

    One run: the average of one run is that run. Two runs: the stat line's min and max are the two
    runs (their order does not matter for samples); `count=2 curr=X(all same)` is X twice; the
    CompiledModel tool's `Inference (min)` / `(max)` likewise. ValueError if they are not there.
    """
    if runs not in (1, 2):
        raise ValueError(f"single runs can be read only from 1- or 2-run invocations, not {runs}")
    if rep.count is not None and rep.count != runs:
        raise ValueError(f"benchmark_model timed {rep.count} runs, {runs} asked for")
    if runs == 1 and rep.avg_ms is not None:
        return [rep.avg_ms]
    if rep.all_same and rep.curr_ms is not None:
        return [rep.curr_ms] * runs
    if rep.min_ms is not None and rep.max_ms is not None:
        return [rep.min_ms, rep.max_ms]
    raise ValueError("no min/max of the timed runs in benchmark_model output")


def op_times(rows: Sequence[OpRow]) -> list[OpTime]:
    """Per-op rows of the regular runs' Run Order table. benchmark_model reports each op's mean over
    the profiled runs (there is no per-op median), which is what OpTime.median_ms then holds. No rows at
    all (a graph without nodes) is no ops; rows of other tables only is a table cut or renamed."""
    out = [OpTime(r.node_type, r.name, r.avg_ms) for r in rows if r.section == RUN_ORDER and r.phase == "run"]
    if not out and rows:
        raise ValueError("no Run Order rows of the regular benchmark runs")
    return out
