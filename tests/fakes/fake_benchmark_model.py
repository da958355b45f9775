"""A stand-in for LiteRT's benchmark_model that really runs the .tflite with ai-edge-litert on this host.

It takes the real tool's `--flag=value` arguments (tensorflow/lite/tools/benchmark/
benchmark_model.cc and benchmark_tflite_model.cc: --graph, --num_threads, --use_xnnpack,
--num_runs, --min_secs, --max_secs, --warmup_runs, --warmup_min_secs, --enable_op_profiling,
--op_profiling_output_mode, --op_profiling_output_file); an unknown flag fails like the real
tool ("Unconsumed cmdline flags"). It loads the model in the LiteRT Interpreter with XNNPACK
(or the built-in kernels with --use_xnnpack=false) and --num_threads threads, runs the warm-up
and the timed runs with the real tool's run-count rule (at least N runs and at least S seconds,
at most --max_secs) and prints what the real tool prints, in one of the formats found in
tests/fixtures/benchmark_model/:

* "classic": no prefix, `count=... first=... curr=... min=... max=... avg=... std=...`
* "info": every line prefixed with `INFO: ` (TF 2.10+ builds on Linux and Android shells)
* "newer": `INFO: ` prefix and the statistics lines end in `p5=... median=... p95=...`

A phase whose runs all took the same time prints `count=N curr=X`, with `(all same)` for N > 1,
as tensorflow/core/util/stats_calculator.h does. Times are integer microseconds.

Op profiling (--enable_op_profiling=true) prints, or with --op_profiling_output_mode=csv writes to
the output file, the Run Order and Summary tables. The Python interpreter has no profiler, so the
rows are the interpreter's executed nodes -- one `TfLiteXNNPackDelegate` row per XNNPACK
partition plus the nodes left on built-in kernels, as builds before XNNPACK's own per-op
profiling showed them -- with the measured average inference time shared out evenly among them.

It misbehaves on demand (`BenchmarkModelBehaviour`): exit status, garbage, truncated output, hang.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The first bytes of a file that the fake device executes as benchmark_model.
MAGIC = b"#!fake-benchmark_model\n"

#: flag -> default, as the real tool declares them (the subset it is given here).
FLAGS = {
    "graph": "", "num_threads": "-1", "use_xnnpack": "true", "num_runs": "50", "min_secs": "1",
    "max_secs": "150", "warmup_runs": "1", "warmup_min_secs": "0.5", "enable_op_profiling": "false",
    "op_profiling_output_mode": "stdout", "op_profiling_output_file": "", "verbose": "false",
}
NOTE = ("Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the "
        "actual memory footprint of the model at runtime. Take the information at your discretion.")


@dataclass
class BenchmarkModelBehaviour:
    variant: str = "classic"  # "classic", "info", "newer"
    exit_code: int | None = None  # crash with this status after start-up
    garbage: bool = False  # print something that is not a benchmark log, exit 0
    truncated: bool = False  # stop printing after the warm-up statistics, exit 0
    hang_s: float | None = None  # sleep this long before answering


def parse_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """--name=value flags (the real tool's Flags::Parse); returns (values, unconsumed arguments)."""
    values = dict(FLAGS)
    unconsumed = []
    for arg in argv:
        name, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in FLAGS:
            unconsumed.append(arg)
        else:
            values[name] = value if eq else "true"
    return values, unconsumed


def _bool(v: str) -> bool:
    return v.lower() in ("true", "1")


def stat_line(us: list[int], newer: bool) -> str:
    """One Stat<int64_t> as BenchmarkModel logs it."""
    n = len(us)
    if n == 0:
        return "count=0"
    if min(us) == max(us):
        return f"count={n} curr={us[-1]}" + ("(all same)" if n > 1 else "")
    avg = sum(us) / n
    std = int(round(math.sqrt(sum((u - avg) ** 2 for u in us) / n)))
    line = f"count={n} first={us[0]} curr={us[-1]} min={min(us)} max={max(us)} avg={avg:g} std={std}"
    if newer:
        s = sorted(us)
        pick = lambda q: s[min(n - 1, int(q * n))]  # noqa: E731
        line += f" p5={pick(0.05)} median={pick(0.5)} p95={pick(0.95)}"
    return line


def _phase(invoke: Callable[[], None], min_runs: int, min_secs: float, max_secs: float,
           stop: threading.Event) -> list[int]:
    """Runs until at least `min_runs` and `min_secs`, never past `max_secs` (BenchmarkModel::Run)."""
    out: list[int] = []
    start = time.perf_counter()
    while not stop.is_set():
        elapsed = time.perf_counter() - start
        if (len(out) >= min_runs and elapsed >= min_secs) or (elapsed >= max_secs and out):
            break
        t0 = time.perf_counter_ns()
        invoke()
        out.append(max(1, (time.perf_counter_ns() - t0) // 1000))
    return out


def run(
    argv: list[str],
    *,
    resolve: Callable[[str], Path | None],
    behaviour: BenchmarkModelBehaviour,
    stop: threading.Event,
) -> tuple[int, str, str]:
    """Execute like the binary would. Returns (exit status, stdout, stderr)."""
    flags, unconsumed = parse_flags(argv[1:])
    prefix = "" if behaviour.variant == "classic" else "INFO: "
    lines: list[str] = []

    def log(text: str) -> None:
        lines.append(prefix + text if text else "")

    def output() -> str:
        return "".join(ln + "\n" for ln in lines)

    log("STARTING!")
    if unconsumed:
        log(f"Unconsumed cmdline flags: {' '.join(unconsumed)}")
        return 1, output(), ""
    if behaviour.hang_s:
        stop.wait(behaviour.hang_s)
    if stop.is_set():  # the connection went away: the process is killed
        return 137, output(), ""
    if behaviour.garbage:
        return 0, "\x00\x17 garbage 12.5 bananas\ncount=abc\n", ""
    try:
        threads, num_runs, warmup_runs = int(flags["num_threads"]), int(flags["num_runs"]), int(flags["warmup_runs"])
        min_secs, max_secs = float(flags["min_secs"]), float(flags["max_secs"])
        warmup_secs = float(flags["warmup_min_secs"])
    except ValueError as e:
        log(f"Failed to parse the flags: {e}")
        return 1, output(), ""
    xnnpack = _bool(flags["use_xnnpack"])
    graph = flags["graph"]
    log("Log parameter values verbosely: [0]")
    log(f"Min num runs: [{num_runs}]")
    log(f"Min runs duration (seconds): [{min_secs:g}]")
    log(f"Num threads: [{threads}]")
    log(f"Min warmup runs: [{warmup_runs}]")
    log(f"Graph: [{graph}]")
    profiling = _bool(flags["enable_op_profiling"])
    if profiling:
        log("Enable op profiling: [1]")
    log(f"#threads used for CPU inference: [{threads}]")
    log(f"Use xnnpack: [{int(xnnpack)}]")
    model = resolve(graph) if graph else None
    if model is None or not model.is_file():
        log(f"Failed to mmap model {graph}")
        log("Benchmarking failed.")
        return 1, output(), ""

    from ai_edge_litert import interpreter as litert

    t0 = time.perf_counter_ns()
    resolver = litert.OpResolverType.AUTO if xnnpack else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = litert.Interpreter(model_path=str(model), num_threads=threads if threads > 0 else None,
                                    experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    except Exception as e:
        log(f"Loaded model {graph}")
        log(f"Failed to allocate tensors! {str(e).splitlines()[0] if str(e) else ''}")
        log("Benchmarking failed.")
        return 1, output(), ""
    init_us = (time.perf_counter_ns() - t0) // 1000
    log(f"Loaded model {graph}")
    nodes = interp._get_ops_details()
    partitions = [n for n in nodes if n["op_name"] == "DELEGATE"]
    if xnnpack:
        log("Created TensorFlow Lite XNNPACK delegate for CPU.")
        how = "completely" if len(partitions) == 1 and not _left_on_builtin(nodes) else "partially"
        detail = "" if how == "completely" else f" w/ {len(partitions)} delegate kernels"
        log(f"Explicitly applied XNNPACK delegate, and the model graph will be {how} executed by the delegate{detail}.")
    log(f"The input model file size (MB): {model.stat().st_size / 2**20:g}")
    log(f"Initialized session in {init_us / 1000:g}ms.")

    rng = np.random.default_rng()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(d["dtype"]))
    newer = behaviour.variant == "newer"
    log(f"Running benchmark for at least {warmup_runs} iterations and at least {warmup_secs:g} seconds but "
        f"terminate if exceeding {max_secs:g} seconds.")
    warm = _phase(interp.invoke, warmup_runs, warmup_secs, max_secs, stop)
    log(stat_line(warm, newer))
    log("")
    if behaviour.truncated:
        return 0, output(), ""
    if behaviour.exit_code is not None:
        return behaviour.exit_code, output(), "Segmentation fault\n"
    log(f"Running benchmark for at least {num_runs} iterations and at least {min_secs:g} seconds but "
        f"terminate if exceeding {max_secs:g} seconds.")
    timed = _phase(interp.invoke, num_runs, min_secs, max_secs, stop)
    if stop.is_set() or not timed:
        return 137, output(), ""
    log(stat_line(timed, newer))
    log("")
    avg = sum(timed) / len(timed)
    first, warm_avg = (warm[0], sum(warm) / len(warm)) if warm else (timed[0], -1)
    log(f"Inference timings in us: Init: {init_us}, First inference: {first}, "
        f"Warmup (avg): {warm_avg:g}, Inference (avg): {avg:g}")
    log(NOTE)
    log("Memory footprint delta from the start of the tool (MB): init=8.45312 overall=10.5898")
    if profiling:
        table = _profile_tables(nodes, avg / 1000, len(timed), csv=flags["op_profiling_output_mode"] == "csv")
        if flags["op_profiling_output_mode"] == "csv" and flags["op_profiling_output_file"]:
            target = resolve(flags["op_profiling_output_file"])
            if target is None:
                log(f"Failed to open {flags['op_profiling_output_file']} for writing")
                return 1, output(), ""
            target.write_text(table)
        else:
            first, *rest = table.splitlines()
            log(first)
            lines.extend(rest)
    return 0, output(), ""


def _left_on_builtin(nodes: list[dict]) -> list[dict]:
    """The original nodes no partition replaced (the interpreter's plan skips the replaced ones)."""
    n_orig = next((i for i, n in enumerate(nodes) if n["op_name"] == "DELEGATE"), len(nodes))
    replaced: set[int] = set()
    producer = {int(t): i for i, n in enumerate(nodes[:n_orig]) for t in n["outputs"]}
    for part in nodes[n_orig:]:
        boundary = {int(t) for t in part["inputs"]}
        stack = [int(t) for t in part["outputs"]]
        while stack:
            t = stack.pop()
            if t in boundary or t not in producer or producer[t] in replaced:
                continue
            replaced.add(producer[t])
            stack.extend(int(x) for x in nodes[producer[t]]["inputs"] if int(x) >= 0)
    return [n for i, n in enumerate(nodes[:n_orig]) if i not in replaced]


def _profile_tables(nodes: list[dict], avg_ms: float, runs: int, *, csv: bool) -> str:
    executed = [("TfLiteXNNPackDelegate", f"[{n['index']}]:{n['index']}") if n["op_name"] == "DELEGATE"
                else (n["op_name"], f"[{n['op_name'].lower()}]:{n['index']}")
                for n in _left_on_builtin(nodes) + [n for n in nodes if n["op_name"] == "DELEGATE"]]
    # A graph with no operators (the `empty` entry: input is output) profiles to empty tables.
    share = avg_ms / max(len(executed), 1)
    pct = 100.0 / max(len(executed), 1)
    out = ["Operator-wise Profiling Info for Regular Benchmark Runs:",
           "============================== Run Order =============================="]
    if csv:
        out.append("node type, start, first, avg_ms, %, cdf%, mem KB, times called, name")
    else:
        out.append("\t[node type]\t[start]\t[first]\t[avg ms]\t[%]\t[cdf%]\t[mem KB]\t[times called]\t[Name]")
    for i, (kind, name) in enumerate(executed):
        cells = [kind, f"{share * i:.3f}", f"{share:.3f}", f"{share:.4f}", f"{pct:.3f}%", f"{pct * (i + 1):.3f}%",
                 "0", "1", name]
        out.append(", ".join(cells) if csv else "\t" + "\t".join(cells))
    out += ["", "============================== Summary by node type =============================="]
    counts: dict[str, int] = {}
    for kind, _ in executed:
        counts[kind] = counts.get(kind, 0) + 1
    out.append("node type, count, avg_ms, avg %, cdf %, mem KB, times called" if csv else
               "\t[Node type]\t[count]\t[avg ms]\t[avg %]\t[cdf %]\t[mem KB]\t[times called]")
    cdf = 0.0
    for kind, c in counts.items():
        cdf += pct * c
        cells = [kind, str(c), f"{share * c:.3f}", f"{pct * c:.3f}%", f"{cdf:.3f}%", "0", str(c)]
        out.append(", ".join(cells) if csv else "\t" + "\t".join(cells))
    out += ["", f"Timings (microseconds): count={runs} curr={int(avg_ms * 1000)}", "Memory (bytes): count=0",
            f"{len(executed)} nodes observed", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    """Run as a host executable (the `litert` device's --benchmark-model in tests); the behaviour
    comes as JSON from $FAKE_BENCHMARK_MODEL_BEHAVIOUR."""
    import sys

    behaviour = BenchmarkModelBehaviour(**json.loads(os.environ.get("FAKE_BENCHMARK_MODEL_BEHAVIOUR") or "{}"))
    rc, out, err = run(argv, resolve=lambda p: Path(p), behaviour=behaviour, stop=threading.Event())
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv))
