import numpy as np
import pytest

from latbench.blocks.candidates import Candidate
from latbench.blocks.configs import arch_params
from latbench.core.errors import UsageError
from latbench.efficiency.score import MESConfig, resolve
from latbench.estimation.estimator import LatencyEstimator
from latbench.estimation.fast import FastEstimator
from latbench.space import NAMED_ARCHS, Arch, SearchSpace, StageArch, named_arch
from latbench.tables.synthetic import synthetic_table


def reference_latencies(table, archs):
    est = LatencyEstimator(table)
    return np.array([est.estimate(Candidate(a.label(), a.resolution, arch=a)).latency_ms for a in archs])


def check_equal(table, archs):
    fast = FastEstimator(table)
    scores = fast.score_archs(archs)
    ref = reference_latencies(table, archs)
    np.testing.assert_allclose(scores.latency_ms, ref, rtol=1e-9, atol=0)
    assert scores.params.tolist() == [arch_params(a) for a in archs]
    return scores


@pytest.fixture(scope="module")
def space():
    return SearchSpace.default()


@pytest.fixture(scope="module")
def archs(space):
    return space.sample_many(150, seed=11) + [named_arch(n) for n in NAMED_ARCHS]


def test_equals_latency_estimator_on_random_subnets_and_s0_to_l(archs):
    scores = check_equal(synthetic_table(), archs)
    # The published variants are in the batch and have their verified parameter counts.
    assert scores.params[-4:].tolist() == [3_600_256, 6_185_560, 12_710_112, 26_322_288]


def test_equals_latency_estimator_with_calibration(archs):
    check_equal(synthetic_table(scale=1.07), archs)
    check_equal(synthetic_table(scale=1.07, attention_scale=1.25), archs)  # a scale per calibration group


def test_equals_latency_estimator_with_the_cold_weights_term(archs):
    table = synthetic_table(scale=1.02)
    table.meta["overhead"]["scales"]["weights"] = 0.12  # ms per million parameters
    scores = check_equal(table, archs)
    table.meta["overhead"]["scales"].pop("weights")
    without = FastEstimator(table).score_archs(archs)
    np.testing.assert_allclose(scores.latency_ms - without.latency_ms, 0.12 * scores.params / 1e6, rtol=1e-9)


def test_equals_latency_estimator_without_empty_models(archs):
    table = synthetic_table()
    table.blocks = table.blocks[table.blocks["kind"] != "empty"]
    scores = check_equal(table, archs)
    assert not FastEstimator(table).use_overhead
    assert (scores.latency_ms > 0).all()


def test_falls_back_to_plain_sum_like_the_estimator(archs):
    # A negative scale makes the calibrated estimate negative: both fall back to the plain sum.
    table = synthetic_table(scale=-1.0)
    scores = check_equal(table, archs[:20])
    est = LatencyEstimator(table)
    a = archs[0]
    assert scores.latency_ms[0] == pytest.approx(est.estimate(Candidate("a", 224, arch=a)).plain_sum_ms, rel=1e-9)


def test_mes_arrays_equal_scalar_mes(archs):
    table = synthetic_table()
    mes = resolve(MESConfig(), table)
    scores = FastEstimator(table).score_archs(archs[:30], mes)
    for lat, par, m in zip(scores.latency_ms, scores.params, scores.mes):
        assert m == pytest.approx(mes({"latency": lat, "params": par}), rel=1e-12)


def test_encode_decode_round_trip(space, archs):
    fast = FastEstimator(synthetic_table(space), space)
    enc = fast.encode(archs)
    assert len(enc) == len(archs)
    assert [fast.decode(enc, i) for i in range(len(archs))] == archs


def test_vectorised_sampling_stays_in_the_space(space):
    fast = FastEstimator(synthetic_table(space), space)
    enc = fast.sample(400, seed=3)
    decoded = [fast.decode(enc, i) for i in range(len(enc))]
    for a in decoded:
        space.validate(a)
        assert all(st.attention <= st.depth for st in a.stages)
        assert a.stages[0].attention == a.stages[1].attention == 0
    # Uses the whole depth range and attention range, and agrees with the estimator.
    assert {a.stages[2].depth for a in decoded} == set(range(2, 16))
    assert max(a.stages[3].attention for a in decoded) > 0
    np.testing.assert_allclose(fast.score(enc).latency_ms[:25],
                               reference_latencies(fast.table, decoded[:25]), rtol=1e-9)
    assert (fast.sample(400, seed=3).exp_idx == enc.exp_idx).all()


def test_missing_table_entry_names_the_block(space):
    table = synthetic_table(space)
    gone = "ffn-r224-s3-c96-e3"
    table.blocks = table.blocks[table.blocks["key"] != gone]
    fast = FastEstimator(table, space)
    s0 = named_arch("efficientformerv2_s0")  # uses ffn-s3-c96-e3
    with pytest.raises(UsageError, match=gone):
        fast.score_archs([s0])
    # A subnet that does not use the missing entry is still fine (padding never touches it).
    s0_e4 = Arch(tuple(StageArch(st.width, (4,) * st.depth, st.attention) for st in s0.stages))
    assert np.isfinite(fast.score_archs([s0_e4]).latency_ms).all()


def test_arch_outside_the_space_is_rejected(space):
    fast = FastEstimator(synthetic_table(space), space)
    wide = Arch((StageArch(33, (4,)), *named_arch("efficientformerv2_s0").stages[1:]))
    with pytest.raises(UsageError, match="width 33"):
        fast.encode([wide])
    other_res = Arch(named_arch("efficientformerv2_s0").stages, 256)
    with pytest.raises(UsageError, match="resolution"):
        fast.encode([other_res])
