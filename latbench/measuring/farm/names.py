"""Names every host of a farm agrees on: custom resources, actor names, farm device ids, selectors,
and the environment latbench's Ray processes run with. No Ray import here.

An agent advertises, for each attached device, one unit of a *model* resource and one of a
*device* resource, e.g. for two Pixel 7 phones on one host:

    latbench-device:android:Pixel_7          = 2
    latbench-serial:android:R5CT1234@lab-3    = 1
    latbench-serial:android:R5CT5678@lab-3    = 1

A device actor asks for one unit of both: Ray places it on the host holding that device, never two
actors on one device. Farm device ids are `DEVICE_ID@HOST` (`android:R5CT1234@lab-3`); on a single
host (a local build with several --device) they are the plain device ids.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from latbench.core.errors import UsageError

NAMESPACE = "latbench"
ACTOR_PREFIX = "latbench-device/"
MODEL_PREFIX = "latbench-device"
SERIAL_PREFIX = "latbench-serial"
MODEL_SELECTOR = "model:"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+@-]")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

#: Provenance that must be equal for devices to share one table: what they are and what runs on them.
POOL_KEYS = ("device_kind", "device_model", "soc", "runtime", "runtime_version", "threads", "precision")


def clean(part: Any) -> str:
    """A resource-name part: letters, digits and _ . + @ - (anything else becomes _)."""
    return _UNSAFE.sub("_", str(part).strip()) or "_"


def check_host(host: str) -> str:
    if not _HOST_RE.match(host):
        raise UsageError(f"invalid host name {host!r} (letters, digits, . _ - only, at most 63)")
    return host


def farm_id(device_id: str, host: str | None) -> str:
    """`android:SERIAL@host`, or the plain device id on a single host (host None)."""
    return f"{device_id}@{host}" if host else device_id


def device_kind(device_id: str) -> str:
    return device_id.split(":", 1)[0]


def model_resource(kind: str, model: Any) -> str:
    """`latbench-device:android:Pixel_7` for kind android, model "Pixel 7"."""
    return f"{MODEL_PREFIX}:{clean(kind)}:{clean(model)}"


def serial_resource(fid: str) -> str:
    return f"{SERIAL_PREFIX}:{clean(fid)}"


def actor_name(fid: str) -> str:
    return ACTOR_PREFIX + fid


def device_resources(fid: str, provenance: Mapping[str, Any]) -> dict[str, float]:
    """The resources one device actor asks for (and its host advertises)."""
    kind = provenance.get("device_kind") or device_kind(fid)
    return {model_resource(kind, provenance.get("device_model") or kind): 1.0, serial_resource(fid): 1.0}


def host_resources(devices: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """What a host with these devices (farm id -> provenance) advertises."""
    out: dict[str, float] = {}
    for fid, prov in devices.items():
        for name, units in device_resources(fid, prov).items():
            out[name] = out.get(name, 0.0) + units
    return out


def ray_environment(*, loopback: bool = False) -> dict[str, str]:
    """Environment for every latbench process that starts or joins Ray.

    RAY_USAGE_STATS_ENABLED=0: even the minimal install would otherwise report usage statistics.
    `loopback` (a private single-host instance, and test clusters): every Ray socket listens on
    127.0.0.1 only. Ray reads it once, at import; never on a real multi-host farm (a joining host
    then refuses to start)."""
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if loopback:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def apply_ray_environment(*, loopback: bool = False) -> None:
    """Set ray_environment() in this process (values the user set win)."""
    for key, value in ray_environment(loopback=loopback).items():
        os.environ.setdefault(key, value)


def select(selectors: Sequence[str], devices: Iterable[Mapping[str, Any]]) -> list[str]:
    """Farm ids of `devices` (dicts with id, device_id, provenance) matching the selectors, in
    selector order: an exact farm id (`android:A@lab-3`), a device id on any host (`android:A`), a
    glob over either (`android:*`), or `model:KIND:MODEL` (every device of that model). A selector
    matching nothing is a UsageError listing what there is."""
    devices = list(devices)
    chosen: list[str] = []
    for sel in selectors:
        hits = [d["id"] for d in devices if _matches(sel, d)]
        if not hits:
            known = ", ".join(sorted(d["id"] for d in devices)) or "none"
            raise UsageError(f"no device matches '{sel}'; devices: {known} (see `latbench devices --cluster`)")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _matches(sel: str, d: Mapping[str, Any]) -> bool:
    if sel.startswith(MODEL_SELECTOR):
        kind, _, model = sel[len(MODEL_SELECTOR):].partition(":")
        prov = d.get("provenance") or {}
        return clean(kind) == clean(prov.get("device_kind") or device_kind(d["device_id"])) and \
            clean(model) == clean(prov.get("device_model"))
    if any(ch in sel for ch in "*?["):
        return fnmatch.fnmatchcase(d["id"], sel) or fnmatch.fnmatchcase(d["device_id"], sel)
    return sel in (d["id"], d["device_id"])


def pool_differences(provenances: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What keeps these devices (farm id -> provenance) out of one table: POOL_KEYS on which they
    differ, as "key: A=x, B=y"."""
    out = []
    for key in POOL_KEYS:
        values = {fid: p.get(key) for fid, p in provenances.items() if key in p}
        if len(set(map(repr, values.values()))) > 1:
            out.append(f"{key}: " + ", ".join(f"{fid}={v!r}" for fid, v in values.items()))
    return out


def common_provenance(provenances: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The provenance fields every device shares, with the same value."""
    items = list(provenances.values())
    if not items:
        return {}
    return {k: v for k, v in items[0].items() if all(k in p and p[k] == v for p in items[1:])}
