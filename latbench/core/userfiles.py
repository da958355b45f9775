"""Reading files users write (spaces, archs, configs, accuracy lists): safe YAML, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from latbench.core.errors import UsageError


def is_int(x: Any) -> bool:
    """An integer that is not a bool (YAML's `true` is not a width)."""
    return isinstance(x, int) and not isinstance(x, bool)


#: A user file (space, arch, accuracy list, MES config) is a few kB; these bound what reading one costs.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Values after YAML aliases are expanded: a 600-byte alias bomb expands to billions.
MAX_VALUES = 200_000


def _count_values(data: Any, limit: int) -> int:
    """How many values `data` holds with shared (aliased) parts counted each time, up to `limit`."""
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def read_yaml_or_json(path: str | Path, what: str) -> Any:
    """Parse a YAML (or JSON, a YAML subset) file safely, with a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UsageError(f"{what} file {path} is {path.stat().st_size} bytes, over the {MAX_FILE_BYTES} a "
                         f"{what} file may have; check that it is the right file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).replace("\n", " ")
        raise UsageError(f"{what} file {path} is not valid YAML/JSON: {reason}") from None
    if _count_values(data, MAX_VALUES) > MAX_VALUES:
        raise UsageError(f"{what} file {path} expands to over {MAX_VALUES} values (YAML aliases nested in "
                         f"aliases?); write the values out")
    return data


def check_keys(data: dict, known: set[str], where: str) -> None:
    """One-line error for the first key of `data` that is not in `known`."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
