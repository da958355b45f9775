"""Artifacts on a device host, keyed by content hash: the bytes of an artifact cross to a host once.

The driver `ray.put`s each artifact (a file's bytes, or a tar of an .mlpackage directory) once
and hands device actors the ObjectRefs nested in a list, so Ray does not pull them before the
actor knows whether its host lacks them. The first actor of a host that needs an artifact fetches
it under a lock, checks its content hash (the one algorithm of latbench.core.hashing), places it
atomically and notes the shipment; the host's other actors wait on the lock and find the file. A
later build (a resumed driver, another table) finds it on disk and ships nothing.

Where: $LATBENCH_FARM_CACHE, else $XDG_CACHE_HOME/latbench/farm, else ~/.cache/latbench/farm.
A `{node}` in LATBENCH_FARM_CACHE is replaced by the Ray node id (test clusters run several
"hosts" on one machine; each gets its own cache).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from latbench.core.errors import DeviceError
from latbench.core.hashing import tree_sha256

SHIPPED_LOG = "shipped.log"


def host_cache_dir(node_id: str = "") -> Path:
    env = os.environ.get("LATBENCH_FARM_CACHE")
    if env:
        return Path(env.replace("{node}", node_id[:16] or "local")).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "latbench" / "farm"


def pack(path: str | Path) -> bytes:
    """An artifact as bytes to ship: a file as it is, a directory (.mlpackage) as a tar whose
    members are sorted and carry no owner or time, so the same tree always packs the same."""
    path = Path(path)
    if path.is_file():
        return path.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(f.relative_to(path).as_posix())
            info.size = f.stat().st_size
            info.mode = 0o644
            with f.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


class HostCache:
    """This host's artifacts: `<root>/<sha256 of the bytes><suffix>` (a file, or an unpacked directory;
    the hash is latbench.core.hashing.tree_sha256's)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, content_hash: str, suffix: str) -> Path:
        if not content_hash.isalnum():
            raise DeviceError(f"malformed artifact hash {content_hash[:20]!r}")
        return self.root / f"{content_hash}{suffix}"

    def has(self, content_hash: str, suffix: str) -> bool:
        return self.path_for(content_hash, suffix).exists()

    def materialize(self, content_hash: str, suffix: str, is_dir: bool, fetch: Callable[[], bytes]) -> tuple[Path, bool]:
        """The host's copy of an artifact, fetched with `fetch()` if the host lacks it.
        Returns (path, shipped): shipped is True for the one caller that moved the bytes here."""
        final = self.path_for(content_hash, suffix)
        if final.exists():
            return final, False
        with self._locked(content_hash):
            if final.exists():  # another device of this host fetched it while we waited
                return final, False
            tmp = self.root / f".tmp-{content_hash}-{os.getpid()}{suffix}"
            _remove(tmp)
            data = fetch()
            if is_dir:
                tmp.mkdir()
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    tar.extractall(tmp, filter="data")
            else:
                tmp.write_bytes(data)
            got = tree_sha256(tmp)
            if got != content_hash:
                _remove(tmp)
                raise DeviceError(f"artifact {content_hash[:12]} arrived damaged (its bytes hash to {got[:12]})")
            os.replace(tmp, final)
            with open(self.root / SHIPPED_LOG, "a") as log:  # what crossed to this host, for reports and tests
                log.write(f"{content_hash} {time.time():.3f}\n")
            return final, True

    def shipped(self) -> list[str]:
        log = self.root / SHIPPED_LOG
        return [line.split()[0] for line in log.read_text().splitlines() if line.strip()] if log.exists() else []

    @contextlib.contextmanager
    def _locked(self, content_hash: str) -> Iterator[None]:
        with open(self.root / f".{content_hash}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
