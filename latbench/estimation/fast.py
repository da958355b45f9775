"""Vectorised latency / parameter / MES estimates for many subnets at once.

`LatencyEstimator` decomposes one Arch into BlockConfigs and sums table entries: clear, but about
a hundred microseconds per subnet in Python. Search and ranking score tens of thousands of subnets,
so here a subnet is a row of small integer arrays (`EncodedArchs`):

    width_idx (n, 4)        index into the stage's width choices
    depth     (n, 4)        blocks per stage
    exp_idx   (n, 4, Dmax)  index into the stage's expansion choices, per block (padding ignored)
    attention (n, 4)        trailing attention blocks per stage

and the table is turned once into per-stage/width/expansion arrays of net block latency
(t - empty(shape), the estimator's overhead model), plain latency and parameters. A batch estimate
is then a handful of numpy gathers and sums. The result is the same formula as LatencyEstimator
(`est = sum_groups scale_g * sum count * (t - e)`, the input overhead in the "rest" group; plain sum when that is not
positive), equal to it up to float summation order (tested to 1e-9 relative).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latbench.blocks.configs import (
    AttnConfig,
    AttnDownConfig,
    BlockConfig,
    EmbedConfig,
    EmptyConfig,
    FFNConfig,
    HeadConfig,
    StemConfig,
)
from latbench.core.errors import UsageError
from latbench.core.text import weights_mb
from latbench.space import N_STAGES, Arch, SearchSpace, StageArch
from latbench.tables.table import LatencyTable, find_table


@dataclass
class EncodedArchs:
    """Subnets as integer arrays (see the module docstring); all belong to one space and resolution."""

    width_idx: np.ndarray
    depth: np.ndarray
    exp_idx: np.ndarray
    attention: np.ndarray

    def __len__(self) -> int:
        return int(self.width_idx.shape[0])

    def take(self, rows: np.ndarray | Sequence[int]) -> EncodedArchs:
        rows = np.asarray(rows)
        return EncodedArchs(self.width_idx[rows], self.depth[rows], self.exp_idx[rows], self.attention[rows])


@dataclass
class FastScores:
    latency_ms: np.ndarray
    params: np.ndarray
    mes: np.ndarray | None = None


class _Gather:
    """One per-block quantity laid out for gathering; `total(...)` sums it over encoded subnets."""

    def __init__(self, fe: FastEstimator, value: Callable[[BlockConfig], float], dtype: Any):
        r = fe.resolution
        sp = fe.space.stages
        self.stem = np.array([value(StemConfig(r, w)) for w in sp[0].widths], dtype=dtype)
        self.emb1 = np.array([[value(EmbedConfig(r, 1, a, b)) for b in sp[1].widths] for a in sp[0].widths], dtype)
        self.emb2 = np.array([[value(EmbedConfig(r, 2, a, b)) for b in sp[2].widths] for a in sp[1].widths], dtype)
        self.down = np.array([[value(AttnDownConfig(r, a, b)) for b in sp[3].widths] for a in sp[2].widths], dtype)
        self.head = np.array([value(HeadConfig(r, w)) for w in sp[3].widths], dtype=dtype)
        # FFN entries flattened as ((stage * Wmax) + width) * Emax + expansion, plus a trailing 0 that
        # padded block slots point at (so padding adds exactly nothing, even next to missing entries).
        ffn = np.zeros((N_STAGES, fe.w_max, fe.e_max), dtype=dtype)
        mhsa = np.zeros((N_STAGES, fe.w_max), dtype=dtype)
        for s, st in enumerate(sp):
            for wi, w in enumerate(st.widths):
                for ei, e in enumerate(st.expansions):
                    ffn[s, wi, ei] = value(FFNConfig(r, s + 1, w, e))
                if st.attention:
                    mhsa[s, wi] = value(AttnConfig(r, s + 1, w))
        self.ffn = np.concatenate([ffn.ravel(), np.zeros(1, dtype=dtype)])
        self.mhsa = mhsa

    def total(self, enc: EncodedArchs, ffn_index: np.ndarray) -> np.ndarray:
        w = enc.width_idx
        out = self.stem[w[:, 0]] + self.emb1[w[:, 0], w[:, 1]] + self.emb2[w[:, 1], w[:, 2]]
        out = out + self.down[w[:, 2], w[:, 3]] + self.head[w[:, 3]]
        out = out + self.ffn[ffn_index].sum(axis=(1, 2))
        att = enc.attention
        stages = np.arange(N_STAGES)
        per_stage = self.mhsa[stages[None, :], w]
        # where(), not a product, so a missing (NaN) attention entry only matters when it is used.
        out = out + np.where(att > 0, att * per_stage, 0).sum(axis=1)
        return out


class FastEstimator:
    """Batch estimates over one space and resolution from a LatencyTable (construct once)."""

    def __init__(self, table: LatencyTable | str | Path, space: SearchSpace | None = None,
                 resolution: int | None = None):
        from latbench.estimation.estimator import LatencyEstimator

        if isinstance(table, (str, Path)):
            table = LatencyTable.load(find_table(table))
        if not isinstance(table, LatencyTable):
            raise UsageError(f"FastEstimator needs a latency table (a LatencyTable, its directory or its name), "
                             f"got {type(table).__name__}")
        self.table = table
        self.space = space or table.space(fallback=True)
        self.resolution = int(resolution or table.meta.get("resolution") or self.space.resolutions[0])
        self.space.check_resolution(self.resolution)
        self.estimator = LatencyEstimator(table)  # reused for its overhead rules and its error messages
        model = self.estimator.model
        self.use_overhead = self.estimator.use_overhead
        sp = self.space.stages
        self.n_widths = [len(s.widths) for s in sp]
        self.w_max = max(self.n_widths)
        self.e_max = max(len(s.expansions) for s in sp)
        self.d_max = max(s.depth_max for s in sp)
        self._w_index = [{w: i for i, w in enumerate(s.widths)} for s in sp]
        self._e_index = [{e: i for i, e in enumerate(s.expansions)} for s in sp]
        ms = self.estimator.ms
        r = self.resolution

        def empty(c: BlockConfig) -> float:
            return ms.get(EmptyConfig.for_shape(c.resolution, c.input_shape).key, np.nan) if self.use_overhead else 0.0

        # Each block's net latency with its calibration group's scale and its weights' cold-weights
        # cost folded in: a batch estimate is then one gather and a sum, as LatencyEstimator's parts.
        self._net = _Gather(self, lambda c: model.net_ms(c, ms.get(c.key, np.nan), empty(c)), float)
        self._plain = _Gather(self, lambda c: ms.get(c.key, np.nan), float)
        self._params = _Gather(self, lambda c: c.params(), np.int64)
        self._macs: _Gather | None = None
        self.input_overhead = model.scales["rest"] * (ms.get(EmptyConfig(r, 3, r, r).key, np.nan)
                                                      if self.use_overhead else 0.0)

    # -- encoding ---------------------------------------------------------------------------------
    def encode(self, archs: Sequence[Arch]) -> EncodedArchs:
        n = len(archs)
        wi = np.zeros((n, N_STAGES), np.int64)
        dep = np.zeros((n, N_STAGES), np.int64)
        att = np.zeros((n, N_STAGES), np.int64)
        ex = np.zeros((n, N_STAGES, self.d_max), np.int64)
        sp = self.space.stages
        for k, arch in enumerate(archs):
            try:
                if arch.resolution != self.resolution:
                    raise KeyError
                for s, st in enumerate(arch.stages):
                    d = len(st.expansions)
                    if not sp[s].depth_min <= d <= sp[s].depth_max or (st.attention and not sp[s].attention):
                        raise KeyError
                    wi[k, s] = self._w_index[s][st.width]
                    dep[k, s] = d
                    att[k, s] = st.attention
                    eix = self._e_index[s]
                    ex[k, s, :d] = [eix[e] for e in st.expansions]
            except KeyError:
                if arch.resolution != self.resolution:
                    raise UsageError(f"arch {arch.label()} has resolution {arch.resolution}; this estimator is for "
                                     f"{self.resolution}") from None
                self.space.validate(arch)  # raises with the first offending stage/block
                raise
        return EncodedArchs(wi, dep, ex, att)

    def decode(self, enc: EncodedArchs, i: int, name: str | None = None) -> Arch:
        stages = []
        for s, sp in enumerate(self.space.stages):
            d = int(enc.depth[i, s])
            exps = tuple(sp.expansions[int(e)] for e in enc.exp_idx[i, s, :d])
            stages.append(StageArch(sp.widths[int(enc.width_idx[i, s])], exps, int(enc.attention[i, s])))
        return Arch(tuple(stages), self.resolution, name)

    def sample(self, n: int, seed: int = 0) -> EncodedArchs:
        """n uniform random subnets, drawn directly as arrays (same distribution as SearchSpace.sample:
        uniform width, depth, per-block expansion, and attention count 0..depth where allowed)."""
        rng = np.random.default_rng(seed)
        wi = np.zeros((n, N_STAGES), np.int64)
        dep = np.zeros((n, N_STAGES), np.int64)
        att = np.zeros((n, N_STAGES), np.int64)
        ex = np.zeros((n, N_STAGES, self.d_max), np.int64)
        for s, sp in enumerate(self.space.stages):
            wi[:, s] = rng.integers(0, len(sp.widths), n)
            dep[:, s] = rng.integers(sp.depth_min, sp.depth_max + 1, n)
            ex[:, s, :sp.depth_max] = rng.integers(0, len(sp.expansions), (n, sp.depth_max))
            if sp.attention:
                att[:, s] = rng.integers(0, dep[:, s] + 1)
        ex[np.arange(self.d_max)[None, None, :] >= dep[:, :, None]] = 0
        return EncodedArchs(wi, dep, ex, att)

    # -- estimates ----------------------------------------------------------------------------------
    def _ffn_index(self, enc: EncodedArchs) -> np.ndarray:
        base = (np.arange(N_STAGES)[None, :, None] * self.w_max + enc.width_idx[:, :, None]) * self.e_max
        idx = base + enc.exp_idx
        pad = np.arange(self.d_max)[None, None, :] >= enc.depth[:, :, None]
        idx[pad] = N_STAGES * self.w_max * self.e_max  # the trailing zero
        return idx

    def latency(self, enc: EncodedArchs, check: bool = True, _idx: np.ndarray | None = None) -> np.ndarray:
        idx = self._ffn_index(enc) if _idx is None else _idx
        out = self._net.total(enc, idx) + self.input_overhead
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(out) & (out > 0))
        if bad.any():  # like LatencyEstimator: fall back to the plain sum (rare, so computed only here)
            out[bad] = self._plain.total(enc.take(bad), idx[bad])
        if check:
            bad = np.flatnonzero(~np.isfinite(out))
            if bad.size:
                arch = self.decode(enc, int(bad[0]))
                from latbench.blocks.configs import decompose

                self.estimator.check_covered(arch.label(), decompose(arch))  # raises, naming the missing keys
                raise UsageError(f"table {self.table.label()} gives no finite latency for {arch.label()}")
        return out

    def params(self, enc: EncodedArchs, _idx: np.ndarray | None = None) -> np.ndarray:
        return self._params.total(enc, self._ffn_index(enc) if _idx is None else _idx)

    def macs(self, enc: EncodedArchs, _idx: np.ndarray | None = None) -> np.ndarray:
        """MACs (built lazily: counting MACs runs every block config once, which takes seconds)."""
        if self._macs is None:
            self._macs = _Gather(self, lambda c: c.macs(), np.int64)
        return self._macs.total(enc, self._ffn_index(enc) if _idx is None else _idx)

    def score(self, enc: EncodedArchs, mes=None, check: bool = True) -> FastScores:
        """Latency (ms), parameters and, given a resolved `latbench.efficiency.score.MES`, the MES of every subnet."""
        idx = self._ffn_index(enc)
        lat = self.latency(enc, check=check, _idx=idx)
        par = self.params(enc, _idx=idx)
        scores = None
        if mes is not None:
            values: dict[str, np.ndarray] = {"latency": lat, "params": par}
            getters = {m.getter for m in mes.metrics}
            if "weights_mb" in getters:
                values["weights_mb"] = weights_mb(par)
            if "macs" in getters:
                values["macs"] = self.macs(enc, _idx=idx)
            scores = mes.arrays(values)
        return FastScores(lat, par, scores)

    def score_archs(self, archs: Sequence[Arch | dict | str], mes=None) -> FastScores:
        """Scores of architectures: Arch objects, arch mappings, or names of published variants."""
        if isinstance(archs, (Arch, dict, str)):
            archs = [archs]
        return self.score(self.encode([as_arch(a) for a in archs]), mes)


def as_arch(target: Any) -> Arch:
    """An Arch from an Arch, an arch mapping or a published variant's name (a one-line error otherwise)."""
    from latbench.space.arch import NAMED_ARCHS, named_arch

    if isinstance(target, Arch):
        return target
    if isinstance(target, dict):
        return Arch.from_dict(target, source="<dict>")
    if isinstance(target, str) and target in NAMED_ARCHS:
        return named_arch(target)
    raise UsageError(f"cannot score {target!r}: give an Arch, an arch mapping or one of {', '.join(NAMED_ARCHS)}")
