"""Device-farm flags and builds shared by `lut build`, `devices` and `agent`: several --device in one
build (a private local Ray instance), `--cluster [ADDRESS]` (the agents' devices), `--separate-tables`.

Ray is imported only here, inside the functions that need it (latbench.measuring.farm.*)."""

from __future__ import annotations

import argparse
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from latbench.core.errors import UsageError
from latbench.core.progress import ProgressFn


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


def open_farm(args: argparse.Namespace, devices: Sequence[str], *, rule: Any, separate: bool,
              tolerance: float | None = None, options_for: Callable[[str], dict[str, Any]]):
    """The FarmDispatcher a build measures with: the cluster's devices matching --device, or the
    named devices of this host, each in its own Ray actor."""
    require_farm(args)
    from latbench.measuring.farm.cluster import connect, open_cluster_farm, open_local_farm
    from latbench.measuring.farm.dispatcher import PoolCheck

    if tolerance is not None and not 0 <= tolerance < 1:
        raise UsageError(f"--pool-tolerance must be a fraction in [0, 1), got {tolerance}")
    pool = None if separate else PoolCheck(rule, **({} if tolerance is None else {"tolerance": tolerance}))
    if args.cluster is not None:
        if not args.device:
            raise UsageError("--cluster needs --device: farm device ids, device ids, globs or model:KIND:MODEL "
                             "(see `latbench devices --cluster`)")
        disconnect = connect(args.cluster or None)
        try:
            return open_cluster_farm(devices, pool=pool, on_close=disconnect)
        except BaseException:
            disconnect()
            raise
    openers = {d: runner_opener(d, options_for(d)) for d in devices}
    return open_local_farm(devices, openers, pool=pool)


def runner_opener(device_id: str, options: dict[str, Any]) -> Callable[[], Any]:
    """A picklable callable opening `device_id`'s runner wherever it runs (a device actor)."""
    from device_runners import open_runner

    return functools.partial(open_runner, device_id, **options)


def locked_progress(progress: ProgressFn, prefix: str, lock: threading.Lock) -> ProgressFn:
    def update(phase: str, done: int, total: int, detail: str | None = None) -> None:
        with lock:
            progress(f"{prefix} {phase}", done, total, detail)

    return update


def build_separately(farm: Any, build_one: Callable[[Any, str, ProgressFn], list], progress: ProgressFn) -> list:
    """`--separate-tables`: one table (set) per device of the farm, the devices measuring in parallel.
    `build_one(dispatcher, device id, progress)` builds one device's tables and returns the results."""
    parts = farm.split()
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        futures = [pool.submit(build_one, part, part.device_id, locked_progress(progress, part.device_id, lock))
                   for part in parts]
        results = []
        for f in futures:
            results.extend(f.result())
    return results


def per_device_out(out: str | None, device_id: str) -> str | None:
    """--out of one device's table with --separate-tables: a directory per device under it."""
    if out is None:
        return None
    return str(Path(out) / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device_id))
