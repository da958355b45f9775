"""Defaults a lab fixes once: `latbench.toml` in the working directory (or the file named by
$LATBENCH_CONFIG), else the `[tool.latbench]` table of ./pyproject.toml.

    device = "android:R5CT1234"   # default --device for every command that measures
    threads = 4                   # default --threads
    table = "tables/pixel7/efficientformerv2-r224"   # default table for lut/mes commands

Command-line flags always win over the file, and the API's arguments too: both take their
defaults from here (layer 0), so a script and the command line measure on the same device.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path
from typing import Any

from latbench.core.errors import UsageError

KEYS = {"device": str, "threads": int, "table": str}
KIND_NAMES = {str: "a string", int: "an integer"}


@functools.lru_cache(maxsize=1)
def defaults() -> dict[str, Any]:
    """The configured defaults ({} without a config file)."""
    explicit = os.environ.get("LATBENCH_CONFIG")
    if explicit:
        return _read(Path(explicit), None)
    if Path("latbench.toml").is_file():
        return _read(Path("latbench.toml"), None)
    if Path("pyproject.toml").is_file():
        return _read(Path("pyproject.toml"), ("tool", "latbench"))
    return {}


def _read(path: Path, section: tuple[str, ...] | None) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    where = str(path)
    for key in section or ():
        data = data.get(key) or {}
        where += f" [{key}]" if key == "tool" else f".{key}"
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a table of settings")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(KEYS)})")
    for key, kind in KEYS.items():
        if key in data and not isinstance(data[key], kind):
            raise UsageError(f"{where}: {key} must be {KIND_NAMES[kind]}, got {data[key]!r}")
    if data.get("threads", 1) < 1:
        raise UsageError(f"{where}: threads must be >= 1, got {data['threads']}")
    return dict(data)


def default(key: str, fallback: Any = None) -> Any:
    return defaults().get(key, fallback)


def default_for_help(key: str) -> Any:
    """The configured default while the parser is built: a broken config file must not break
    `--help` or commands that do not read it; those that do say what is wrong when they run."""
    try:
        return default(key)
    except UsageError:
        return None


def table_arg(value: str | None) -> str:
    """The table a command works on: the positional, else the configured default."""
    if value:
        return value
    configured = default("table")
    if configured:
        return configured
    raise UsageError("give a latency table (a directory, or a name under tables/), or set `table` in latbench.toml")


def default_device(table_device: str | None = None) -> str:
    """The device to measure on when none is given: the table's own (checking or validating a
    table), else the configured default, else the emulated CPU backend."""
    return table_device or default("device") or "cpu"
