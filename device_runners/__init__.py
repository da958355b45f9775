"""Device runners: measure exported artifacts on the host CPU, Android phones, iPhones, Macs and AI Hub.

Device ids: `cpu` (default), `litert`, `android:SERIAL` (or a bare adb serial), `iphone:UDID`, `mac`,
`aihub:DEVICE` (a Qualcomm AI Hub device: see device_runners/aihub.py).
Adding a device kind = adding its module (defining `RUNNER`) to RUNNER_MODULES.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from device_runners.base import DeviceInfo, Prepared, Runner
from latbench.core.errors import DeviceError, DeviceLost, UsageError
from latbench.core.text import first_line

RUNNER_MODULES = ("device_runners.cpu", "device_runners.litert", "device_runners.android", "device_runners.iphone",
                  "device_runners.mac", "device_runners.aihub")

__all__ = [
    "DeviceInfo",
    "DeviceLost",
    "Prepared",
    "Runner",
    "discover_devices",
    "open_runner",
    "runner_class",
    "runner_classes",
    "unaccepted_options",
]


def runner_classes() -> list[type[Runner]]:
    return [importlib.import_module(name).RUNNER for name in RUNNER_MODULES]


def _accepted(fn: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of `options` a discover() takes (each kind has its own knobs, e.g. adb_port)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in options.items() if k in params}


def discover_devices(**options: Any) -> list[DeviceInfo]:
    """Every device of every kind, unavailable ones included with their reason; never raises."""
    infos: list[DeviceInfo] = []
    for name in RUNNER_MODULES:
        kind = name.rsplit(".", 1)[1]
        try:
            cls = importlib.import_module(name).RUNNER
            infos.extend(cls.discover(**_accepted(cls.discover, options)))
        except Exception as e:  # a broken kind must not hide the others
            reason = first_line(e)
            infos.append(DeviceInfo(kind, kind, False, f"discovery failed: {reason}", {}))
    return infos


def open_runner(device_id: str | None = None, **options: Any) -> Runner:
    """Open a runner for `device_id` (default `cpu`).

    UsageError for an unknown id (listing the known devices); DeviceError with the reason for an
    unavailable one; UsageError for an option the device kind does not take.
    """
    device_id = check_device_id("cpu" if device_id is None else device_id)
    check_options(options)
    cls = runner_class(device_id)
    if cls.claims(device_id):
        return _open(cls, device_id, options)
    # A bare adb serial, as `adb devices` prints it.
    known = discover_devices(**options)
    if any(d.id == f"android:{device_id}" for d in known):
        return _open(cls, f"android:{device_id}", options)
    listing = ", ".join(d.id + ("" if d.available else " (unavailable)") for d in known)
    raise UsageError(f"unknown device '{device_id}'; known devices: {listing} (see `latbench devices`)")


#: More runtime threads than any phone or host has cores: a typo, which would stall preparing the runtime.
MAX_THREADS = 256


def check_device_id(device_id: Any) -> str:
    """A device id as given, stripped; a one-line UsageError for a blank or non-string one."""
    if not isinstance(device_id, str) or not device_id.strip():
        raise UsageError(f"device id {device_id!r} is empty: give one of `latbench devices` (e.g. cpu, litert, "
                         f"android:SERIAL)")
    return device_id.strip()


def runner_class(device_id: str) -> type[Runner]:
    """The kind that opens `device_id`: the one that claims it, else android (a bare adb serial)."""
    classes = runner_classes()
    claimed = next((c for c in classes if c.claims(check_device_id(device_id))), None)
    return claimed or next(c for c in classes if c.kind == "android")


def check_options(options: dict[str, Any]) -> None:
    """The options every kind reads the same way: one-line errors before any device is touched."""
    threads = options.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 1 <= threads <= MAX_THREADS):
        raise UsageError(f"--threads must be from 1 to {MAX_THREADS}, got {threads!r}")


def unaccepted_options(cls: type[Runner], options: dict[str, Any]) -> list[str]:
    """The options `cls` does not take (by what its open() and constructor name): the one check of
    device options, the command line's flags and the API's keywords alike. Done before anything runs,
    so a TypeError from inside a constructor stays a failure, not an "invalid option"."""
    accepted = {n for fn in (cls.open, cls.__init__) for n, p in inspect.signature(fn).parameters.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return sorted(set(options) - accepted)


def _open(cls: type[Runner], device_id: str, options: dict[str, Any]) -> Runner:
    unknown = unaccepted_options(cls, options)
    if unknown:
        raise UsageError(f"option {unknown[0]!r} does not apply to {cls.kind} devices")
    try:
        return cls.open(device_id, **options)
    except (DeviceError, UsageError):
        raise
    except Exception as e:  # an unexpected tool failure still reads as one line
        raise DeviceError(f"{device_id} unavailable: {first_line(e)}") from e
