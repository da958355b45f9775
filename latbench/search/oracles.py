"""Accuracy sources: accuracy files, published figures, and the pluggable oracles the search asks.

An oracle maps an Arch to an ImageNet top-1 accuracy in percent. `load_oracle(spec)` accepts:

- ``pkg.module:function`` — the user's own evaluator (e.g. a supernet evaluated on a validation
  split). The module is imported (the current directory is importable); the function is called with
  an `latbench.space.Arch` and must return a number between 0 and 100.
- a CSV/YAML/JSON accuracy file — measured accuracies keyed by arch digest (full sha256 of the arch,
  or a prefix of at least 10 hex digits) or by name. See `read_accuracy_file` for the formats.
- ``proxy`` — a cheap stand-in for demos. It is NOT an accuracy: every output labels it as a proxy.

The proxy is a power law with diminishing returns in model size and depth:

    top1 = 86.35 - 21.3 * (params / 1e6) ** -0.5 * (blocks / 10) ** -0.3

where `params` counts every parameter (both classifier heads) and `blocks` is the total number of
blocks over the four stages. The two constants were fitted to EfficientFormerV2-S0 and -L's published
450-epoch top-1 (76.2 and 83.5); it then gives S1 79.5 and S2 82.0 (published 79.7 and 82.0). It is
strictly increasing in params and depth, so every shrinking action costs proxy accuracy.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from latbench.core.errors import LatbenchError, UsageError
from latbench.core.text import first_line, shown
from latbench.core.userfiles import read_yaml_or_json
from latbench.space import Arch, named_arch

ACCURACY_SUFFIXES = (".csv", ".yaml", ".yml", ".json")
_CALLABLE_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_HEX = re.compile(r"[0-9a-f]{10,64}")
PROXY_A, PROXY_B, PROXY_P_EXP, PROXY_D_EXP = 86.35, 21.3, 0.5, 0.3
PROXY_FORMULA = "top1 = 86.35 - 21.3 * (params/1e6)^-0.5 * (blocks/10)^-0.3"


# -- accuracy files -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccuracyEntry:
    top1: float
    source: str
    published: bool = False


def check_top1(value: Any, where: str) -> float:
    """A top-1 accuracy in percent: a real number in [0, 100]."""
    if isinstance(value, bool):
        value = None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: accuracy {shown(value)} is not a number") from None
    if not math.isfinite(x) or not 0 <= x <= 100:
        raise UsageError(f"{where}: accuracy {shown(x)} is not a top-1 percentage between 0 and 100")
    return x


@dataclass
class AccuracyTable:
    """Accuracies keyed by candidate name or arch digest (lower-case hex, full or >= 10 digits)."""

    source: str
    entries: dict[str, AccuracyEntry] = field(default_factory=dict)

    def lookup(self, name: str | None = None, arch: Arch | None = None) -> AccuracyEntry | None:
        if arch is not None:
            digest = arch.digest()
            hits = [k for k in self.entries if _HEX.fullmatch(k) and digest.startswith(k)]
            if len(hits) > 1:
                raise UsageError(f"accuracy file {self.source}: digest prefixes {hits[0]} and {hits[1]} both match "
                                 f"{arch.label()}; use longer prefixes")
            if hits:
                return self.entries[hits[0]]
        if name is not None and name in self.entries:
            return self.entries[name]
        if arch is not None and arch.name and arch.name in self.entries:
            return self.entries[arch.name]
        return None

    def __len__(self) -> int:
        return len(self.entries)


def read_accuracy_file(path: str | Path) -> AccuracyTable:
    """Measured/known accuracies from a CSV, YAML or JSON file.

    CSV: a key column (`name` and/or `digest`), a value column (`top1` or `accuracy`), optional `source`.
    YAML/JSON: either a mapping ``{name_or_digest: 77.1}`` (or ``{key: {top1: 77.1, source: ...}}``),
    or a list of mappings with `name` or `digest`, `top1` (or `accuracy`) and optional `source`.
    """
    path = Path(path)
    src = str(path)
    if path.suffix.lower() not in ACCURACY_SUFFIXES:
        raise UsageError(f"accuracy file {path}: expected a .csv, .yaml, .yml or .json file")
    if not path.is_file():
        raise UsageError(f"accuracy file {path} does not exist")
    if path.suffix.lower() == ".csv":
        records = _csv_records(path)
    else:
        data = read_yaml_or_json(path, "accuracy")
        if isinstance(data, dict):
            records = []
            for k, v in data.items():
                records.append({"name": str(k), **v} if isinstance(v, dict) else {"name": str(k), "top1": v})
        elif isinstance(data, list):
            records = data
        else:
            raise UsageError(f"accuracy file {path}: expected a mapping of name -> top-1 or a list of entries")
    table = AccuracyTable(src)
    for i, rec in enumerate(records):
        where = f"accuracy file {path} entry {i + 1}"
        if not isinstance(rec, dict):
            raise UsageError(f"{where}: expected a mapping with name/digest and top1")
        unknown = sorted(set(rec) - {"name", "digest", "top1", "accuracy", "source"})
        if unknown:
            raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: accuracy, digest, name, source, top1)")
        keys = [str(rec[k]).strip() for k in ("digest", "name") if _present(rec.get(k))]
        if not keys:
            raise UsageError(f"{where}: needs a 'name' or a 'digest'")
        if "digest" in rec and _present(rec["digest"]) and not _HEX.fullmatch(str(rec["digest"]).strip().lower()):
            raise UsageError(f"{where}: digest {rec['digest']!r} is not 10-64 hex digits (see `Arch.digest`)")
        raw = rec.get("top1", rec.get("accuracy"))
        if not _present(raw):
            raise UsageError(f"{where}: needs a 'top1' (or 'accuracy') value")
        entry = AccuracyEntry(check_top1(raw, where),
                              str(rec["source"]) if _present(rec.get("source")) else f"{path.name} (user-provided)")
        for k in keys:
            k = k.lower() if _HEX.fullmatch(k.lower()) else k
            if k in table.entries:
                raise UsageError(f"accuracy file {path}: {k!r} appears twice")
            table.entries[k] = entry
    return table


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v).strip() != ""


def _csv_records(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype={"name": str, "digest": str, "source": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UsageError(f"accuracy file {path} is not a valid CSV: {first_line(exc)}") from None
    if not ({"name", "digest"} & set(df.columns)):
        raise UsageError(f"accuracy file {path} needs a 'name' or 'digest' column")
    if not ({"top1", "accuracy"} & set(df.columns)):
        raise UsageError(f"accuracy file {path} needs a 'top1' (or 'accuracy') column")
    return df.to_dict("records")


@functools.lru_cache(maxsize=1)
def published_entries() -> tuple[dict[str, Any], ...]:
    """Every entry of latbench/data/published_accuracy.yaml (all schedules)."""
    ref = resources.files("latbench") / "data" / "published_accuracy.yaml"
    with resources.as_file(ref) as p:
        data = read_yaml_or_json(p, "published accuracy")
    return tuple(data["entries"])


def published_accuracy(name: str | None, arch: Arch | None = None, resolution: int | None = None
                       ) -> AccuracyEntry | None:
    """The default published top-1 for a registered model, or for an arch identical to a named variant.
    The source says it is a published figure, and notes a resolution other than the published one."""
    defaults = {e["model"]: e for e in published_entries() if e.get("default")}
    if arch is not None:  # by structure only: an edited arch file keeping the name S0 is not S0
        model = next((m for m in defaults if m.startswith("efficientformerv2_")
                      and named_arch(m).stages == arch.stages), None)
    else:
        model = name
    entry = defaults.get(model) if model else None
    if entry is None:
        return None
    source = f"published: {entry['source']}"
    if resolution is not None and entry.get("resolution") not in (None, resolution):
        source += f" (at {entry['resolution']}x{entry['resolution']}; this candidate runs at {resolution})"
    return AccuracyEntry(float(entry["top1"]), source, published=True)


# -- oracles --------------------------------------------------------------------------------------
class AccuracyOracle:
    """Maps an Arch to a top-1 accuracy (%). Subclasses set `kind` and implement `_evaluate`."""

    kind = "oracle"
    is_proxy = False

    def __init__(self, spec: str):
        self.spec = spec

    def __call__(self, arch: Arch) -> float:
        return self._evaluate(arch)

    def _evaluate(self, arch: Arch) -> float:
        raise NotImplementedError

    def label(self) -> str:
        """How outputs describe the accuracy column."""
        return f"{self.kind} {self.spec}"

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "is_proxy": self.is_proxy, "label": self.label()}


class CallableOracle(AccuracyOracle):
    kind = "callable"

    def __init__(self, spec: str, fn: Callable[[Arch], Any]):
        super().__init__(spec)
        self.fn = fn
        self._cache: dict[Arch, float] = {}

    def _evaluate(self, arch: Arch) -> float:
        if arch in self._cache:  # evaluating a supernet is expensive; the search revisits archs
            return self._cache[arch]
        try:
            value = self.fn(arch)
        except LatbenchError:
            raise
        except Exception as exc:
            msg = first_line(exc) if str(exc).strip() else ""
            raise LatbenchError(f"accuracy oracle {self.spec} failed on {arch.label()}: "
                                f"{type(exc).__name__}{': ' + msg if msg else ''}") from exc
        if isinstance(value, complex):
            value = None
        out = check_top1(value, f"accuracy oracle {self.spec} on {arch.label()}")
        self._cache[arch] = out
        return out

    def label(self) -> str:
        return f"oracle {self.spec}"


class TableOracle(AccuracyOracle):
    kind = "table"

    def __init__(self, spec: str, table: AccuracyTable):
        super().__init__(spec)
        self.table = table

    def _evaluate(self, arch: Arch) -> float:
        entry = self.table.lookup(arch.name, arch)
        if entry is None:
            raise UsageError(f"accuracy file {self.spec} has no entry for {arch.label()} (digest {arch.digest()[:16]}); "
                             "add a row keyed by its digest or name, or use a callable oracle")
        return entry.top1

    def label(self) -> str:
        return f"measured accuracies from {self.spec}"


class ProxyOracle(AccuracyOracle):
    kind = "proxy"
    is_proxy = True

    def __init__(self, spec: str = "proxy"):
        super().__init__(spec)

    def _evaluate(self, arch: Arch) -> float:
        return proxy_top1(_params(arch), sum(arch.depths))

    def label(self) -> str:
        return f"PROXY, not an accuracy ({PROXY_FORMULA})"


@functools.lru_cache(maxsize=65536)
def _params(arch: Arch) -> int:
    from latbench.blocks.configs import arch_params

    return arch_params(arch)


def proxy_top1(params: float, blocks: float) -> float:
    """The documented proxy (module docstring): a power law in params and total depth."""
    return PROXY_A - PROXY_B * (params / 1e6) ** -PROXY_P_EXP * (blocks / 10) ** -PROXY_D_EXP


def load_oracle(spec: str) -> AccuracyOracle:
    """`proxy`, `pkg.module:function`, or an accuracy file (see the module docstring)."""
    spec = (spec or "").strip()
    if spec == "proxy":
        return ProxyOracle()
    path = Path(spec)
    if path.suffix.lower() in ACCURACY_SUFFIXES:
        return TableOracle(spec, read_accuracy_file(path))
    if ":" in spec and not path.exists():
        if not _CALLABLE_SPEC.fullmatch(spec):
            raise UsageError(f"accuracy oracle {spec!r} is not of the form pkg.module:function")
        return CallableOracle(spec, import_callable(spec))
    raise UsageError(f"unknown accuracy oracle {spec!r}: give 'proxy', a pkg.module:function taking an Arch, "
                     "or a .csv/.yaml accuracy file")


def import_callable(spec: str) -> Callable[[Arch], Any]:
    module_name, attr = spec.split(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # the user's evaluator usually sits next to where they run latbench
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(f"accuracy oracle {spec}: cannot import module {module_name!r} ({exc})") from None
    except Exception as exc:  # the user's module failing at import time still reads as one line
        first = first_line(exc) if str(exc).strip() else ""
        raise UsageError(f"accuracy oracle {spec}: importing {module_name!r} failed: {type(exc).__name__}"
                         f"{': ' + first if first else ''}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise UsageError(f"accuracy oracle {spec}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise UsageError(f"accuracy oracle {spec}: {attr!r} is not callable")
    return fn
