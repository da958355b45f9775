"""Atomic file writes: a reader never sees a half-written file, an interrupted write leaves none."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and infinities as None and numpy scalars/arrays as plain Python, so strict
    JSON parsers accept what latbench writes (missing values are null, never NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":  # numpy scalars and arrays
        return json_safe(obj.tolist())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (no NaN) of `obj`, made safe by json_safe."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, dumps(obj) + "\n")


def writable_dir(path: str | Path, what: str = "output directory", *, create: bool = True) -> Path:
    """Prove that `path` can be (or is) a directory latbench can write into, before any work
    starts: a one-line UsageError otherwise (a file in the way, no permission, a read-only file
    system). With `create`, the directory is made; without, nothing is left behind."""
    from latbench.core.errors import UsageError

    out = Path(path).expanduser()
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {out}: {existing} is a file; give a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".latbench-probe-")
        os.close(fd)
        os.unlink(probe)
        if create:
            out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what} {out} is not writable: {exc.strerror or type(exc).__name__}") from None
    return out


def writable_file(path: str | Path, what: str = "output file") -> Path:
    """Check, creating nothing, that the file `path` can be written (not a directory, its
    directory creatable and writable)."""
    from latbench.core.errors import UsageError

    out = Path(path).expanduser()
    if out.is_dir():
        raise UsageError(f"{what} {out} is a directory; give a file name")
    writable_dir(out.parent if str(out.parent) else Path("."), f"directory of the {what}", create=False)
    return out
