"""Device-farm flags shared by `lut build`, `devices` and `agent`: several --device in one build (a
private local Ray instance), `--cluster [ADDRESS]` (the agents' devices). Farm builds themselves are
latbench.api.build_tables; Ray is imported only inside latbench.measuring.farm.*."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


def add_cluster_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--cluster", nargs="?", const="", default=None, metavar="ADDRESS",
                   help=f"{what} on the devices of a Ray cluster whose hosts run `latbench agent` "
                        "(HOST:PORT of the head; default $RAY_ADDRESS); needs pip install 'latbench[cluster]'")


def wants_farm(args: argparse.Namespace, devices: Sequence[str]) -> bool:
    return getattr(args, "cluster", None) is not None or len(devices) > 1


def require_farm(args: argparse.Namespace) -> None:
    """The one-line error (with the install command) when the farm is asked for without Ray."""
    from latbench.measuring.farm import require_ray

    require_ray("--cluster" if getattr(args, "cluster", None) is not None else "several --device in one build")


def runner_opener(device_id: str, options: dict[str, Any]) -> Callable[[], Any]:
    """A picklable callable opening `device_id`'s runner wherever it runs (a device actor)."""
    from latbench.api import runner_opener as opener

    return opener(device_id, options)
