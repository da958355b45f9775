"""The transfer model of adapted tables (latbench.tables.transfer) on made-up pairs of devices.

Each pair is a set of entries with costs and source latencies and a target latency per entry
following a known law; the model is fitted on a few of them and judged on the rest.
"""

from __future__ import annotations

import math

import numpy as np

from latbench.tables import transfer
from latbench.tables.transfer import KIND_SLOPE_GRID, Entry, ModelVariance, fit_transfer, select_entries


def ffn(i: int, width: int, expansion: int, stage: int = 3) -> Entry:
    macs = 2.0 * width * width * expansion * 196
    return Entry(f"ffn-{i}-c{width}-e{expansion}", "ffn", stage, macs * 1e-8, macs, 2.0 * width * width * expansion,
                 width * 196.0)


def mixer(i: int, width: int) -> Entry:
    macs = 4.0 * width * width * 196 + 196 * 196 * width
    return Entry(f"mhsa-{i}-c{width}", "mhsa", 3, macs * 2e-8, macs, 4.0 * width * width, width * 196.0)


def empty(i: int, elements: float) -> Entry:
    """An empty model: the runtime's per-call cost; no MACs, no parameters."""
    return Entry(f"empty-{i}", "empty", None, 0.004 + 1e-8 * elements, 0.0, 0.0, elements)


def blocks() -> list[Entry]:
    return [ffn(i, w, e) for i, (w, e) in enumerate((w, e) for w in (48, 64, 96, 128, 160, 192, 256, 320, 384)
                                                    for e in (2, 3, 4))]


def noisy(key: str) -> float:
    """A measurement's noise: a deterministic +-2 % per entry."""
    return 1.0 + 0.02 * math.sin(7.0 * sum(map(ord, key)))


def errors(entries: list[Entry], target: dict[str, float], measured: list[str], fit=None) -> dict[str, float]:
    """The unmeasured entries' relative errors under `fit` (fitted on `measured` when not given)."""
    fit = fit or fit_transfer(entries, {k: target[k] for k in measured})
    return {e.key: fit.predict(e)[0] / target[e.key] - 1 for e in entries if e.key not in measured}


def test_entries_without_a_cost_do_not_tilt_the_slopes_of_the_blocks():
    # The target's ratio falls with a block's MACs (wide layers gain more); empty models, which
    # have no MACs and no parameters, are 2.5x slower on the target whatever their size. Their
    # zero cost features once sat far outside the blocks' range and bent the shared slopes.
    entries = blocks() + [empty(i, el) for i, el in enumerate((150528, 100352, 18816, 9408))]
    target = {e.key: e.source_ms * (2.5 if e.kind == "empty" else 1.6 * (e.macs / 1e8) ** -0.15) for e in entries}
    measured = ["ffn-0-c48-e2", "ffn-13-c160-e3", "ffn-26-c384-e4", "empty-0", "empty-3"]
    err = errors(entries, target, measured)
    print({k: f"{v:+.1%}" for k, v in err.items()})
    assert max(abs(v) for v in err.values()) < 0.03  # the old design: 5.5 %


def test_the_measurements_choose_how_far_kinds_follow_their_own_slopes(monkeypatch):
    entries = blocks() + [mixer(i, w) for i, w in enumerate((96, 128, 160, 192, 256, 320, 384))]
    measured = ["ffn-0-c48-e2", "ffn-13-c160-e3", "ffn-26-c384-e4", "ffn-7-c96-e3",
                "mhsa-0-c96", "mhsa-3-c192", "mhsa-6-c384"]

    def law(mixer_slope: float):
        return {e.key: e.source_ms * (1.6 * (e.macs / 1e8) ** (-0.15 if e.kind == "ffn" else mixer_slope))
                * noisy(e.key) for e in entries}

    # The same slope for both kinds: whichever prior the evidence takes, the mixers follow it.
    shared = errors(entries, law(-0.15), measured)
    assert max(abs(v) for k, v in shared.items() if k.startswith("mhsa")) < 0.03
    # Opposite slopes: the kinds get their own, and the unmeasured mixers follow theirs.
    opposite = law(+0.3)
    fit = fit_transfer(entries, {k: opposite[k] for k in measured})
    assert fit.design.kind_slope_precision <= 2
    assert set(fit.to_dict()["kind_slope_evidence"]) == {str(p) for p in KIND_SLOPE_GRID}
    err = errors(entries, opposite, measured, fit)
    print({k: f"{v:+.1%}" for k, v in err.items()})
    assert max(abs(v) for k, v in err.items() if k.startswith("mhsa")) < 0.03
    # Under the selection's fixed strong prior they are further off: the choice matters.
    monkeypatch.setattr(transfer, "KIND_SLOPE_GRID", (transfer.KIND_SLOPE_PRECISION,))
    fixed = errors(entries, opposite, measured)
    assert max(abs(v) for k, v in fixed.items() if k.startswith("mhsa")) > 2 * max(
        abs(v) for k, v in err.items() if k.startswith("mhsa"))


def test_an_entry_keeps_its_transfer_kind_through_the_journal_record():
    strided = Entry("mhsa-s3", "mhsa", 3, 1.0, 2e7, 1e5, 3e4, "mhsa-strided")
    back = Entry.from_dict(strided.key, strided.to_dict())
    assert back == strided and back.transfer_kind == "mhsa-strided"
    # A record written before transfer kinds existed fits each entry as its block kind.
    old = {k: v for k, v in strided.to_dict().items() if k != "transfer_kind"}
    assert Entry.from_dict(strided.key, old).transfer_kind == "mhsa"


def test_strided_attention_is_fitted_apart_from_plain_attention():
    # Plain attention keeps the FFNs' ratio; strided attention moves 0.75x of it (cpu -> litert).
    plain = [mixer(i, w) for i, w in enumerate((96, 160, 256, 384))]
    strided = [Entry(f"mhsa-s3-{i}-c{w}", "mhsa", 3, e.source_ms * 1.3, e.macs / 2, e.params, e.input_elements,
                     "mhsa-strided") for i, (w, e) in enumerate(zip((96, 160, 256, 384), plain))]
    entries = blocks() + plain + strided
    target = {e.key: e.source_ms * 1.6 * (0.75 if e.transfer_kind == "mhsa-strided" else 1.0) * noisy(e.key)
              for e in entries}
    measured = ["ffn-0-c48-e2", "ffn-13-c160-e3", "ffn-26-c384-e4", plain[1].key, plain[3].key, strided[2].key]
    err = errors(entries, target, measured)
    print({k: f"{v:+.1%}" for k, v in err.items() if k.startswith("mhsa")})
    assert max(abs(v) for k, v in err.items() if k.startswith("mhsa")) < 0.05


def test_a_kind_nothing_was_measured_of_states_how_far_kinds_lie_apart():
    # Empty models are 20x faster on the target than the pooled ratio says (LiteRT's per-call cost
    # against onnxruntime's): a kind nobody measured borrows the pooled ratio and must say how far
    # off that may be, not the residual noise of the kinds that were measured.
    entries = blocks() + [mixer(i, w) for i, w in enumerate((96, 128, 192, 256))] + \
        [empty(i, el) for i, el in enumerate((150528, 18816, 9408))]

    def uncertainty(mixer_ratio: float) -> dict[str, float]:
        target = {e.key: e.source_ms * {"ffn": 3.0, "mhsa": mixer_ratio, "empty": 0.15}[e.kind] * noisy(e.key)
                  for e in entries}
        fit = fit_transfer(entries, {k: target[k] for k in ("ffn-0-c48-e2", "ffn-26-c384-e4", "mhsa-1-c128")})
        assert fit.measured_kinds == {"ffn", "mhsa"}
        return {e.kind: fit.predict(e)[1] for e in entries if e.key in ("ffn-13-c160-e3", "mhsa-2-c192", "empty-1")}

    close = uncertainty(3.3)
    assert close["ffn"] < 10 and close["mhsa"] < 10  # measured kinds: their residual noise
    assert close["empty"] >= 100 * math.expm1(transfer.KIND_SPREAD)  # never measured: the kinds' spread
    # Measured kinds that lie far apart (1x and 3x) say kinds differ more on this pair than usual.
    apart = uncertainty(1.0)
    assert apart["empty"] > close["empty"] + 10
    assert fit_transfer(entries, {}).predict(entries[0])[1] >= 100 * math.expm1(transfer.KIND_SPREAD)


def stem(width: int) -> Entry:
    macs = 27.0 * width * 112 * 112
    return Entry(f"stem-c{width}", "stem", 0, macs * 1e-8, macs, 27.0 * width, 150528.0)


def typical_models() -> tuple[list[Entry], list[dict[str, float]]]:
    """FFNs, mixers, two stems and empty models, and 40 made-up models over them: each one stem,
    a few FFNs of widths up to 256 and mixers, each block's empty model subtracted; the FFNs of
    width 320 and 384 are in none of them."""
    entries = blocks() + [mixer(i, w) for i, w in enumerate((96, 128, 192, 256))] + [stem(32), stem(40)] + \
        [empty(i, el) for i, el in enumerate((150528, 37632, 18816, 9408))]
    used = [e for e in entries if e.kind in ("ffn", "mhsa") and "c320" not in e.key and "c384" not in e.key]
    models = []
    for m in range(40):
        counts: dict[str, float] = {f"stem-c{(32, 40)[m % 2]}": 1.0}
        for j, e in enumerate(used):
            if (m * 7 + j * 3) % 5 == 0:
                counts[e.key] = 1.0 + (m + j) % 3
                counts[f"empty-{1 + j % 3}"] = counts.get(f"empty-{1 + j % 3}", 0.0) - counts[e.key]
        models.append(counts)
    return entries, models


def test_with_typical_models_the_selection_measures_what_they_carry():
    entries, models = typical_models()
    by_key = {e.key: e for e in entries}
    chosen = select_entries(entries, 12, models=models, calibration=models[:2])
    assert len(chosen) == len(set(chosen)) == 12
    assert {by_key[k].kind for k in chosen} == {e.kind for e in entries}
    # A kind of two entries is measured whole; a kind without a cost (empty models) twice, so its
    # own slopes rest on two points.
    assert {"stem-c32", "stem-c40"} <= set(chosen)
    assert sum(by_key[k].kind == "empty" for k in chosen) == 2
    # Past those, what no model uses is left to the model: the widest FFNs are not chosen.
    assert not [k for k in chosen if "c320" in k or "c384" in k]
    # ... and what is chosen leaves the models less error than the per-entry choice of as many.
    weigh = ModelVariance(entries, {e.key: transfer.Design(entries).row(e) for e in entries}, models, models[:2])
    precision = transfer.Design(entries).precision

    def left(keys: list[str]) -> float:
        rows = weigh.x[[weigh.index[k] for k in keys]]
        return weigh.value(np.diag(precision) + rows.T @ rows, keys)

    per_entry = select_entries(entries, 12)
    assert left(chosen) < 0.8 * left(per_entry)
    # Deterministic, and a larger budget keeps what was chosen.
    assert select_entries(entries, 12, models=models, calibration=models[:2]) == chosen
    more = select_entries(entries, 3, already=chosen, models=models, calibration=models[:2])
    assert len(more) == 3 and not set(more) & set(chosen)


def test_a_model_calibrated_on_itself_has_no_error_left_and_measuring_all_leaves_none():
    entries, models = typical_models()
    design = transfer.Design(entries)
    rows = {e.key: design.row(e) for e in entries}
    precision = np.diag(design.precision)
    itself = ModelVariance(entries, rows, models[:1], models[:1])
    assert itself.value(precision, []) == 0.0
    weigh = ModelVariance(entries, rows, models)
    assert weigh.value(precision, []) > 0
    assert weigh.value(precision, [e.key for e in entries]) == 0.0
