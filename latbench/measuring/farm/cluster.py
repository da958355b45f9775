"""Ray for the farm: a private local instance (several --device on this host), or a cluster
(`--cluster ADDRESS` / RAY_ADDRESS) whose hosts run `latbench agent`.

Never a bare `ray.init()`: without an address it starts a new cluster (and turns on token auth,
writing ~/.ray/auth_token). A private instance is started with `address="local"`, loopback only,
no token (nothing outside this host can reach it); a cluster is joined at the address given.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from latbench.core.errors import DeviceError, UsageError
from latbench.core.text import first_line
from latbench.measuring.farm import require_ray
from latbench.measuring.farm.names import (
    NAMESPACE,
    actor_name,
    apply_ray_environment,
    device_resources,
    farm_id,
    select,
)

#: How long a device actor may take to open its device and answer.
READY_TIMEOUT_S = 120.0


def start_local() -> Callable[[], None]:
    """Ray for this process: the instance already connected, or a private loopback one (stopped by
    the returned function)."""
    require_ray("several --device in one build")
    apply_ray_environment(loopback=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only: nobody else can connect
    import ray

    if ray.is_initialized():
        return lambda: None
    ray.init(address="local", num_cpus=0, include_dashboard=False, log_to_driver=False, namespace=NAMESPACE,
             logging_level="WARNING")
    return ray.shutdown


def connect(address: str | None) -> Callable[[], None]:
    """Join the cluster at `address` (else $RAY_ADDRESS) as a driver; returns the disconnect."""
    require_ray("--cluster")
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("--cluster needs an address (HOST:PORT of the Ray head), or set RAY_ADDRESS")
    apply_ray_environment()
    import ray

    if ray.is_initialized():
        return lambda: None
    try:
        ray.init(address=address, log_to_driver=False, namespace=NAMESPACE, logging_level="WARNING")
    except Exception as e:  # noqa: BLE001 - Ray's connection errors vary
        raise DeviceError(f"cannot join the Ray cluster at {address}: {first_line(e)}") from None
    return ray.shutdown


def wait_infos(actors: Mapping[str, Any], timeout_s: float = READY_TIMEOUT_S) -> tuple[dict[str, dict], dict[str, str]]:
    """(farm id -> info) of the actors that answer within `timeout_s`, and (farm id -> why) of the
    others: a device that failed to open, or an actor no live host can place."""
    import ray

    refs = {h.info.remote(): fid for fid, h in actors.items()}
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    ok, bad = {}, {}
    for ref in ready:
        try:
            ok[refs[ref]] = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the device failed to open, said in one line
            bad[refs[ref]] = actor_error(e)
    for ref in pending:
        bad[refs[ref]] = f"not ready within {timeout_s:g} s"
    return ok, bad


def actor_error(e: BaseException) -> str:
    """The one line that says why a device actor failed (its device's own error when it has one)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return first_line(cause)
    text = str(e)
    for line in text.splitlines():  # an error in the actor's creation ends its traceback with it
        if line.startswith(("latbench.core.errors.", "DeviceError", "UsageError")):
            text = line
    return first_line(text.split(": ", 1)[-1] if text.startswith("latbench.core.errors.") else text)


def open_local_farm(device_ids: Sequence[str], openers: Mapping[str, Callable[[], Any]], **farm_options: Any):
    """A FarmDispatcher over devices of this host, one actor each on a private Ray instance (or the
    one this process is connected to). `openers`: device id -> picklable callable opening its runner."""
    if len(set(device_ids)) != len(device_ids):
        raise UsageError("a device is named twice in --device")
    stop = start_local()
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from latbench.measuring.farm.actor import DeviceActor
    from latbench.measuring.farm.dispatcher import FarmDispatcher

    node = ray.get_runtime_context().get_node_id()
    here = NodeAffinitySchedulingStrategy(node, soft=False)
    actors = {did: DeviceActor.options(scheduling_strategy=here).remote(did, openers[did]) for did in device_ids}

    def close() -> None:
        for h in actors.values():
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        stop()

    try:
        infos, bad = wait_infos(actors)
        if bad:
            fid, why = next(iter(bad.items()))
            raise DeviceError(f"{fid} unavailable: {why}")
        return FarmDispatcher(actors, infos, driver_node=node, on_close=close, **farm_options)
    except BaseException:
        close()
        raise


# -- the cluster ------------------------------------------------------------------------------------
def cluster_devices(timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every device actor the agents of the connected cluster serve, with its info (or the state
    `unreachable` and why)."""
    import ray
    from ray.util import list_named_actors

    names = sorted(n for n in list_named_actors() if n.startswith(actor_name("")))
    handles = {}
    for name in names:
        try:
            handles[name[len(actor_name("")):]] = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # gone between the listing and the lookup
            continue
    ok, bad = wait_infos(handles, timeout_s)
    out = [{**info, "state": info.get("state", "idle")} for info in ok.values()]
    out += [{"id": fid, "device_id": fid.rsplit("@", 1)[0], "host": fid.rsplit("@", 1)[-1], "state": "unreachable",
             "reason": why, "provenance": {}} for fid, why in bad.items()]
    return sorted(out, key=lambda d: d["id"])


def open_cluster_farm(selectors: Sequence[str], **farm_options: Any):
    """A FarmDispatcher over the agents' device actors that match `selectors` (names.select)."""
    import ray

    from latbench.measuring.farm.dispatcher import FarmDispatcher

    devices = [d for d in cluster_devices() if d["state"] != "unreachable"]
    chosen = select(selectors, devices)
    infos = {d["id"]: d for d in devices if d["id"] in chosen}
    actors = {fid: ray.get_actor(actor_name(fid), namespace=NAMESPACE) for fid in chosen}
    return FarmDispatcher(actors, infos, driver_node=ray.get_runtime_context().get_node_id(), **farm_options)


def node_with(resource: str, timeout_s: float = 60.0) -> str:
    """The id of the live node advertising `resource` (the agent's own raylet, once it has joined)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        for n in ray.nodes():
            if n.get("Alive") and resource in (n.get("Resources") or {}):
                return n["NodeID"]
        if time.monotonic() > deadline:
            raise DeviceError(f"no node of the cluster advertises {resource} after {timeout_s:g} s")
        time.sleep(0.2)


def serve_devices(device_ids: Sequence[str], openers: Mapping[str, Callable[[], Any]], host: str,
                  provenances: Mapping[str, Mapping[str, Any]], node_id: str | None = None) -> dict[str, Any]:
    """The agent's side: one named, detached device actor per device, on the node of this host
    (`node_id`, default the node this process is attached to) and asking for the resources the host
    advertises for it. Returns farm id -> handle once every one answers."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from latbench.measuring.farm.actor import DeviceActor

    node = node_id or ray.get_runtime_context().get_node_id()
    here = NodeAffinitySchedulingStrategy(node, soft=False)
    actors = {}
    for did in device_ids:
        fid = farm_id(did, host)
        try:  # an actor of a previous agent run on this host: replace it
            ray.kill(ray.get_actor(actor_name(fid), namespace=NAMESPACE), no_restart=True)
            time.sleep(0.2)
        except ValueError:
            pass
        actors[fid] = DeviceActor.options(
            name=actor_name(fid), namespace=NAMESPACE, lifetime="detached", scheduling_strategy=here,
            resources=device_resources(fid, provenances.get(did, {}))).remote(fid, openers[did], host)
    infos, bad = wait_infos(actors)
    if bad:
        fid, why = next(iter(bad.items()))
        raise DeviceError(f"{fid} unavailable: {why}")
    return actors
