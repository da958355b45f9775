"""`latbench devices`: every device latbench can measure on, with provenance or why it is unavailable."""

from __future__ import annotations

import argparse
from typing import Any

from latbench.commands._farm import add_cluster_flag
from latbench.commands._output import add_json_flag, print_json, print_table

# Provenance keys worth a glance in the table, in order.
_SUMMARY_KEYS = ("device_model", "device_name", "soc", "os")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list devices (cpu, Android, iPhone, Mac, Qualcomm AI Hub) and whether "
                       "they are usable")
    add_cluster_flag(p, "list the devices")
    add_json_flag(p)
    p.set_defaults(func=run)


def _details(provenance: dict[str, Any]) -> str:
    parts = [str(provenance[k]) for k in _SUMMARY_KEYS if provenance.get(k)]
    runtime = " ".join(str(provenance[k]) for k in ("runtime", "runtime_version") if provenance.get(k))
    return ", ".join(dict.fromkeys([*parts, runtime] if runtime else parts))


def run(args: argparse.Namespace) -> int:
    if args.cluster is not None:
        return run_cluster(args)
    from device_runners import discover_devices

    infos = discover_devices()
    if args.json:
        print_json([i.to_dict() for i in infos])
        return 0
    rows = [
        (i.id, i.kind, "yes" if i.available else "no", _details(i.provenance) if i.available else i.reason)
        for i in infos
    ]
    print_table("devices", ["id", "kind", "available", "details / reason"], rows)
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    """Every device the agents of a cluster serve: farm id, host, state, provenance."""
    from latbench.commands._farm import require_farm
    from latbench.measuring.farm.cluster import cluster_devices, connect

    require_farm(args)
    stop = connect(args.cluster or None)
    try:
        devices = cluster_devices()
    finally:
        stop()
    if args.json:
        print_json(devices)
        return 0
    rows = [(d["id"], d.get("host") or "", d["state"] + (f" ({d['reason']})" if d.get("reason") else ""),
             str(d.get("measured", "")), _details(d.get("provenance") or {})) for d in devices]
    print_table("devices of the farm", ["id", "host", "state", "measured", "details"], rows)
    return 0
