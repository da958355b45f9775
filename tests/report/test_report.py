import json

import pandas as pd
import pytest

from latbench.blocks.candidates import Candidate
from latbench.core.errors import UsageError
from latbench.efficiency.pareto import pareto_flags
from latbench.efficiency.score import MESConfig, resolve
from latbench.estimation.estimator import LatencyEstimator
from latbench.report.model import build_report, latency_report
from latbench.report.writers import write_report
from latbench.search.oracles import AccuracyEntry, published_accuracy
from latbench.space import Arch, SearchSpace, StageArch, named_arch
from latbench.tables.synthetic import synthetic_table

SMALL = {
    "name": "small",
    "resolutions": [224],
    "stages": [
        {"widths": [32, 40], "depth": [1, 2], "expansions": [3, 4]},
        {"widths": [48, 64], "depth": [1, 2], "expansions": [3, 4]},
        {"widths": [96, 120], "depth": [2, 6], "expansions": [3, 4], "attention": True},
        {"widths": [176, 224], "depth": [2, 4], "expansions": [3, 4], "attention": True},
    ],
}


def test_pareto_flags_hand_cases():
    assert pareto_flags([1, 2, 3, 2], [70, 75, 74, None]) == [True, True, False, None]
    assert pareto_flags([1, 1], [70, 70]) == [True, True]  # identical points dominate neither
    assert pareto_flags([1, 1], [70, 71]) == [False, True]  # same cost, less accurate
    assert pareto_flags([2, 1], [70, 70]) == [False, True]  # same accuracy, slower
    assert pareto_flags([], []) == []


@pytest.fixture(scope="module")
def setup():
    space = SearchSpace.from_dict(SMALL, source="small")
    table = synthetic_table(space)
    mes = resolve(MESConfig(), table)
    s0 = named_arch("efficientformerv2_s0")
    tiny = Arch((StageArch(32, (3,)), StageArch(48, (3,)), StageArch(96, (3, 3), 1), StageArch(176, (3, 3), 1)),
                224, "tiny")
    # Same widths as S0, so the MAC counts (slow: torch's FLOP counter per block) are shared.
    mid = Arch((StageArch(32, (4, 4)), StageArch(48, (4,)), StageArch(96, (4, 4, 3, 3), 2),
                StageArch(176, (4, 3, 3), 2)), 224, "mid")
    cands = [Candidate(a.name, 224, arch=a) for a in (s0, tiny, mid)]
    user = {"tiny": AccuracyEntry(64.0, "my-eval.csv (user-provided)")}

    def accuracy(c):
        return user.get(c.name) or published_accuracy(c.name, c.arch, c.resolution)

    report = build_report(cands, table, mes, accuracy=accuracy, title="test report")
    return table, mes, cands, report


def test_rows_are_scored_ranked_and_labelled(setup):
    table, mes, cands, report = setup
    est = LatencyEstimator(table)
    by_name = {r.name: r for r in report.rows}
    assert set(by_name) == {"efficientformerv2_s0", "tiny", "mid"}
    for c in cands:
        row = by_name[c.name]
        assert row.latency_ms == pytest.approx(est.estimate(c).latency_ms)
        assert row.params == c.params()
        assert row.mes == pytest.approx(mes({"params": row.params, "latency": row.latency_ms}))
        assert sum(row.per_group_ms.values()) == pytest.approx(row.latency_ms)
    assert [r.rank for r in report.rows] == [1, 2, 3]
    assert [r.mes for r in report.rows] == sorted((r.mes for r in report.rows), reverse=True)
    s0 = by_name["efficientformerv2_s0"]
    assert s0.accuracy == 76.2 and s0.accuracy_source.startswith("published:")
    assert s0.params == 3_600_256 and round(s0.macs / 1e9, 3) == 0.396
    assert by_name["tiny"].accuracy == 64.0 and "user-provided" in by_name["tiny"].accuracy_source
    assert by_name["mid"].accuracy is None and by_name["mid"].pareto is None
    # tiny is faster than S0 and S0 more accurate: both on the front.
    assert by_name["tiny"].pareto is True and s0.pareto is True
    assert any("SYNTHETIC" in n for n in report.notes)


def test_report_files(setup, tmp_path):
    _, mes, _, report = setup
    files = write_report(report, tmp_path)
    for name in ("report.md", "report.html", "report.csv", "report.json", "accuracy_latency.png",
                 "accuracy_latency.svg", "latency_breakdown.png", "latency_breakdown.svg"):
        assert (tmp_path / name).is_file() and name in files
    csv = pd.read_csv(tmp_path / "report.csv")
    assert csv["name"].tolist() == [r.name for r in report.rows]
    assert csv["mes"].tolist() == pytest.approx([r.mes for r in report.rows])
    assert csv["mes_constants"].str.contains("alpha=0.5").all()
    assert {"stage3_ms", "stem_ms", "head_ms"} <= set(csv.columns)
    md = (tmp_path / "report.md").read_text()
    for r in report.rows:
        assert f"| {r.rank} | {r.name} |" in md
    assert mes.describe() in md and "published: EfficientFormerV2 paper" in md
    html = (tmp_path / "report.html").read_text()
    assert html.count("src='data:image/svg+xml;base64,") == 2
    assert "src='accuracy" not in html and "http" not in html  # self-contained
    assert "efficientformerv2_s0" in html and "alpha=0.5" in html
    assert (tmp_path / "accuracy_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "latency_breakdown.svg").read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["mes_constants"]["score"] == 100 and len(data["rows"]) == 3


def test_measured_latencies_drive_mes_ranking_and_pareto(setup):
    table, mes, cands, _ = setup
    # Pretend the device disagrees with the table: tiny is slowest when measured.
    measured = {"efficientformerv2_s0": 2.0, "tiny": 9.0, "mid": 4.0}
    mes_m = mes.with_latency_unit(2.5, "mobilenetv2_100 measured on test")
    acc = {"efficientformerv2_s0": AccuracyEntry(76.2, "p"), "tiny": AccuracyEntry(64.0, "u")}
    rep = build_report(cands, table, mes, accuracy=lambda c: acc.get(c.name), measured=measured,
                       mes_measured=mes_m, measured_device="test")
    by = {r.name: r for r in rep.rows}
    for name, ms in measured.items():
        assert by[name].measured_ms == ms
        assert by[name].mes_measured == pytest.approx(100 * (by[name].params / 3e6) ** -0.5 * (ms / 2.5) ** -1)
    assert [r.name for r in rep.rows] == sorted(measured, key=lambda n: -by[n].mes_measured)
    assert by["tiny"].pareto is False and by["efficientformerv2_s0"].pareto is True
    assert "measured on test" in rep.constants_line()


def test_latency_report_adds_up(setup, capsys):
    table, mes, cands, _ = setup
    lr = latency_report(named_arch("efficientformerv2_s0"), table)
    e = LatencyEstimator(table).estimate(cands[0])
    assert lr.latency_ms == pytest.approx(e.latency_ms)
    assert sum(b["est_ms"] for b in lr.blocks) == pytest.approx(lr.latency_ms)
    assert sum(lr.per_stage_ms.values()) == pytest.approx(lr.latency_ms)
    assert list(lr.per_stage_ms) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert lr.blocks[0]["key"] == "stem-r224-c32" and lr.blocks[-1]["kind"] == "head"
    assert sum(b["count"] for b in lr.blocks) == sum(b.count for b in e.blocks)
    assert lr.mes == pytest.approx(mes({"params": 3_600_256, "latency": lr.latency_ms}))
    assert json.loads(json.dumps(lr.to_dict()))["params"] == 3_600_256
    from latbench.commands.model_build import print_latency_report

    print_latency_report(lr)
    out = capsys.readouterr().out
    assert "stage3" in out and "MES" in out and "alpha=1" in out


def test_bad_candidates(setup):
    table, mes, cands, _ = setup
    with pytest.raises(UsageError, match="no candidates"):
        build_report([], table, mes)
    # An arch outside the table's space is refused, naming what is outside and how to get a table for it.
    wide = Arch((StageArch(48, (4,)),) + named_arch("efficientformerv2_s0").stages[1:], 224, "wide")
    with pytest.raises(UsageError, match="stage 1 width 48 not in") as err:
        build_report([Candidate("wide", 224, arch=wide)], table, mes)
    assert "latbench lut build" in str(err.value) and "\n" not in str(err.value)
