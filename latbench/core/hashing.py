"""Content hashes of artifacts: the one algorithm behind every `content_hash` latbench records."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory (.mlpackage) as sorted (relative path, file sha256) pairs."""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + _file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def tree_size(path: str | Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
