"""`DeviceActor`: one Ray actor per device, holding the runner a local build would open.

It asks for no CPU (a device actor waits on its device; test clusters run several raylets on two
cores) and is placed by custom resources or by node affinity (dispatcher.py, cluster.py). Ray never
restarts it and never retries its calls (`max_restarts=0`, `max_task_retries=0`): whether the device
is still there is the agent's business, and reassigning the work is the driver's.

Measuring inside the actor is the local dispatcher's own step (`LocalDispatcher.measure`: a renewed
instance of the prepared artifact after its first use), so a farm measures exactly as one device does.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray

from latbench.core.progress import no_progress
from latbench.measuring.farm.cache import HostCache, host_cache_dir
from latbench.measuring.measurement import Measurement
from latbench.measuring.session import Artifact, Job, LocalDispatcher

#: An artifact as the driver describes it to a device: (key, content hash, the driver's path, suffix,
#: is a directory, sha256 of its bytes). The driver's path is used as it is on the driver's own node;
#: other hosts keep it in their cache under the sha256 of its bytes, checked on arrival.
ArtifactSpec = tuple[str, str, str, str, bool, str]


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class DeviceActor:
    def __init__(self, fid: str, opener: Callable[[], Any], host: str | None = None) -> None:
        self.fid = fid
        self.node_id = ray.get_runtime_context().get_node_id()
        self.host = host or socket.gethostname()
        self.runner = opener()
        self.local = LocalDispatcher(self.runner)
        self.state = "idle"
        self.measured = 0
        self.busy_s = 0.0
        self._cache: HostCache | None = None

    @property
    def cache(self) -> HostCache:
        if self._cache is None:
            self._cache = HostCache(host_cache_dir(self.node_id))
        return self._cache

    def info(self) -> dict[str, Any]:
        """Who this device is, where, and what it is doing (`latbench devices --cluster`)."""
        return {"id": self.fid, "device_id": self.runner.device_id, "host": self.host, "node": self.node_id,
                "pid": os.getpid(), "artifact_format": self.runner.artifact_format, "state": self.state,
                "measured": self.measured, "busy_s": self.busy_s, "provenance": self.runner.describe()}

    def ping(self) -> bool:
        return True

    def stage(self, specs: Sequence[ArtifactSpec], refs: list, driver_node: str) -> list[str]:
        """Bring every artifact onto this host (a no-op on the driver's node). `refs` holds the
        ObjectRefs of their bytes nested in a list, so Ray pulls only what this host lacks.
        Returns the hashes that crossed to this host now."""
        if self.node_id == driver_node:
            return []
        shipped = []
        for (_, _, _, suffix, is_dir, digest), ref in zip(specs, refs[0], strict=True):
            _, moved = self.cache.materialize(digest, suffix, is_dir, lambda ref=ref: ray.get(ref))
            if moved:
                shipped.append(digest)
        return shipped

    def prepare(self, specs: Sequence[ArtifactSpec], driver_node: str) -> int:
        """Prepare every artifact on the device (after `stage`); returns how many."""
        self.state = "preparing"
        arts = {}
        for key, digest, path, suffix, _, sha in specs:
            where = Path(path) if self.node_id == driver_node else self.cache.path_for(sha, suffix)
            arts[key] = Artifact(key, where, digest)
        self.local.prepare(arts, no_progress)
        self.state = "idle"
        return len(arts)

    def measure(self, job: Job) -> Measurement:
        self.state = f"measuring {job.key}#{job.round}"
        t0 = time.perf_counter()
        try:
            m = self.local.measure(job)
        finally:
            self.busy_s += time.perf_counter() - t0
            self.state = "idle"
        self.measured += 1
        return m

    def close(self) -> None:
        self.runner.close()
