"""Device flags shared by every command that measures (lut, profile, mes --measure), and opening the
device they name. Defaults for --device and --threads may come from latbench.toml."""

from __future__ import annotations

import argparse
from typing import Any

from latbench.commands import _config
from latbench.core.errors import UsageError

#: flag -> (runner option name, type, choices or None, help). Only flags the user gives (or the
#: config file sets) are passed on; a flag the device kind does not take is a one-line error.
RUNNER_FLAGS: dict[str, tuple[str, type, tuple[str, ...] | None, str]] = {
    "--threads": ("threads", int, None, "runtime threads (cpu, litert, android; default 1)"),
    "--core-mask": ("core_mask", str, None,
                    "pin to these cores, hex mask e.g. f0, at least --threads of them (cpu, litert, android; "
                    "android default: big cores)"),
    "--clock": ("clock", str, ("auto", "wall", "thread_cpu"),
                "cpu, litert: auto (thread CPU time with 1 thread), wall or thread_cpu"),
    "--runtime": ("runtime", str, ("onnxruntime", "litert"),
                  "android: onnxruntime (onnxruntime_perf_test, default) or litert (benchmark_model)"),
    "--xnnpack": ("xnnpack", str, ("on", "off"), "litert, android --runtime litert: XNNPACK delegate (default on)"),
    "--benchmark-model": ("benchmark_model_path", str, None,
                          "litert: host benchmark_model for per-op times; android --runtime litert: its device path"),
    "--benchmark-model-local": ("benchmark_model_local", str, None,
                                "android --runtime litert: host benchmark_model binary to push"),
    "--compute-units": ("compute_units", str.upper, ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL", "CPU", "GPU", "NPU"),
                        "iphone/mac: Core ML compute units; aihub: cpu (default), gpu or npu"),
    "--perf-test": ("perf_test_path", str, None, "android: on-device path of onnxruntime_perf_test"),
    "--perf-test-local": ("perf_test_local", str, None, "android: host binary of onnxruntime_perf_test to push"),
    "--adb-port": ("adb_port", int, None, "android: adb server port (default $ANDROID_ADB_SERVER_PORT or 5037)"),
}


def add_device_flag(p: argparse.ArgumentParser, default: str | None = "cpu", what: str = "device id", *,
                    multiple: bool = False) -> None:
    """--device; with `multiple`, repeatable (a list; the default applies when none is given)."""
    configured = _config.default_for_help("device")
    more = " (repeat it to measure on several devices of one model: the device farm)" if multiple else ""
    p.add_argument("--device", default=None if multiple else configured or default, metavar="ID",
                   action="append" if multiple else "store",
                   help=f"{what}{more} (see `latbench devices`; default {configured or default or 'the table’s'})")


def device_list(args: argparse.Namespace, default: str = "cpu") -> list[str]:
    """The devices a repeatable --device names (the configured or given default when none)."""
    return list(args.device or [_config.default("device") or default])


def add_runner_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("device options")
    for flag, (dest, typ, choices, helptext) in RUNNER_FLAGS.items():
        group.add_argument(flag, dest=f"runner_{dest}", type=typ, choices=choices, default=None, help=helptext)


def runner_options(args: argparse.Namespace, configured: bool = True) -> dict[str, Any]:
    opts = {dest: getattr(args, f"runner_{dest}", None) for dest, _, _, _ in RUNNER_FLAGS.values()}
    opts = {k: v for k, v in opts.items() if v is not None}
    if configured and "threads" not in opts and _config.default("threads") is not None:
        opts["threads"] = _config.default("threads")
    from device_runners import check_options

    check_options(opts)
    return opts


def open_device(device_id: str, args: argparse.Namespace, **extra: Any):
    """Open the device a command names, with the device flags given (and `extra` options a
    command adds, e.g. lut build's --detach); a flag the device kind does not take is an error."""
    from device_runners import open_runner

    return open_runner(device_id, **device_options(device_id, args, **extra))


def device_options(device_id: str, args: argparse.Namespace, *, configured: bool = True,
                   **extra: Any) -> dict[str, Any]:
    """The runner options of the device flags given (plus `extra`), checked against what
    `device_id`'s kind takes; `configured`: with latbench.toml's threads when none is given (off
    where the API chooses, e.g. a table measured again on its own device, as it records)."""
    from device_runners import runner_class, unaccepted_options

    opts = {**runner_options(args, configured), **extra}
    cls = runner_class(device_id)
    flags = {dest: flag for flag, (dest, _, _, _) in RUNNER_FLAGS.items()}
    flags.update({dest: "--" + dest.replace("_", "-") for dest in extra})
    for dest in unaccepted_options(cls, opts):
        if dest == "threads" and getattr(args, "runner_threads", None) is None:
            opts.pop(dest)  # a configured default that this device kind does not take
            continue
        raise UsageError(f"{flags[dest]} does not apply to {cls.kind} devices")
    return opts
