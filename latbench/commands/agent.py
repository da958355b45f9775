"""`latbench agent`: serve this host's devices to a device farm (a Ray cluster).

The agent joins the cluster as a Ray node of its own (`ray start --address HEAD --num-cpus 0
--resources ... --block`, a child process), advertising for every attached device one unit of
`latbench-device:<kind>:<model>` and one of `latbench-serial:<device>@<host>`; then it starts one
named, detached device actor per device on that node (latbench.measuring.farm.cluster.serve_devices)
and waits. Stopping the agent (Ctrl-C, SIGTERM) stops its node and with it its actors: a build
using them loses only their in-flight measurements, which go to other devices.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from latbench.commands._farm import add_cluster_flag, runner_opener
from latbench.commands._output import console
from latbench.commands._runner import add_runner_flags, device_options, runner_options
from latbench.core.errors import DeviceError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="serve this host's devices to a device farm (a Ray cluster)")
    add_cluster_flag(p, "serve this host's devices")
    p.add_argument("--device", action="append", default=None, metavar="ID",
                   help="serve this device (repeatable; default: every available device of this host)")
    p.add_argument("--host", default=None, help="this host's name in farm device ids (default: the hostname)")
    add_runner_flags(p)
    p.set_defaults(func=run)


def agent_devices(args: argparse.Namespace) -> dict[str, dict]:
    """device id -> provenance of the devices to serve (discovered; --device picks among them)."""
    from device_runners import discover_devices

    opts = runner_options(args)
    found = {d.id: d for d in discover_devices(**opts)}
    wanted = args.device or [i for i, d in found.items() if d.available]
    out = {}
    for did in wanted:
        info = found.get(did)
        if info is None or not info.available:
            why = "not found" if info is None else info.reason
            raise UsageError(f"cannot serve {did}: {why} (see `latbench devices`)")
        out[did] = dict(info.provenance)
    if not out:
        raise UsageError("no device to serve on this host (see `latbench devices`)")
    return out


def run(args: argparse.Namespace) -> int:
    from latbench.measuring.farm import require_ray
    from latbench.measuring.farm.names import check_host, clean, farm_id, host_resources, serial_resource

    require_ray("latbench agent")
    address = args.cluster or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("latbench agent needs the cluster's address: --cluster HOST:PORT (or set RAY_ADDRESS)")
    host = check_host(args.host or clean(socket.gethostname().split(".")[0]))
    devices = agent_devices(args)
    openers = {d: runner_opener(d, device_options(d, args)) for d in devices}
    resources = host_resources({farm_id(d, host): p for d, p in devices.items()})
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    node = subprocess.Popen([ray_cli, "start", "--address", address, "--num-cpus", "0", "--resources",
                             json.dumps(resources), "--block", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = None
    actors: dict = {}
    previous = signal.getsignal(signal.SIGTERM)
    try:
        from latbench.measuring.farm.cluster import connect, node_with, serve_devices

        stop = connect(address)
        signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which installs its own handler
        node_id = node_with(serial_resource(farm_id(next(iter(devices)), host)))
        actors = serve_devices(list(devices), openers, host, devices, node_id=node_id)
        for fid in actors:
            model = devices[fid.rsplit("@", 1)[0]].get("device_model") or ""
            console().print(f"serving {fid} {model}".rstrip(), highlight=False)
        console().print(f"agent of {host} joined {address}; Ctrl-C stops it and its devices", highlight=False)
        code = node.wait()
        if code:
            last = (node.stderr.read() if node.stderr else "").strip().splitlines()[-1:]
            raise DeviceError(f"the Ray node of this agent stopped (exit {code}){': ' + last[0] if last else ''}")
        return 0
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the agent's way to stop
        console().print(f"agent of {host} stopped", highlight=False)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _release(actors)  # its devices leave the farm now, not when the node is gone
        if stop is not None:
            stop()
        if node.poll() is None:
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _release(actors: dict) -> None:
    import ray

    for handle in actors.values():
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
