"""Turning errors and values into the one-line messages and figures users see."""

from __future__ import annotations


def first_line(exc: BaseException | str, *, with_type: bool = False) -> str:
    """The first non-empty line of an error (for one-line messages); with `with_type`, prefixed
    by the exception's class name. An error without text gives its class name."""
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    name = type(exc).__name__ if isinstance(exc, BaseException) else "error"
    if not line:
        return name
    return f"{name}: {line}" if with_type and isinstance(exc, BaseException) else line


def weights_mb(params: float) -> float:
    """Size of `params` fp32 weights in MB (10^6 bytes)."""
    return params * 4 / 1e6


def shown(value: object) -> str:
    """A value as a message shows it: repr, with numpy scalars as the plain numbers they hold
    (`-0.3`, not `np.float64(-0.3)`)."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # type: ignore[union-attr]
    return repr(value)
