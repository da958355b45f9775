"""A stand-in for onnxruntime_perf_test that really runs the model with onnxruntime on this host.

It accepts the real tool's getopt-style flags (options may follow the model path, as with GNU
getopt), runs one warm-up and then -r timed Session::Run calls, and prints the summary in one
of the wordings real versions printed (see tests/fixtures/ort_perf_test/ for the originals):

* "modern": `Average inference time cost: X ms` and `P50 Latency: X s` (onnxruntime ~1.13-1.22)
* "newest": `Average inference time cost total: X ms`, 6-column result file
* "legacy": `Average time cost: X ms` and `P50 Latency is X sec` (before ~1.2)

With a result file it appends one CSV line per timed run (and, with -s, the statistics), as
PerformanceResult::DumpToFile does; with -p PREFIX onnxruntime's profiler writes
PREFIX_<timestamp>.json. Numbers are real measurements of this host.
"""

from __future__ import annotations

import getopt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The first bytes of a file that the fake device executes as onnxruntime_perf_test.
MAGIC = b"#!fake-onnxruntime_perf_test\n"

_OPTSTRING = "k:b:m:e:r:t:p:x:y:c:d:o:u:i:f:F:S:T:C:AMPIDZvhsqzn"

USAGE = "perf_test [options...] model_path [result_file]\nOptions:\n\t-m [test_mode]: ...\n"


@dataclass
class PerfTestBehaviour:
    variant: str = "modern"  # "modern", "newest", "legacy"
    exit_code: int | None = None  # fail with this status ("Run failed:...")
    garbage: bool = False  # print something that is not a summary, exit 0
    truncated: bool = False  # print only the first line of the summary, exit 0
    hang_s: float | None = None  # sleep this long before answering
    write_result_file: bool = True


def _percentile_index(total: int, q: float) -> int:
    return min(int(total * q), total - 1)


def run(
    argv: list[str],
    *,
    resolve: Callable[[str], Path | None],
    behaviour: PerfTestBehaviour,
    stop: threading.Event,
) -> tuple[int, str, str]:
    """Execute like the binary would. Returns (exit status, stdout, stderr)."""
    try:
        opts, positional = getopt.gnu_getopt(argv[1:], _OPTSTRING)
    except getopt.GetoptError as e:
        return 255, USAGE, f"{argv[0]}: {e.msg}\n"
    flags = dict(opts)
    if "-h" in flags or not positional or len(positional) > 2:
        return 255, USAGE, ""
    if flags.get("-m", "duration") not in ("times", "duration") or flags.get("-e", "cpu") != "cpu":
        return 255, USAGE, ""
    repeats = int(flags.get("-r", "1000"))
    threads = int(flags.get("-x", "0"))
    if repeats <= 0 or threads < 0:
        return 255, USAGE, ""

    if behaviour.hang_s:
        stop.wait(behaviour.hang_s)
    if behaviour.exit_code is not None:
        return behaviour.exit_code, "Run failed:simulated failure\n", ""
    if behaviour.garbage:
        return 0, "Segmentation fault handler installed\n\x00\x17 garbage 12.5 bananas\n", ""

    model = resolve(positional[0])
    if model is None or not model.is_file():
        return 255, "", f"Load model from {positional[0]} failed:Load model {positional[0]} failed. File doesn't exist\n"
    if "-I" not in flags:
        return 255, f"there is no test data for model {model.parent.name}\nRun failed:failed to initialize.\n", ""

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if "-p" in flags:
        prefix = resolve(flags["-p"])
        if prefix is None:
            return 255, "", "cannot write profile\n"
        so.enable_profiling = True
        so.profile_file_prefix = str(prefix)
    t0 = time.perf_counter()
    try:
        session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # the real binary prints the status and exits non-zero
        return 255, "", f"{str(e).splitlines()[0]}\n"
    session_s = time.perf_counter() - t0

    rng = np.random.default_rng(int(flags.get("-S", "0")) if flags.get("-S", "-1") != "-1" else None)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)

    t0 = time.perf_counter()
    session.run(None, feeds)
    first_ms = int((time.perf_counter() - t0) * 1000)
    costs = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        costs.append(time.perf_counter() - t0)
    run_time = time.perf_counter() - start
    if "-p" in flags:
        session.end_profiling()

    out = _summary(behaviour.variant, threads, session_s, first_ms, costs, run_time)
    if behaviour.truncated:
        out = out.splitlines(keepends=True)[0]
        return 0, out, ""
    stats = _stats(behaviour.variant, costs)
    if len(positional) == 2:
        result = resolve(positional[1])
        if result is None:
            return 255, out, "failed to open result file\n"
        if behaviour.write_result_file:
            with open(result, "a") as f:
                for i, c in enumerate(costs):
                    if behaviour.variant == "newest":
                        f.write(f"{model.parent.name},{c * 0.01:g},{c:g},41000000,97,{i}\n")
                    else:
                        f.write(f"{model.parent.name},{c:g},41000000,97,{i}\n")
                if "-s" in flags:
                    f.write("\n" + stats)
        if "-s" in flags:
            out += stats
    else:
        out += f"Avg CPU usage:97\nPeak working set size:41000000\nRuns:{repeats}\n" + stats
    return 0, out, ""


def _summary(variant: str, threads: int, session_s: float, first_ms: int, costs: list[float], run_time: float) -> str:
    total = sum(costs)
    n = len(costs)
    if variant == "legacy":
        return (
            f"Total time cost: {total:g}\nTotal iterations: {n}\n"
            f"Average time cost: {total / n * 1000:g} ms\nTotal run time: {run_time:g} s\n"
        )
    avg_label = "Average inference time cost total" if variant == "newest" else "Average inference time cost"
    return (
        f"Setting intra_op_num_threads to {threads}\n"
        f"Session creation time cost: {session_s:g} s\n"
        f"First inference time cost: {first_ms} ms\n"
        f"Total inference time cost: {total:g} s\n"
        f"Total inference requests: {n}\n"
        f"{avg_label}: {total / n * 1000:f} ms\n"
        f"Total inference run time: {run_time:g} s\n"
        f"Number of inferences per second: {n / run_time:g} \n"
        "Avg CPU usage: 97 %\n"
        "Peak working set size: 41000000 bytes\n"
    )


def _stats(variant: str, costs: list[float]) -> str:
    s = sorted(costs)
    n = len(s)
    rows = [("Min", s[0]), ("Max", s[-1])] + [
        (name, s[_percentile_index(n, q)]) for name, q in (("P50", 0.5), ("P90", 0.9), ("P95", 0.95), ("P99", 0.99), ("P999", 0.999))
    ]
    if variant == "legacy":
        return "".join(f"{name} Latency is {v:g} sec\n" for name, v in rows)
    return "".join(f"{name} Latency: {v:g} s\n" for name, v in rows)

