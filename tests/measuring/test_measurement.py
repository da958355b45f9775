"""Measurement: derived statistics, the distribution-free median CI, JSON round trip."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from latbench.measuring.measurement import (
    THROTTLING_WARNING,
    Measurement,
    OpTime,
    aggregate_by_op_type,
    median_ci_indices,
    merge_measurements,
)


def test_statistics_match_numpy():
    rng = np.random.default_rng(1)
    samples = list(rng.lognormal(0.0, 0.3, size=101))
    m = Measurement("x", samples)
    assert m.n == 101
    assert m.median == pytest.approx(np.median(samples))
    assert m.mean == pytest.approx(np.mean(samples))
    assert m.std == pytest.approx(np.std(samples, ddof=1))
    assert m.p5 == pytest.approx(np.percentile(samples, 5))
    assert m.p95 == pytest.approx(np.percentile(samples, 95))
    assert m.iqr == pytest.approx(np.percentile(samples, 75) - np.percentile(samples, 25))


def test_empty_and_single_sample_are_nan_not_errors():
    empty = Measurement("e", [])
    assert empty.n == 0 and math.isnan(empty.median) and math.isnan(empty.mean)
    assert empty.ci_rel == math.inf
    one = Measurement("o", [2.0])
    assert one.median == 2.0 and math.isnan(one.std)


def test_median_ci_needs_six_samples_at_95_percent():
    assert median_ci_indices(5) is None
    assert median_ci_indices(6) == (0, 5)  # coverage 1 - 2/64 = 0.969
    lo, hi = median_ci_indices(100)
    # Exact binomial: the classic 95 % interval for n=100 is the 40th..61st order statistics.
    assert (lo + 1, hi + 1) == (40, 61)
    # Large n uses the normal approximation and stays symmetric around the middle.
    lo, hi = median_ci_indices(5000)
    assert lo + hi == 4999 and 2400 < lo < 2500


def test_median_ci_covers_the_true_median_about_95_percent_of_the_time():
    rng = random.Random(7)
    hits = 0
    trials = 400
    for _ in range(trials):
        samples = [rng.expovariate(1.0) for _ in range(60)]
        lo, hi = Measurement("t", samples).median_ci()
        hits += lo <= math.log(2) <= hi  # true median of Exp(1)
    assert 0.91 <= hits / trials <= 0.995


def test_ci_rel_shrinks_with_more_samples():
    rng = random.Random(3)
    few = Measurement("a", [10 + rng.gauss(0, 0.5) for _ in range(20)])
    many = Measurement("b", [10 + rng.gauss(0, 0.5) for _ in range(2000)])
    assert many.ci_rel < few.ci_rel < 1.0


def test_round_trip_is_json_safe_and_lossless():
    m = Measurement(
        label="s0",
        samples_ms=[1.0, 1.1, 0.9, 1.05, 1.2, 0.95, 1.0],
        provenance={"device_model": "Pixel 7", "threads": 1, "governor": {"cpu6": "performance"}},
        per_op=[OpTime("Conv", "conv0", 0.5), OpTime("Relu", "relu0", 0.1)],
        session_ms=12.5,
        first_inference_ms=None,
        warnings=[f"{THROTTLING_WARNING}: thermal status light during the run"],
        extra={"invocations": [{"p50_ms": 1.0}]},
    )
    text = json.dumps(m.to_dict(), allow_nan=False)
    back = Measurement.from_dict(json.loads(text))
    assert back == m
    assert back.throttled
    assert json.loads(text)["stats"]["median_ms"] == pytest.approx(1.0)


def test_non_finite_figures_serialise_as_null():
    m = Measurement("x", [1.0], session_ms=float("nan"))
    d = m.to_dict()
    assert d["session_ms"] is None and d["stats"]["std_ms"] is None
    json.dumps(d, allow_nan=False)


def test_from_dict_rejects_garbage():
    with pytest.raises(ValueError, match="not a serialised Measurement"):
        Measurement.from_dict({"samples_ms": [1.0]})
    with pytest.raises(ValueError):
        Measurement.from_dict({"label": "x", "samples_ms": ["fast"]})


def test_per_op_type_aggregation():
    ops = [OpTime("Conv", "a", 1.0), OpTime("Relu", "b", 0.2), OpTime("Conv", "c", 0.5)]
    assert aggregate_by_op_type(ops) == {"Conv": 1.5, "Relu": 0.2}
    assert list(Measurement("x", [1.0], per_op=ops).per_op_type()) == ["Conv", "Relu"]


def test_merge_pools_samples_and_unites_warnings():
    a = Measurement("m", [1.0, 2.0], warnings=["w1"], session_ms=5.0)
    b = Measurement("m", [3.0], warnings=["w1", "w2"])
    merged = merge_measurements([a, b])
    assert merged.samples_ms == [1.0, 2.0, 3.0]
    assert merged.warnings == ["w1", "w2"]
    assert merged.session_ms == 5.0 and merged.provenance["merged_from"] == 2
    with pytest.raises(ValueError):
        merge_measurements([])
