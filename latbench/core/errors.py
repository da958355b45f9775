"""The error taxonomy: every runner and command raises these, and the CLI turns them into one line.

Which class, by whose move it is to fix the problem:

- `UsageError` (exit 2): the user's input is wrong, and changing the command or their files
  fixes it: an unknown model, device or option; a malformed space, arch, config or accuracy file;
  an artifact file that is not a readable model of its format; a damaged latency table.
- `DeviceError` (exit 1): the device is unavailable or fails while working: not connected, not
  authorised, the wrong OS for it, its benchmark tool missing, crashing, hanging or printing
  garbage, its runtime unable to load or run an artifact latbench made for it.
  `DeviceLost` is the device disappearing mid-run; it lists what was left unmeasured.
- `ExportError` (exit 1): latbench could not produce an artifact (conversion or parity failed).
- Any `OSError` reaching the CLI (a path that cannot be written, a full disk) is a one-line
  failure too (exit 1); anything else is a bug and keeps its traceback.

Measurements finished before an error are always kept (the journal), so re-running resumes.
"""

from __future__ import annotations

from collections.abc import Sequence


class LatbenchError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it.

    `exit_code` is what the CLI exits with: 2 for bad input/usage, 1 for failures while working.
    """

    exit_code = 1


class UsageError(LatbenchError):
    """Bad input from the user: fixed by changing the command line or the user's files."""

    exit_code = 2


class DeviceError(LatbenchError):
    """A device is unavailable, or it (or its tool or runtime) failed while working."""

    exit_code = 1


class DeviceLost(DeviceError):
    """The device disappeared mid-run. `unmeasured` lists the configurations left unmeasured."""

    def __init__(self, message: str, unmeasured: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.unmeasured: list[str] = list(unmeasured)


class ExportError(LatbenchError):
    """An artifact could not be exported (conversion or parity check failed)."""

    exit_code = 1
