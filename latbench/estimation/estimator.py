"""Latency estimates of whole models from a per-block LatencyTable.

The estimate is the table's overhead model (latbench.tables.overhead): the sum of isolated block
latencies minus the per-inference overhead each paid, plus the overhead the model pays once,
times the scale fitted on whole models measured end to end. The method and the constants are
in the table's meta.json and reported with every estimate, with warnings when the table is
uncalibrated or an entry the estimate uses is flagged as doubtful.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latbench.blocks.candidates import to_candidate
from latbench.blocks.configs import BlockConfig
from latbench.core.errors import UsageError
from latbench.tables.overhead import SCALE_GROUPS, STRIDED_ATTENTION, BlockEstimate, OverheadModel
from latbench.tables.table import LatencyTable

#: Above this 95 % uncertainty of the table's typical latency, estimates say so in a warning.
TYPICAL_WARNING_PCT = 5.0


@dataclass
class Estimate:
    name: str
    latency_ms: float
    plain_sum_ms: float
    blocks: list[BlockEstimate] = field(default_factory=list)
    input_overhead_ms: float = 0.0
    scale: float = 1.0  # the scale of everything but attention mixers
    method: str = ""
    calibrated: bool = False
    #: Why the estimate may be off: an uncalibrated table, table entries flagged as doubtful.
    warnings: list[str] = field(default_factory=list)
    scales: dict[str, float] = field(default_factory=dict)  # per calibration group
    #: The typical latency (what tools that print averages over runs report on this device);
    #: latency_ms is the fast state. None for tables built before typical latencies were kept.
    typical_ms: float | None = None
    #: Entries of an adapted table this estimate uses that were predicted, not measured: how many,
    #: and their one-sigma uncertainties summed in ms and in % of the estimate (None: none used).
    predicted: dict[str, Any] | None = None
    #: 95 % relative uncertainty of typical_ms, in %, from how the device's average state moved
    #: during the build (the table's noise profile; None where the table does not say).
    typical_uncertainty_pct: float | None = None

    def per_group(self) -> dict[str, float]:
        """Estimated ms per stem/stage/head, scaled so the groups add up to latency_ms
        (the once-per-inference overhead is spread in proportion)."""
        raw = sum(b.total_ms for b in self.blocks)
        out: dict[str, float] = {}
        for b in self.blocks:
            out[b.group] = out.get(b.group, 0.0) + b.total_ms
        if raw > 0:
            out = {k: v / raw * self.latency_ms for k, v in out.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_group_ms"] = self.per_group()
        return d


def build_argument(candidate: Any) -> str:
    """The `lut build` argument that measures a candidate's blocks."""
    if candidate.model_name or candidate.source == "registry":
        return f"--model {candidate.model_name or candidate.name}"
    path = Path(candidate.source.split("[")[0])
    if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
        return f"--arch {path}"
    return f"--arch {candidate.name}.yaml (save the arch to a file first)"


class LatencyEstimator:
    """Estimate model latency from a table. Construct once, call `estimate` per candidate."""

    def __init__(self, table: LatencyTable):
        self.table = table
        ov = table.overhead
        scale = float(ov.get("scale", 1.0))
        scales = ov.get("scales") or {g: scale for g in SCALE_GROUPS}
        self.model = OverheadModel(table.latency_ms(), bool(ov.get("empty_models", True)), scales)
        self.typical_model = (OverheadModel(table.typical_ms(), self.model.use_overhead,
                                            ov.get("typical_scales") or scales) if table.has_typical else None)
        self.ms = self.model.ms
        self.use_overhead = self.model.use_overhead
        self.flagged = table.flagged()
        self.predicted = table.predicted()
        stated = float((table.meta.get("noise_profile") or {}).get("typical_uncertainty") or 0.0)
        self.typical_uncertainty_pct = 100 * stated if stated > 0 and self.typical_model is not None else None
        self.scale = self.model.scales["rest"]
        self.calibrated = bool(ov.get("calibrated", bool(ov.get("calibrated_on"))))

    def required_keys(self, blocks: list[BlockConfig]) -> list[str]:
        return self.model.required_keys(blocks)

    def check_covered(self, name: str, blocks: list[BlockConfig], what: str | None = None) -> None:
        """UsageError listing the entries the table lacks for these blocks, and the build that
        fills them (`what`: the --model/--arch argument naming the model, when known)."""
        missing = [k for k in self.required_keys(blocks) if k not in self.ms]
        if missing:
            shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
            what = what or f"--arch {name}.yaml (save the arch to a file first)"
            raise UsageError(
                f"table {self.table.label()} lacks {len(missing)} block(s) needed by {name}: {shown}; "
                f"fill them with `latbench lut build --device {self.table.meta.get('device_id') or 'ID'} "
                f"{what} --out {self.table.label()}`"
            )

    def estimate_blocks(self, name: str, blocks: list[BlockConfig]) -> Estimate:
        if not blocks:
            raise UsageError(f"{name}: nothing to estimate (no blocks)")
        self.check_covered(name, blocks)
        raw, plain, rows, e_in = self.model.raw(blocks)
        warnings = self.doubtful(self.required_keys(blocks))
        predicted = self.predicted_share(blocks, rows)
        if all(b.kind == "model" for b in blocks):
            # Measured whole: nothing was summed, so neither overhead nor calibration applies.
            typical = self.typical_model.raw(blocks)[1] if self.typical_model else None
            return self._annotated(Estimate(name, plain, plain, rows, 0.0, 1.0, "whole model measured end to end",
                                                 True, warnings, typical_ms=typical), predicted)
        est = self.model.estimate(blocks)
        method = "sum(block - empty) + empty(input)" if self.use_overhead else "plain sum"
        scales = self.model.scales
        if self.calibrated and STRIDED_ATTENTION in scales:
            method += (f", calibrated x{scales['rest']:.4f} (attention mixers x{scales['attention']:.4f}, "
                       f"strided ones x{scales[STRIDED_ATTENTION]:.4f})")
        elif self.calibrated and len({scales[g] for g in SCALE_GROUPS}) > 1:
            method += f", calibrated x{scales['rest']:.4f} (attention mixers x{scales['attention']:.4f})"
        elif self.calibrated:
            method += f", calibrated x{self.scale:.4f}"
        if self.calibrated and self.model.weights_ms > 0:
            method += f", cold weights +{self.model.weights_ms:.4g} ms per million parameters"
        if not self.calibrated:
            method += ", UNCALIBRATED"
            warnings.insert(0, f"table {self.table.label()} is uncalibrated: no whole model was measured end to end "
                               "with it, so what isolated blocks miss (fusion, cache effects; typically -15..+15 %) "
                               "is not corrected; rebuild it with --calibrate N (space builds) or --model/--arch")
        if not math.isfinite(est) or est <= 0:
            est = plain
        typical = None
        if self.typical_model is not None:
            typical = self.typical_model.estimate(blocks)
            if not math.isfinite(typical) or typical <= 0:
                typical = self.typical_model.raw(blocks)[1]
        return self._annotated(Estimate(name, est, plain, rows, e_in, self.scale, method, self.calibrated,
                                             warnings, dict(scales), typical), predicted)

    def predicted_share(self, blocks: list[BlockConfig], rows: list[BlockEstimate]) -> tuple[int, float] | None:
        """(how many predicted entries, their summed one-sigma uncertainty in ms) among the
        entries an estimate uses; None when it uses none (a measured table always)."""
        if not self.predicted:
            return None
        used = [k for k in self.required_keys(blocks) if k in self.predicted]
        if not used:
            return None
        counts = {r.key: r.count for r in rows}
        # Summed, not added in quadrature: the errors of one kind move together (one transfer
        # factor), so the plain sum is the honest bound.
        ms = sum(counts.get(k, 1) * self.ms[k] * (self.predicted[k] if self.predicted[k] == self.predicted[k]
                                                  else 100.0) / 100 for k in used)
        return len(used), ms

    def _annotated(self, e: Estimate, predicted: tuple[int, float] | None) -> Estimate:
        """The estimate with what the table says of its certainty: the typical latency's stated
        uncertainty, and the predicted entries it uses (an adapted table)."""
        e.typical_uncertainty_pct = self.typical_uncertainty_pct
        if self.typical_uncertainty_pct is not None and self.typical_uncertainty_pct > TYPICAL_WARNING_PCT:
            e.warnings.append(f"typical latency +-{self.typical_uncertainty_pct:.1f} % (95 %): the device's average "
                              f"state moved during the table's build more than its minutes could pin down (slow "
                              f"spells, core migration); the fast-state latency_ms is not affected")
        if predicted is None:
            return e
        n, ms = predicted
        pct = 100 * ms / e.latency_ms if e.latency_ms > 0 else math.nan
        e.predicted = {"entries": n, "uncertainty_ms": ms, "uncertainty_pct": pct}
        e.warnings.append(f"{n} table entr{'y' if n == 1 else 'ies'} used here {'is' if n == 1 else 'are'} predicted "
                          f"from other devices' tables, not measured (an adapted table): +-{ms:.3g} ms "
                          f"(+-{pct:.1f} %) summed uncertainty; measure them with `latbench lut build --upgrade "
                          f"--out {self.table.label()}`")
        return e

    def doubtful(self, keys: list[str]) -> list[str]:
        """A warning naming the table entries in `keys` whose latency is flagged as doubtful."""
        bad = [f"{k} ({self.flagged[k]})" for k in keys if k in self.flagged]
        if not bad:
            return []
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        return [f"{len(bad)} table entr{'y' if len(bad) == 1 else 'ies'} used here "
                f"{'is' if len(bad) == 1 else 'are'} doubtful: {shown}; re-measure with "
                f"`latbench lut check {self.table.label()} --device {self.table.meta.get('device_id') or 'ID'} --fix`"]

    def estimate(self, target: Any) -> Estimate:
        """Estimate a Candidate, an Arch, an arch mapping, a model name or an arch file path
        (see latbench.blocks.candidates.to_candidate)."""
        candidate = to_candidate(target)
        table_res = self.table.meta.get("resolution")
        if table_res and candidate.resolution != table_res:
            raise UsageError(f"table {self.table.label()} holds {table_res}x{table_res} entries but {candidate.name} "
                             f"is {candidate.resolution}x{candidate.resolution}: estimate it at {table_res} "
                             f"(--resolution {table_res}) or build a table at {candidate.resolution}")
        if candidate.arch is not None and (self.table.meta.get("space") or {}).get("definition"):
            # The table was built and calibrated for its space; a deeper stage may still find its
            # blocks in it, but its estimate would rest on nothing measured like it.
            try:
                self.table.space().validate(candidate.arch)
            except UsageError as exc:
                raise UsageError(f"{exc}; estimate archs within the table's space, or build a table for a "
                                 f"space that holds it (`latbench lut build --space FILE`)") from None
        blocks = candidate.blocks()
        if blocks:
            self.check_covered(candidate.name, blocks, what=build_argument(candidate))
        return self.estimate_blocks(candidate.name, blocks)
