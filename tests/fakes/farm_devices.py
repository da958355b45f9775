"""Openers of fake devices for the device farm: picklable, so a Ray device actor (another process,
possibly another "host") opens the device itself, as it opens a real one.

Device actors import this module by name: the tests and the benchmark put tests/fakes on the
PYTHONPATH of the Ray processes they start.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

from scripted_device import ScriptedRunner


def label_latency(label: str) -> float:
    """A fixed base latency (ms) per entry, different across entries: 0.5 .. 2.5 ms."""
    return 0.5 + (zlib.crc32(label.encode()) % 1000) / 500


class FarmScriptedRunner(ScriptedRunner):
    """A scripted device with a farm device id and a fixed cost per measurement (`sleep_s`)."""

    def __init__(self, device_id: str, *, model: str = "script", **options: Any) -> None:
        super().__init__(label_latency, **options)
        self.device_id = device_id
        self.model = model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device_model": self.model, "serial": self.device_id}


def _open(device_id: str, **options: Any) -> FarmScriptedRunner:
    return FarmScriptedRunner(device_id, **options)


def scripted(device_id: str, **options: Any) -> functools.partial:
    """An opener of a scripted farm device (options: speed, sleep_s, lost_after, model)."""
    return functools.partial(_open, device_id, **options)
