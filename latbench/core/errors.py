"""Error types that the CLI turns into one-line messages instead of tracebacks."""

from __future__ import annotations


class LatbenchError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it.

    `exit_code` is what the CLI exits with: 2 for bad input/usage, 1 for failures while working.
    """

    exit_code = 1


class UsageError(LatbenchError):
    """Bad input from the user (unknown name, malformed file, invalid option value)."""

    exit_code = 2


class DeviceError(LatbenchError):
    """A device is unavailable, disappeared, or its tool failed."""

    exit_code = 1
