"""Pareto optimality of candidates in the (latency, accuracy) plane."""

from __future__ import annotations

from collections.abc import Sequence


# -- Pareto ------------------------------------------------------------------------------------------
def pareto_flags(costs: Sequence[float], accuracies: Sequence[float | None]) -> list[bool | None]:
    """Pareto optimality for (lower cost, higher accuracy); None where the accuracy is unknown."""
    out: list[bool | None] = []
    pts = [(c, a) for c, a in zip(costs, accuracies)]
    for c, a in pts:
        if a is None:
            out.append(None)
            continue
        dominated = any(a2 is not None and c2 <= c and a2 >= a and (c2 < c or a2 > a) for c2, a2 in pts)
        out.append(not dominated)
    return out
