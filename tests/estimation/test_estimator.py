import pandas as pd
import pytest

from latbench.blocks.candidates import resolve_candidate
from latbench.blocks.configs import EmptyConfig, decompose, overhead_blocks
from latbench.core.errors import UsageError
from latbench.estimation.estimator import LatencyEstimator
from latbench.estimation.fast import FastEstimator
from latbench.space import SearchSpace, named_arch
from latbench.tables.overhead import (
    FORMS,
    WEIGHTS,
    OverheadModel,
    attention_ms,
    coefficient,
    entry_counts,
    fit_form,
    fit_scale,
    fit_scales,
    scaled,
)
from latbench.tables.table import BLOCK_COLUMNS, LatencyTable


def make_table(keys_ms: dict[str, float], overhead=None) -> LatencyTable:
    rows = [{"key": k, "kind": k.split("-")[0], "latency_ms": v} for k, v in keys_ms.items()]
    meta = {"device_id": "cpu", "resolution": 224, "overhead": overhead or {}}
    return LatencyTable(pd.DataFrame(rows, columns=BLOCK_COLUMNS), meta=meta)


def s0_table(with_empties=True, scale=1.0):
    blocks = decompose(named_arch("efficientformerv2_s0"))
    ms = {b.key: 0.1 + 0.01 * i for i, b in enumerate(dict.fromkeys(blocks))}
    if with_empties:
        for i, e in enumerate(overhead_blocks(blocks) + [EmptyConfig(224, 3, 224, 224)]):
            ms[e.key] = 0.02 + 0.001 * i
    overhead = {"scale": scale, "calibrated": scale != 1.0}
    return make_table(ms, overhead), blocks, ms


def test_estimate_is_sum_of_entries_minus_overheads_plus_input_overhead():
    table, blocks, ms = s0_table()
    est = LatencyEstimator(table).estimate(resolve_candidate("efficientformerv2_s0"))
    empty = lambda b: ms[EmptyConfig.for_shape(224, b.input_shape).key]  # noqa: E731
    expect = sum(ms[b.key] - empty(b) for b in blocks) + ms[EmptyConfig(224, 3, 224, 224).key]
    assert est.latency_ms == pytest.approx(expect)
    assert est.plain_sum_ms == pytest.approx(sum(ms[b.key] for b in blocks))
    assert est.latency_ms < est.plain_sum_ms
    assert sum(b.count for b in est.blocks) == len(blocks)
    assert sum(est.per_group().values()) == pytest.approx(est.latency_ms)
    assert set(est.per_group()) == {"stem", "stage1", "stage2", "stage3", "stage4", "head"}


def test_calibration_is_applied():
    table, blocks, _ = s0_table(scale=1.1)
    plain_table, _, _ = s0_table()
    cand = resolve_candidate("efficientformerv2_s0")
    raw = LatencyEstimator(plain_table).estimate(cand).latency_ms
    est = LatencyEstimator(table).estimate(cand)
    assert est.latency_ms == pytest.approx(1.1 * raw)
    assert "calibrated" in est.method


def test_an_uncalibrated_table_says_so_in_every_estimate():
    table, _, _ = s0_table()
    est = LatencyEstimator(table).estimate(resolve_candidate("efficientformerv2_s0"))
    assert not est.calibrated and "UNCALIBRATED" in est.method
    assert est.warnings and "uncalibrated" in est.warnings[0] and "\n" not in est.warnings[0]
    assert est.to_dict()["calibrated"] is False and est.to_dict()["warnings"] == est.warnings
    cal, _, _ = s0_table(scale=1.1)
    est = LatencyEstimator(cal).estimate(resolve_candidate("efficientformerv2_s0"))
    assert est.calibrated and est.warnings == []


def test_doubtful_entries_are_carried_into_the_estimates_that_use_them():
    table, blocks, _ = s0_table(scale=1.1)
    bad = blocks[5].key
    table.blocks["flags"] = [("no-consensus" if k == bad else None) for k in table.blocks["key"]]
    est = LatencyEstimator(table).estimate(resolve_candidate("efficientformerv2_s0"))
    assert len(est.warnings) == 1 and bad in est.warnings[0] and "no-consensus" in est.warnings[0]
    assert "lut check" in est.warnings[0] and "--fix" in est.warnings[0]
    # An architecture that does not use the entry carries no warning.
    other = LatencyEstimator(table).estimate_blocks("x", [b for b in blocks if b.key != bad])
    assert other.warnings == []


def test_without_empties_it_is_the_plain_sum():
    table, blocks, ms = s0_table(with_empties=False)
    est = LatencyEstimator(table).estimate(resolve_candidate("efficientformerv2_s0"))
    assert est.latency_ms == pytest.approx(sum(ms[b.key] for b in blocks)) == pytest.approx(est.plain_sum_ms)


def test_missing_keys_error_lists_them_and_says_how_to_fill():
    table, blocks, ms = s0_table()
    gone = blocks[3].key
    table.blocks = table.blocks[table.blocks["key"] != gone]
    with pytest.raises(UsageError) as err:
        LatencyEstimator(table).estimate(resolve_candidate("efficientformerv2_s0"))
    msg = str(err.value)
    assert gone in msg and "latbench lut build" in msg and "\n" not in msg


def test_reference_model_is_one_block():
    key = "model-mobilenetv2_100-r224"
    table = make_table({key: 5.0, EmptyConfig(224, 3, 224, 224).key: 0.1})
    est = LatencyEstimator(table).estimate(resolve_candidate("mobilenetv2_100"))
    assert est.latency_ms == pytest.approx(5.0)  # measured whole: taken as it is
    table.meta["overhead"] = {"scale": 1.2}
    est = LatencyEstimator(table).estimate(resolve_candidate("mobilenetv2_100"))
    assert est.latency_ms == pytest.approx(5.0)  # the block-sum calibration does not apply
    assert est.warnings == []  # nor does a warning about it


def test_fit_scale_never_gives_a_negative_scale():
    # Blocks that read no slower than their empty models leave negative raw sums: no scale fits.
    assert fit_scale([-0.2, -0.1], [1.0, 0.8]) == 1.0
    assert all(v == 1.0 for v in fit_scales([{"attention": 0.0, "rest": -0.3}], [1.0]).values())


def test_fit_scale_recovers_the_scale_with_relative_weights():
    raw = [1.0, 2.0, 4.0, 8.0]
    assert fit_scale(raw, [0.9 * x for x in raw]) == pytest.approx(0.9)
    # Relative weighting: a 10 % miss on a small model counts as much as on a large one.
    # (unweighted least squares would give ~0.90, dominated by the large model).
    s = fit_scale([1.0, 10.0], [1.1, 9.0])
    r = [1.0 / 1.1, 10.0 / 9.0]
    assert s == pytest.approx(sum(r) / sum(x * x for x in r))
    assert fit_scale([2.0], [3.0]) == 1.5
    assert fit_scale([], []) == 1.0


def test_attention_mixers_and_the_rest_each_have_a_scale():
    table, blocks, ms = s0_table(scale=1.0)
    plain = LatencyEstimator(table).estimate(resolve_candidate("efficientformerv2_s0"))
    table.meta["overhead"] = {"scales": {"attention": 1.25, "rest": 1.07}, "scale": 1.07, "calibrated": True}
    est = LatencyEstimator(table).estimate(resolve_candidate("efficientformerv2_s0"))
    parts = OverheadModel(table.latency_ms()).parts(blocks)
    assert parts["attention"] > 0 and parts["strided_attention"] > 0  # S0: attention in stages 3 and 4
    assert attention_ms(parts) + parts["rest"] == pytest.approx(plain.latency_ms)
    # A table without a strided scale (every table before it) gives strided mixers the attention scale.
    assert est.latency_ms == pytest.approx(1.25 * attention_ms(parts) + 1.07 * parts["rest"])
    assert "attention mixers x1.2500" in est.method and est.scales == {"attention": 1.25, "rest": 1.07}
    assert "strided" not in est.method


def test_strided_attention_mixers_have_a_scale_of_their_own_where_a_fit_gives_one():
    table, blocks, ms = s0_table(scale=1.0)
    scales = {"attention": 1.25, "strided_attention": 1.5, "rest": 1.07}
    table.meta["overhead"] = {"scales": scales, "scale": 1.07, "calibrated": True}
    estimator = LatencyEstimator(table)
    est = estimator.estimate(resolve_candidate("efficientformerv2_s0"))
    parts = OverheadModel(table.latency_ms()).parts(blocks)
    expected = 1.25 * parts["attention"] + 1.5 * parts["strided_attention"] + 1.07 * parts["rest"]
    assert est.latency_ms == pytest.approx(expected) and est.latency_ms == pytest.approx(scaled(scales, parts))
    assert "strided ones x1.5000" in est.method
    # The batch estimator folds the same scale into each block.
    fast = FastEstimator(table, space=SearchSpace.default())
    [batch] = fast.latency(fast.encode([named_arch("efficientformerv2_s0")]))
    assert batch == pytest.approx(expected)


def test_entry_counts_are_the_raw_sum_as_a_combination_of_entries():
    # The sum over entries of coefficient x latency is the raw estimate, with and without empty
    # models; the stem's empty model is the input's, so its coefficients cancel.
    table, blocks, ms = s0_table()
    counts = entry_counts(blocks)
    raw = OverheadModel(ms).raw(blocks)[0]
    assert sum(c * ms[k] for k, c in counts.items()) == pytest.approx(raw)
    assert EmptyConfig(224, 3, 224, 224).key not in counts
    assert all(c < 0 for k, c in counts.items() if k.startswith("empty-"))
    plain = entry_counts(blocks, empty_models=False)
    assert not any(k.startswith("empty-") for k in plain) and sum(plain.values()) == len(blocks)
    assert sum(c * ms[k] for k, c in plain.items()) == pytest.approx(sum(ms[b.key] for b in blocks))


def test_fit_form_fits_the_form_it_is_given_on_every_model():
    # Models that follow the staged form with a cold-weights term exactly: that form recovers it;
    # one common scale cannot, and its fit is what a single scale does at best on them.
    truth = {"attention": 1.25, "strided_attention": 1.5, "rest": 1.0, WEIGHTS: 0.05}
    shapes = ((1.0, 0.5, 9.0, 3.0), (3.0, 4.0, 7.0, 6.0), (0.5, 5.0, 5.0, 2.0), (2.0, 1.0, 12.0, 9.0),
              (6.0, 2.0, 4.0, 4.0))
    parts = [{"attention": a, "strided_attention": s, "rest": r, WEIGHTS: w} for a, s, r, w in shapes]
    measured = [scaled(truth, p) for p in parts]
    staged = fit_form(parts, measured, [*FORMS["staged"], (WEIGHTS,)])
    assert all(staged[g] == pytest.approx(v) for g, v in truth.items())
    common = fit_form(parts, measured, FORMS["common"])
    assert len({coefficient(common, g) for g in ("attention", "strided_attention", "rest")}) == 1
    assert max(abs(scaled(common, p) / m - 1) for p, m in zip(parts, measured)) > 0.01
    with pytest.raises(ValueError):
        fit_form(parts, measured[:-1], FORMS["common"])


def test_fit_scales_gives_strided_attention_its_scale_only_where_models_tell_it_apart():
    truth = {"attention": 1.25, "strided_attention": 1.5, "rest": 1.0}
    shapes = ((1.0, 0.5, 9.0), (3.0, 4.0, 7.0), (0.5, 5.0, 5.0), (2.0, 1.0, 12.0), (6.0, 2.0, 4.0),
              (4.0, 0.0, 8.0), (0.0, 3.0, 6.0), (1.5, 2.5, 10.0))
    parts = [{"attention": a, "strided_attention": s, "rest": r} for a, s, r in shapes]
    noise = [1 + 0.01 * (i % 3 - 1) for i in range(len(parts))]
    fit = fit_scales(parts, [scaled(truth, p) * n for p, n in zip(parts, noise)])
    assert all(fit[g] == pytest.approx(v, rel=0.05) for g, v in truth.items())
    # Both kinds of attention alike (one attention scale, the same noise): no scale of its own.
    alike = {"attention": 1.3, "rest": 1.0}
    assert "strided_attention" not in fit_scales(parts, [scaled(alike, p) * n for p, n in zip(parts, noise)])
    # Four models are too few to judge three scales by; an adapt's three (two sampled models and
    # the twin of one) get one attention scale, however its two kinds differ.
    assert "strided_attention" not in fit_scales(parts[:4], [scaled(truth, p) for p in parts[:4]])
    twin = [{"attention": 1.0, "strided_attention": 1.4, "rest": 6.0},
            {"attention": 3.0, "strided_attention": 4.0, "rest": 7.0}, {"rest": 7.0}]
    grouped = fit_scales(twin, [scaled(truth, p) for p in twin])
    assert "strided_attention" not in grouped and grouped["attention"] > grouped["rest"]


def test_fit_scales_recovers_per_group_scales_and_falls_back_to_one():
    truth = {"attention": 1.3, "rest": 1.05}
    parts = [{"attention": a, "rest": r} for a, r in ((1.0, 9.0), (3.0, 7.0), (5.0, 5.0), (2.0, 12.0), (6.0, 4.0))]
    measured = [truth["attention"] * p["attention"] + truth["rest"] * p["rest"] for p in parts]
    fit = fit_scales(parts, measured)
    assert fit["attention"] == pytest.approx(1.3) and fit["rest"] == pytest.approx(1.05)
    # Three models are too few for two scales where their attention shares are alike (sampled
    # models: here 0.20-0.30); one common scale then ...
    alike = [parts[1], {"attention": 2.0, "rest": 8.0}, {"attention": 2.5, "rest": 7.5}]
    few = fit_scales(alike, [truth["attention"] * p["attention"] + truth["rest"] * p["rest"] for p in alike])
    assert few["attention"] == few["rest"]
    # ... and enough where they span 0.15 or more (an adapt's twin pair: a model and the same
    # model without attention, shares 0.3 and 0).
    twins = [parts[1], {"attention": 0.0, "rest": 7.0}, parts[3]]
    two = fit_scales(twins, [truth["attention"] * p["attention"] + truth["rest"] * p["rest"] for p in twins])
    assert two["attention"] == pytest.approx(1.3) and two["rest"] == pytest.approx(1.05)
    # Models whose attention share is the same cannot tell the groups apart either.
    same = [{"attention": 1.0 * k, "rest": 4.0 * k} for k in (1, 2, 3, 4, 5)]
    one = fit_scales(same, [1.1 * 5.0 * k for k in (1, 2, 3, 4, 5)])
    assert one["attention"] == one["rest"] == pytest.approx(1.1)


def test_two_scales_only_where_they_predict_held_out_models_better_than_one():
    """A few models with noise unrelated to their attention share (one common true scale, 1.1):
    non-negative least squares still finds two scales (1.14 / 1.06); on a host slow in 72 % of its
    runs such a fit read attention x1.59, rest x0.59. Each model predicted from the others says
    the second scale only fits the noise, so one scale stands."""
    parts = [{"attention": a, "rest": r} for a, r in ((1.0, 9.0), (3.0, 7.0), (5.0, 5.0), (2.0, 12.0), (6.0, 4.0))]
    noise = [1.1, 0.9, 1.08, 0.92, 1.0]
    measured = [1.1 * (p["attention"] + p["rest"]) * n for p, n in zip(parts, noise)]
    fit = fit_scales(parts, measured)
    assert fit["attention"] == fit["rest"] == pytest.approx(fit_scale([sum(p.values()) for p in parts], measured))
    # A real difference between the groups, under 2 % noise, keeps its two scales.
    real = [(1.3 * p["attention"] + 1.05 * p["rest"]) * (1 + 0.02 * (i % 3 - 1)) for i, p in enumerate(parts)]
    two = fit_scales(parts, real)
    assert two["attention"] == pytest.approx(1.3, rel=0.05) and two["rest"] == pytest.approx(1.05, rel=0.05)


def test_the_cold_weights_term_is_fitted_only_where_it_predicts_held_out_models():
    """Whole models that pay for their weights beyond what the blocks' warm times carry (a cost
    per parameter: on int8 LiteRT 0.09-0.12 ms per million): the fit finds the coefficient beside
    the scale; where latency carries no such cost, noise does not buy the term."""
    shapes = ((1.0, 9.0, 3.0), (3.0, 7.0, 12.0), (5.0, 5.0, 6.0), (2.0, 12.0, 20.0), (6.0, 4.0, 4.0),
              (4.0, 8.0, 16.0), (2.5, 6.0, 9.0), (1.5, 10.0, 25.0))
    parts = [{"attention": a, "rest": r, "weights": w} for a, r, w in shapes]
    noise = [1 + 0.01 * (i % 3 - 1) for i in range(len(parts))]
    cold = [(1.05 * (p["attention"] + p["rest"]) + 0.12 * p["weights"]) * n for p, n in zip(parts, noise)]
    fit = fit_scales(parts, cold)
    assert fit["weights"] == pytest.approx(0.12, rel=0.25) and fit["rest"] == pytest.approx(1.05, rel=0.03)
    # One scale alone would read the per-parameter cost as a larger scale and miss the small,
    # weight-heavy models: the term is what predicts them.
    one = fit_scale([p["attention"] + p["rest"] for p in parts], cold)
    errors = [abs(one * (p["attention"] + p["rest"]) / m - 1) for p, m in zip(parts, cold)]
    assert max(errors) > 0.05
    assert max(abs(scaled(fit, p) / m - 1) for p, m in zip(parts, cold)) < 0.02
    warm = [1.05 * (p["attention"] + p["rest"]) * n for p, n in zip(parts, [1.03, 0.97, 1.0, 1.02, 0.98, 1.0, 1.03,
                                                                            0.97])]
    assert "weights" not in fit_scales(parts, warm)
    # An estimate carries the term: parameters in millions times the coefficient.
    table, blocks, ms = s0_table(scale=1.0)
    table.meta["overhead"] = {"scales": {"attention": 1.0, "rest": 1.0, "weights": 0.12}, "calibrated": True}
    est = LatencyEstimator(table).estimate(resolve_candidate("efficientformerv2_s0"))
    base = OverheadModel(table.latency_ms()).parts(blocks)
    assert base["weights"] == pytest.approx(3.600256)  # S0's 3.6 M parameters
    assert est.latency_ms == pytest.approx(attention_ms(base) + base["rest"] + 0.12 * 3.600256)
    assert "cold weights +0.12 ms per million parameters" in est.method


def test_a_model_measured_in_a_slow_state_leaves_the_fit():
    from latbench.tables.overhead import robust_fit

    truth = {"attention": 1.3, "rest": 1.05}
    parts = [{"attention": a, "rest": r} for a, r in
             ((1.0, 9.0), (3.0, 7.0), (5.0, 5.0), (2.0, 12.0), (6.0, 4.0), (4.0, 8.0), (2.5, 6.0))]
    measured = [truth["attention"] * p["attention"] + truth["rest"] * p["rest"] for p in parts]
    measured = [m * (1 + 0.01 * (i % 3 - 1)) for i, m in enumerate(measured)]  # 1 % of ordinary noise
    scales, kept = robust_fit(parts, measured, min_models=4)
    assert kept == list(range(len(parts)))  # nothing is an outlier in ordinary noise
    slow = list(measured)
    slow[2] *= 1.33  # three agreeing rounds in one slow state
    plain = fit_scales(parts, slow)  # one such model drags a plain fit off
    assert abs(plain["attention"] / 1.3 - 1) > 0.05 or abs(plain["rest"] / 1.05 - 1) > 0.05
    scales, kept = robust_fit(parts, slow, min_models=4)
    assert 2 not in kept and len(kept) == len(parts) - 1
    assert scales["attention"] == pytest.approx(1.3, rel=0.03) and scales["rest"] == pytest.approx(1.05, rel=0.03)
    # At the minimum an ordinary slow outlier stays; a gross one leaves while the others agree.
    mild = list(measured)
    mild[2] *= 1.10
    assert robust_fit(parts[:4], mild[:4], min_models=4)[1] == [0, 1, 2, 3]
    assert robust_fit(parts[:4], slow[:4], min_models=4)[1] == [0, 1, 3]


def test_below_the_minimum_only_a_gross_slow_outlier_the_others_agree_on_leaves():
    from latbench.tables.overhead import robust_fit

    parts = [{"attention": a, "rest": r} for a, r in ((1.0, 9.0), (3.0, 7.0), (2.0, 12.0))]
    measured = [1.1 * (p["attention"] + p["rest"]) * f for p, f in zip(parts, (1.01, 1.0, 0.99))]
    slow = [m * f for m, f in zip(measured, (1.0, 1.41, 1.0))]  # an adapt's three models, one 41 % slow
    scales, kept = robust_fit(parts, slow, min_models=4)
    assert kept == [0, 2] and scales["rest"] == pytest.approx(1.1, rel=0.02)
    assert robust_fit(parts, [m * f for m, f in zip(measured, (1.0, 1.2, 1.0))], min_models=4)[1] == [0, 1, 2]
    # Where the other two disagree (16 %), no one of the three can be told to be the slow one.
    assert robust_fit(parts, [m * f for m, f in zip(slow, (1.0, 1.0, 0.86))], min_models=4)[1] == [0, 1, 2]
    # Never below two models.
    assert robust_fit(parts[:2], slow[:2], min_models=4)[1] == [0, 1]


@pytest.mark.parametrize("depth", [7, 40])
def test_an_arch_deeper_than_the_tables_space_is_refused(depth):
    from latbench.core.errors import UsageError
    from latbench.estimation.estimator import LatencyEstimator
    from latbench.space.arch import named_arch
    from latbench.tables.synthetic import synthetic_table

    table = synthetic_table()
    assert (table.meta.get("space") or {}).get("definition")
    arch = named_arch("efficientformerv2_s0").to_dict()
    arch["stages"][0]["expansions"] = [4] * depth
    with pytest.raises(UsageError, match=f"stage 1 depth {depth} not in 1-5.*table's space"):
        LatencyEstimator(table).estimate(arch)
