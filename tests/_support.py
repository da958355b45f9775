"""Helpers shared by test modules (import as `from _support import ...`; conftest modules clash by name)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def latbench_subprocess(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """The real console entry point in a child process (checks exit codes and that no traceback leaks)."""
    return subprocess.run(
        [sys.executable, "-m", "latbench", *args],
        cwd=kw.pop("cwd", REPO), capture_output=True, text=True, timeout=timeout, **kw,
    )
