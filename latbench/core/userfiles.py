"""Reading files users write (spaces, archs, configs, accuracy lists): safe YAML, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from latbench.core.errors import UsageError


def is_int(x: Any) -> bool:
    """An integer that is not a bool (YAML's `true` is not a width)."""
    return isinstance(x, int) and not isinstance(x, bool)


def read_yaml_or_json(path: str | Path, what: str) -> Any:
    """Parse a YAML (or JSON, a YAML subset) file safely, with a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).replace("\n", " ")
        raise UsageError(f"{what} file {path} is not valid YAML/JSON: {reason}") from None


def check_keys(data: dict, known: set[str], where: str) -> None:
    """One-line error for the first key of `data` that is not in `known`."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
