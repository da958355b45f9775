"""Device flags shared by every command that measures (lut, profile, mes --measure)."""

from __future__ import annotations

import argparse
from typing import Any

from latbench.core.errors import UsageError

# flag -> (runner option name, type, help). Only flags the user gives are passed on, and the
# device kind rejects options it does not take with a one-line error.
RUNNER_FLAGS: dict[str, tuple[str, type, str]] = {
    "--threads": ("threads", int, "runtime threads (cpu, android; default 1)"),
    "--core-mask": ("core_mask", str, "pin to these cores, hex mask e.g. f0 (cpu, android; android default: big cores)"),
    "--clock": ("clock", str, "cpu: auto (thread CPU time with 1 thread), wall or thread_cpu"),
    "--compute-units": ("compute_units", str, "iphone/mac: CPU_ONLY, CPU_AND_GPU, CPU_AND_NE or ALL"),
    "--perf-test": ("perf_test_path", str, "android: on-device path of onnxruntime_perf_test"),
    "--perf-test-local": ("perf_test_local", str, "android: host binary of onnxruntime_perf_test to push"),
    "--adb-port": ("adb_port", int, "android: adb server port (default 5037)"),
}


def add_runner_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("device options")
    for flag, (dest, typ, helptext) in RUNNER_FLAGS.items():
        group.add_argument(flag, dest=f"runner_{dest}", type=typ, default=None, help=helptext)


def runner_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {dest: getattr(args, f"runner_{dest}", None) for dest, _, _ in RUNNER_FLAGS.values()}
    opts = {k: v for k, v in opts.items() if v is not None}
    if opts.get("threads", 1) < 1:
        raise UsageError(f"--threads must be >= 1, got {opts['threads']}")
    return opts


def open_device(device_id: str, args: argparse.Namespace):
    import inspect

    from device_runners import open_runner, runner_classes

    opts = runner_options(args)
    cls = next((c for c in runner_classes() if c.claims(device_id)), None)
    if cls is None:  # a bare adb serial
        cls = next(c for c in runner_classes() if c.kind == "android")
    accepted = set(inspect.signature(cls.__init__).parameters)
    flags = {dest: flag for flag, (dest, _, _) in RUNNER_FLAGS.items()}
    for dest in opts:
        if dest not in accepted:
            raise UsageError(f"{flags[dest]} does not apply to {cls.kind} devices")
    return open_runner(device_id, **opts)
