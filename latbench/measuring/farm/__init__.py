"""The device farm: several devices, on one host or on many, measuring one table through Ray.

A `FarmDispatcher` (dispatcher.py) is the measuring session's Dispatcher for a pool of devices:
each device is a Ray actor (actor.py) holding the same runner a local build would open; the
dispatcher ships every artifact once per host (cache.py), keeps one measurement in flight per
device, hands each result to the session as it arrives (the session journals it), puts rounds of
one entry on different devices, reassigns the work of a device that disappears, and refuses to
pool devices whose speeds differ beyond the noise (pooling.py). cluster.py connects to a Ray
cluster (or starts a private local one), finds the device actors `latbench agent` serves, and
runs the agent's side. names.py holds the resource and actor names every host agrees on.

Ray is an optional extra: only the modules that need it import it (actor, cluster,
dispatcher), and nothing outside farm code imports those at module level.
"""

from __future__ import annotations

import importlib.util

from latbench.core.errors import UsageError

#: What to run to get the device farm.
INSTALL_HINT = "pip install 'latbench[cluster]'"


def ray_available() -> bool:
    """Is Ray importable (the `cluster` extra installed)?"""
    return importlib.util.find_spec("ray") is not None


def require_ray(what: str) -> None:
    """UsageError (one line, with the install command) unless Ray is importable."""
    if not ray_available():
        raise UsageError(f"{what} needs the device farm's Ray extra, which is not installed: {INSTALL_HINT}")
