"""Fine-grained joint search (EfficientFormerV2, Algorithm 1) over a latency table.

Start from the space's largest subnet. At every step, list the frontier — every action that shrinks
the current subnet and stays inside the space:

- A_N[i, j]  remove block i of stage j (only while the stage is deeper than the space's minimum).
             Attention blocks are the stage's trailing blocks, so removing block i removes an FFN block
             when i lies before them (attention count unchanged) and an attention block when i lies
             among them (attention count - 1). Both kinds are frontier actions whenever they exist.
             Removals that give the same subnet (neighbouring blocks with the same expansion and kind)
             are one action, labelled with the first such block.
- A_C[j]     narrow stage j to its next smaller width choice.
- A_E[i, j]  shrink block i's expansion ratio to the next smaller choice.

Every frontier subnet is scored: parameters analytically and latency from the table (both with the
vectorised `FastEstimator`), MES from those, accuracy from the oracle. The action taken is the one
with the smallest accuracy drop per MES gain, (acc_now - acc_new) / (MES_new - MES_now), among
actions that raise MES; exact ties go to a seeded random order (`seed`). The search stops at the
first subnet that meets the target (latency <= X ms, params <= N, or MES >= X). Every action
shrinks the subnet, so it ends after finitely many steps; a target the space cannot reach is an
error, detected up front from the smallest subnet reachable from the start.

The Pareto set is taken over the trajectory: (latency, accuracy) for latency targets, (params,
accuracy) for parameter targets, (-MES, accuracy) for MES targets.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from latbench.core.errors import UsageError
from latbench.core.progress import ProgressFn, no_progress
from latbench.efficiency.pareto import pareto_flags
from latbench.efficiency.score import MES, parse_count, parse_ms
from latbench.estimation.fast import FastEstimator
from latbench.search.oracles import AccuracyOracle
from latbench.space import Arch, SearchSpace, StageArch

TARGET_KINDS = ("latency", "params", "mes")


@dataclass(frozen=True)
class Target:
    kind: str  # latency | params | mes
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise UsageError(f"unknown target {self.kind!r} (known: {', '.join(TARGET_KINDS)})")
        if not math.isfinite(self.value) or self.value <= 0:
            raise UsageError(f"target {self.kind} must be a positive number, got {self.value!r}")

    @classmethod
    def parse(cls, latency: str | None = None, params: str | None = None, mes: str | None = None) -> Target:
        given = [(k, v) for k, v in (("latency", latency), ("params", params), ("mes", mes)) if v is not None]
        if len(given) != 1:
            raise UsageError("give exactly one target: --target-latency MS, --target-params N or --target-mes X")
        kind, raw = given[0]
        if kind == "latency":
            return cls(kind, parse_ms(raw, "--target-latency"))
        if kind == "params":
            return cls(kind, parse_count(raw, "--target-params"))
        return cls(kind, parse_count(raw, "--target-mes"))

    def met(self, latency_ms: float, params: float, mes: float) -> bool:
        if self.kind == "latency":
            return latency_ms <= self.value
        if self.kind == "params":
            return params <= self.value
        return mes >= self.value

    def cost(self, latency_ms: float, params: float, mes: float) -> float:
        """Lower is better; the Pareto set's cost axis."""
        return {"latency": latency_ms, "params": float(params), "mes": -mes}[self.kind]

    def describe(self) -> str:
        return {"latency": f"latency <= {self.value:g} ms", "params": f"params <= {self.value:,.0f}",
                "mes": f"MES >= {self.value:g}"}[self.kind]


@dataclass(frozen=True)
class Action:
    kind: str  # A_N | A_C | A_E
    stage: int  # 1-based
    block: int | None = None  # 1-based
    note: str = ""

    def label(self) -> str:
        where = f"[{self.block},{self.stage}]" if self.block is not None else f"[{self.stage}]"
        return f"{self.kind}{where} {self.note}".strip()


def frontier(arch: Arch, space: SearchSpace) -> list[tuple[Action, Arch]]:
    """Every shrinking action available from `arch` inside `space`, with the subnet it leads to."""
    out: list[tuple[Action, Arch]] = []
    seen: set[Arch] = set()

    def add(action: Action, stages: list[StageArch]) -> None:
        new = Arch(tuple(stages), arch.resolution)
        if new not in seen:
            seen.add(new)
            out.append((action, new))

    for s, (st, sp) in enumerate(zip(arch.stages, space.stages)):
        stage = s + 1
        first_attn = st.depth - st.attention
        if st.depth > sp.depth_min:
            for i in range(st.depth):
                is_attn = i >= first_attn
                exps = st.expansions[:i] + st.expansions[i + 1:]
                stages = list(arch.stages)
                stages[s] = StageArch(st.width, exps, st.attention - (1 if is_attn else 0))
                add(Action("A_N", stage, i + 1, f"remove {'attention' if is_attn else 'FFN'} block (e{st.expansions[i]})"),
                    stages)
        wi = sp.widths.index(st.width)
        if wi > 0:
            stages = list(arch.stages)
            stages[s] = StageArch(sp.widths[wi - 1], st.expansions, st.attention)
            add(Action("A_C", stage, None, f"width {st.width}->{sp.widths[wi - 1]}"), stages)
        for i, e in enumerate(st.expansions):
            ei = sp.expansions.index(e)
            if ei > 0:
                exps = st.expansions[:i] + (sp.expansions[ei - 1],) + st.expansions[i + 1:]
                stages = list(arch.stages)
                stages[s] = StageArch(st.width, exps, st.attention)
                add(Action("A_E", stage, i + 1, f"expansion {e}->{sp.expansions[ei - 1]}"), stages)
    return out


def floor_arch(start: Arch, space: SearchSpace) -> Arch:
    """The smallest subnet reachable from `start`: every stage at its narrowest width, smallest
    expansions and minimum depth, with as many attention blocks removed as the depth budget allows."""
    stages = []
    for st, sp in zip(start.stages, space.stages):
        removable = st.depth - sp.depth_min
        stages.append(StageArch(min(sp.widths), (min(sp.expansions),) * sp.depth_min,
                                max(0, st.attention - removable)))
    return Arch(tuple(stages), start.resolution, "floor")


@dataclass
class Step:
    step: int
    action: str | None
    arch: Arch
    params: int
    latency_ms: float
    mes: float
    accuracy: float
    ratio: float | None = None  # accuracy drop per MES gain of the action taken
    frontier_size: int = 0
    meets_target: bool = False
    pareto: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "action": self.action, "name": self.arch.name, "arch": self.arch.compact(),
                "digest": self.arch.digest(), "params": self.params, "latency_ms": self.latency_ms, "mes": self.mes,
                "accuracy": self.accuracy, "ratio": self.ratio, "frontier_size": self.frontier_size,
                "meets_target": self.meets_target, "pareto": self.pareto, "arch_dict": self.arch.to_dict()}


@dataclass
class Evaluation:
    """One frontier action evaluated at one step (all of them are kept, to audit every choice)."""

    step: int
    action: str
    params: int
    latency_ms: float
    mes: float
    accuracy: float
    mes_gain: float
    accuracy_drop: float
    ratio: float  # inf when the action does not raise MES (never taken)
    chosen: bool
    arch: str


@dataclass
class SearchResult:
    steps: list[Step]
    evaluations: list[Evaluation]
    target: Target
    mes: MES
    oracle: dict[str, Any]
    space: str
    table: str
    seed: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> Step:
        return self.steps[-1]

    @property
    def reached(self) -> bool:
        return self.final.meets_target

    def pareto(self) -> list[Step]:
        return [s for s in self.steps if s.pareto]

    def to_dict(self, evaluations: bool = False) -> dict[str, Any]:
        d = {"target": {"kind": self.target.kind, "value": self.target.value, "describe": self.target.describe()},
             "reached": self.reached, "steps": len(self.steps) - 1, "final": self.final.to_dict(),
             "trajectory": [s.to_dict() for s in self.steps], "pareto": [s.step for s in self.pareto()],
             "mes_constants": self.mes.constants(), "mes_line": self.mes.describe(), "oracle": self.oracle,
             "space": self.space, "table": self.table, "seed": self.seed, "seconds": self.seconds,
             "notes": self.notes}
        if evaluations:
            d["evaluations"] = [e.__dict__ for e in self.evaluations]
        return d




def run_search(fast: FastEstimator, oracle: AccuracyOracle, mes: MES, target: Target, *,
               start: Arch | None = None, seed: int = 0, max_steps: int | None = None,
               progress: ProgressFn | None = None) -> SearchResult:
    """Algorithm 1 (see the module docstring). Raises UsageError when the target is unreachable."""
    t0 = time.perf_counter()
    space = fast.space
    progress = progress or no_progress
    current = start or space.largest(fast.resolution)
    space.validate(current)
    current = Arch(current.stages, current.resolution, "step-000")
    floor = floor_arch(current, space)
    sc = fast.score_archs([current, floor], mes)
    if not target.met(float(sc.latency_ms[1]), int(sc.params[1]), float(sc.mes[1])):
        raise UsageError(
            f"target {target.describe()} is unreachable in space {space.name!r}: the smallest subnet reachable from "
            f"the start has latency {sc.latency_ms[1]:.4g} ms, {int(sc.params[1]):,} params, MES {sc.mes[1]:.4g}")
    rng = random.Random(seed)
    steps = [Step(0, None, current, int(sc.params[0]), float(sc.latency_ms[0]), float(sc.mes[0]), oracle(current))]
    steps[0].meets_target = target.met(steps[0].latency_ms, steps[0].params, steps[0].mes)
    evaluations: list[Evaluation] = []
    # Steps needed at most: every action removes a block, a width step or an expansion step.
    budget = sum(st.depth * len(sp.expansions) + len(sp.widths) for st, sp in zip(current.stages, space.stages))
    while not steps[-1].meets_target:
        cur = steps[-1]
        k = cur.step + 1
        if max_steps is not None and cur.step >= max_steps:
            raise UsageError(f"search stopped after --max-steps {max_steps} without reaching {target.describe()} "
                             f"(at latency {cur.latency_ms:.4g} ms, {cur.params:,} params, MES {cur.mes:.4g})")
        moves = frontier(cur.arch, space)
        if not moves:
            raise UsageError(f"target {target.describe()} unreachable: no action left at step {cur.step} "
                             f"(latency {cur.latency_ms:.4g} ms, {cur.params:,} params, MES {cur.mes:.4g})")
        archs = [a for _, a in moves]
        scores = fast.score_archs(archs, mes)
        accs = np.array([oracle(a) for a in archs], dtype=float)
        gain = scores.mes - cur.mes
        drop = cur.accuracy - accs
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(gain > 0, drop / gain, np.inf)
        ties = [rng.random() for _ in moves]  # drawn every step so the stream does not depend on ties
        best = min(range(len(moves)), key=lambda i: (ratio[i], ties[i]))
        if not math.isfinite(ratio[best]):
            raise UsageError(f"target {target.describe()} unreachable: no action raises MES at step {cur.step} "
                             f"(latency {cur.latency_ms:.4g} ms, MES {cur.mes:.4g}); check the table for blocks "
                             "whose smaller variants are slower")
        for i, (action, arch) in enumerate(moves):
            evaluations.append(Evaluation(k, action.label(), int(scores.params[i]), float(scores.latency_ms[i]),
                                          float(scores.mes[i]), float(accs[i]), float(gain[i]), float(drop[i]),
                                          float(ratio[i]), i == best, arch.compact()))
        action, arch = moves[best]
        arch = Arch(arch.stages, arch.resolution, f"step-{k:03d}")
        step = Step(k, action.label(), arch, int(scores.params[best]), float(scores.latency_ms[best]),
                    float(scores.mes[best]), float(accs[best]), float(ratio[best]), len(moves))
        step.meets_target = target.met(step.latency_ms, step.params, step.mes)
        steps.append(step)
        progress("search steps", k, budget)
    costs = [target.cost(s.latency_ms, s.params, s.mes) for s in steps]
    for s, flag in zip(steps, pareto_flags(costs, [s.accuracy for s in steps])):
        s.pareto = bool(flag)
    notes = []
    if oracle.is_proxy:
        notes.append("accuracies are a PROXY (see latbench.oracles), not measured top-1")
    if fast.table.meta.get("synthetic"):
        notes.append("the latency table is SYNTHETIC (made-up costs for tests/demos), not a measurement")
    return SearchResult(steps, evaluations, target, mes, oracle.to_dict(), space.name, fast.table.label(), seed,
                        time.perf_counter() - t0, notes)


def trajectory_frame(result: SearchResult) -> pd.DataFrame:
    rows = []
    for s in result.steps:
        d = s.to_dict()
        d.pop("arch_dict")
        rows.append(d)
    return pd.DataFrame(rows)
