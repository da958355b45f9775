import json
import math

import pandas as pd
import pytest

from latbench.blocks.candidates import Candidate
from latbench.blocks.configs import arch_params, decompose
from latbench.core.errors import UsageError
from latbench.efficiency.score import MESConfig, resolve
from latbench.estimation.estimator import LatencyEstimator
from latbench.estimation.fast import FastEstimator
from latbench.report.search_files import write_search
from latbench.search.algorithm import Target, floor_arch, frontier, run_search
from latbench.search.oracles import CallableOracle, ProxyOracle
from latbench.space import Arch, SearchSpace, StageArch
from latbench.tables.synthetic import synthetic_table

SMALL = {
    "name": "small",
    "resolutions": [224],
    "stages": [
        {"widths": [32, 40], "depth": [1, 2], "expansions": [2, 3, 4]},
        {"widths": [48, 64], "depth": [1, 2], "expansions": [2, 3, 4]},
        {"widths": [96, 120], "depth": [2, 4], "expansions": [2, 3, 4], "attention": True},
        {"widths": [176, 224], "depth": [2, 3], "expansions": [2, 3, 4], "attention": True},
    ],
}


def synthetic_top1(arch: Arch) -> float:
    """A made-up oracle that weighs depth, attention and expansions differently from params."""
    return (60 + 3 * math.log(arch_params(arch) / 1e6) + 0.4 * sum(arch.depths)
            + 0.5 * sum(s.attention for s in arch.stages) + 0.05 * sum(sum(s.expansions) for s in arch.stages))


@pytest.fixture(scope="module")
def setup():
    space = SearchSpace.from_dict(SMALL, source="small")
    table = synthetic_table(space)
    mes = resolve(MESConfig(), table)
    return space, table, mes, FastEstimator(table, space)


def oracle():
    return CallableOracle("tests:synthetic_top1", synthetic_top1)


def test_search_reaches_target_and_every_step_is_the_argmin_of_its_frontier(setup):
    space, table, mes, fast = setup
    start = space.largest()
    start_lat = fast.score_archs([start]).latency_ms[0]
    target = Target("latency", 0.5 * start_lat)
    result = run_search(fast, oracle(), mes, target)
    assert result.reached and result.final.latency_ms <= target.value
    assert all(not s.meets_target for s in result.steps[:-1])  # stops at the first subnet meeting it
    assert len(result.steps) > 3
    est = LatencyEstimator(table)
    for prev, step in zip(result.steps, result.steps[1:]):
        moves = frontier(prev.arch, space)
        ratios = []
        for _, arch in moves:  # recompute independently of the fast estimator
            lat = est.estimate(Candidate("x", 224, arch=arch)).latency_ms
            gain = mes({"params": arch_params(arch), "latency": lat}) - prev.mes
            drop = prev.accuracy - synthetic_top1(arch)
            ratios.append(drop / gain if gain > 0 else math.inf)
        best = min(ratios)
        chosen = [a for (_, a), r in zip(moves, ratios) if a == step.arch]
        assert len(chosen) == 1
        assert step.ratio == pytest.approx(best, rel=1e-9, abs=1e-12)
        assert step.frontier_size == len(moves)
        # The recorded metrics are the step's own.
        assert step.params == arch_params(step.arch)
        assert step.latency_ms == pytest.approx(est.estimate(Candidate("x", 224, arch=step.arch)).latency_ms)
    # Every evaluation is recorded, one chosen per step.
    evals = pd.DataFrame([e.__dict__ for e in result.evaluations])
    assert evals.groupby("step")["chosen"].sum().eq(1).all()
    assert len(evals) == sum(s.frontier_size for s in result.steps[1:])


def test_trajectory_stays_inside_the_space(setup):
    space, _, mes, fast = setup
    result = run_search(fast, oracle(), mes, Target("params", 3.0e6))
    assert result.reached and result.final.params <= 3.0e6
    for s in result.steps:
        space.validate(s.arch)
        for st, sp in zip(s.arch.stages, space.stages):
            assert sp.depth_min <= st.depth and st.attention <= st.depth


def test_frontier_actions():
    space = SearchSpace.from_dict(SMALL)
    arch = Arch((StageArch(40, (4, 3)), StageArch(48, (2,)), StageArch(120, (4, 4, 3), 2), StageArch(176, (2, 2), 1)))
    actions = [a for a, _ in frontier(arch, space)]
    moves = {a.label(): new for a, new in frontier(arch, space)}
    # Stage 1: both blocks removable, width 40 -> 32, expansions 4->3 and 3->2.
    assert moves["A_N[1,1] remove FFN block (e4)"].stages[0] == StageArch(40, (3,))
    assert moves["A_C[1] width 40->32"].stages[0].width == 32
    assert moves["A_E[1,1] expansion 4->3"].stages[0].expansions == (3, 3)
    assert moves["A_E[2,1] expansion 3->2"].stages[0].expansions == (4, 2)
    # Stage 2 is at its minimum depth, narrowest width and smallest expansion: no action at all.
    assert not [a for a in actions if a.stage == 2]
    # Stage 3: removing an FFN block keeps both attention blocks; removing an attention block drops one.
    assert moves["A_N[1,3] remove FFN block (e4)"].stages[2] == StageArch(120, (4, 3), 2)
    assert moves["A_N[2,3] remove attention block (e4)"].stages[2] == StageArch(120, (4, 3), 1)
    assert moves["A_N[3,3] remove attention block (e3)"].stages[2] == StageArch(120, (4, 4), 1)
    # Stage 4 is at its minimum depth: no removal; two identical removals would have been one action.
    assert not [a for a in actions if a.kind == "A_N" and a.stage == 4]
    assert "A_C[3] width 120->96" in moves
    # Stage 1: 2 removals, 1 narrowing, 2 shrinks; stage 3: 3 removals, 1 narrowing, 3 shrinks; stage 4: none
    # (minimum depth, narrowest width, smallest expansions).
    assert len(actions) == len(moves) == (2 + 1 + 2) + (3 + 1 + 3)
    assert all(space.contains(a) for a in moves.values())
    dup = Arch((StageArch(40, (4, 4)),) + arch.stages[1:])
    removals = [a for a, _ in frontier(dup, space) if a.kind == "A_N" and a.stage == 1]
    assert len(removals) == 1


def test_floor_arch_keeps_attention_the_depth_budget_cannot_remove():
    space = SearchSpace.from_dict(SMALL)
    start = space.largest()
    floor = floor_arch(start, space)
    # Stage 4: depth 3 -> 2 removes one of its 3 attention blocks at most.
    assert floor.stages[3] == StageArch(176, (2, 2), 2)
    assert floor.stages[2] == StageArch(96, (2, 2), 2)


def test_unreachable_target_is_an_error(setup):
    _, _, mes, fast = setup
    with pytest.raises(UsageError, match="unreachable") as err:
        run_search(fast, oracle(), mes, Target("latency", 0.001))
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="unreachable"):
        run_search(fast, oracle(), mes, Target("mes", 1e9))


def test_target_already_met_at_the_start(setup):
    _, _, mes, fast = setup
    result = run_search(fast, oracle(), mes, Target("latency", 1e6))
    assert len(result.steps) == 1 and result.reached and result.final.action is None


def test_mes_target_and_seeded_determinism(setup):
    _, _, mes, fast = setup
    flat = CallableOracle("tests:flat", lambda arch: 75.0)  # every action ties at ratio 0: seeds decide
    start_mes = fast.score_archs([fast.space.largest()], mes).mes[0]
    a = run_search(fast, flat, mes, Target("mes", 2 * start_mes), seed=1)
    b = run_search(fast, flat, mes, Target("mes", 2 * start_mes), seed=1)
    assert [s.arch for s in a.steps] == [s.arch for s in b.steps]
    assert a.final.mes >= 2 * start_mes
    seeds = {tuple(s.arch for s in run_search(fast, flat, mes, Target("mes", 2 * start_mes), seed=k).steps)
             for k in range(4)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one target"),
        ({"latency": "1", "params": "2M"}, "exactly one target"),
        ({"latency": "-1"}, "positive"),
        ({"params": "lots"}, "positive number"),
        ({"mes": "0"}, "positive number"),
    ],
)
def test_target_parsing(kwargs, match):
    with pytest.raises(UsageError, match=match):
        Target.parse(**kwargs)


def test_target_parsing_values():
    assert Target.parse(latency="1.5ms") == Target("latency", 1.5)
    assert Target.parse(params="5M") == Target("params", 5e6)
    assert Target.parse(mes="80") == Target("mes", 80.0)


def test_outputs_hold_trajectory_pareto_set_and_proxy_label(setup, tmp_path):
    space, table, mes, fast = setup
    result = run_search(fast, ProxyOracle(), mes, Target("params", 4.0e6))
    files = write_search(result, tmp_path, table)
    traj = pd.read_csv(tmp_path / "trajectory.csv")
    assert len(traj) == len(result.steps) and traj["step"].tolist() == list(range(len(result.steps)))
    assert Arch.load(tmp_path / "final.yaml") == result.final.arch
    pareto = sorted((tmp_path / "pareto").glob("*.yaml"))
    assert len(pareto) == len(result.pareto()) > 0
    assert {Arch.load(p) for p in pareto} == {s.arch for s in result.pareto()}
    data = json.loads((tmp_path / "trajectory.json").read_text())
    assert data["oracle"]["is_proxy"] is True and data["reached"] is True
    assert data["mes_constants"]["metrics"][0]["alpha"] == 0.5
    md = (tmp_path / "report.md").read_text()
    assert "PROXY" in md and "Search trajectory" in md and "alpha=0.5" in md
    report_rows = pd.read_csv(tmp_path / "report.csv")
    assert set(report_rows["name"]) == {s.arch.name for s in result.pareto()}
    assert report_rows["macs"].tolist() == [sum(c.macs() for c in decompose(Arch.load(tmp_path / "pareto" / f"{n}.yaml")))
                                            for n in report_rows["name"]]
    assert (tmp_path / "frontier.csv").is_file() and "report.html" in files


def test_max_steps_stops_with_an_error(setup):
    _, _, mes, fast = setup
    start_lat = fast.score_archs([fast.space.largest()]).latency_ms[0]
    with pytest.raises(UsageError, match="--max-steps 2 without reaching"):
        run_search(fast, oracle(), mes, Target("latency", 0.5 * start_lat), max_steps=2)
