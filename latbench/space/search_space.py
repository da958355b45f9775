"""The EfficientFormerV2 search space as data: `SearchSpace` (a YAML file) over `Arch` subnets."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from latbench.core.errors import UsageError
from latbench.core.userfiles import check_keys, is_int, read_yaml_or_json
from latbench.space.arch import (
    ATTENTION_STAGES,
    FAMILY,
    N_STAGES,
    Arch,
    StageArch,
    check_family,
    check_resolution,
)


@dataclass(frozen=True)
class StageSpace:
    widths: tuple[int, ...]
    depth_min: int
    depth_max: int
    expansions: tuple[int, ...]
    attention: bool


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stages: tuple[StageSpace, ...]
    resolutions: tuple[int, ...]
    source: str = field(default="<space>", compare=False)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> SearchSpace:
        ref = resources.files("latbench") / "spaces" / "efficientformerv2.yaml"
        with resources.as_file(ref) as p:
            return cls.load(p)

    @classmethod
    def load(cls, path: str | Path | None) -> SearchSpace:
        if path is None:
            return cls.default()
        return cls.from_dict(read_yaml_or_json(path, "space"), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<space>") -> SearchSpace:
        where = f"space file {source}"
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a mapping with 'stages' and 'resolutions'")
        check_keys(data, {"name", "family", "resolutions", "stages"}, where)
        check_family(data, where)
        name = str(data.get("name") or Path(source).stem)
        resolutions = _int_choices(data.get("resolutions", [224]), f"{where}: key resolutions")
        for r in resolutions:
            try:
                check_resolution(r)
            except UsageError as exc:
                raise UsageError(f"{where}: key resolutions: {exc}") from None
        stages_raw = data.get("stages")
        if not isinstance(stages_raw, list) or len(stages_raw) != N_STAGES:
            raise UsageError(f"{where}: key stages must be a list of {N_STAGES} stages")
        stages = []
        for i, st in enumerate(stages_raw, start=1):
            sw = f"{where}: key stages[{i - 1}]"
            if not isinstance(st, dict):
                raise UsageError(f"{sw} must be a mapping with widths/depth/expansions/attention")
            allowed = {"widths", "depth", "expansions", "attention"}
            check_keys(st, allowed, sw)
            missing = sorted(allowed - {"attention"} - set(st))
            if missing:
                raise UsageError(f"{sw}: missing key {missing[0]!r}")
            widths = _int_choices(st["widths"], f"{sw}.widths")
            exps = _int_choices(st["expansions"], f"{sw}.expansions")
            depth = st["depth"]
            if is_int(depth):
                depth = [depth, depth]
            if not (isinstance(depth, list) and len(depth) == 2 and all(is_int(d) for d in depth)):
                raise UsageError(f"{sw}.depth must be an integer or a [min, max] pair of integers, got {depth!r}")
            if depth[0] > depth[1]:
                raise UsageError(f"{sw}.depth: inverted range {depth} (min must be <= max)")
            if depth[0] < 1:
                raise UsageError(f"{sw}.depth: minimum depth must be >= 1, got {depth[0]}")
            attention = st.get("attention", False)
            if not isinstance(attention, bool):
                raise UsageError(f"{sw}.attention must be true or false, got {attention!r}")
            if attention and i not in ATTENTION_STAGES:
                raise UsageError(f"{sw}.attention: attention blocks are only possible in stages 3 and 4")
            stages.append(StageSpace(tuple(widths), depth[0], depth[1], tuple(exps), attention))
        return cls(name, tuple(stages), tuple(resolutions), source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": FAMILY,
            "resolutions": list(self.resolutions),
            "stages": [
                {
                    "widths": list(s.widths),
                    "depth": [s.depth_min, s.depth_max],
                    "expansions": list(s.expansions),
                    "attention": s.attention,
                }
                for s in self.stages
            ],
        }

    def digest(self) -> str:
        body = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    # -- membership ----------------------------------------------------------------------------
    def check_resolution(self, resolution: int) -> None:
        if resolution not in self.resolutions:
            raise UsageError(
                f"resolution {resolution} is not in space {self.name!r} "
                f"(it lists {', '.join(map(str, self.resolutions))}); add it to the space file's 'resolutions'"
            )

    def validate(self, arch: Arch) -> None:
        """Raise UsageError naming the first stage/block of `arch` outside this space."""
        where = f"arch {arch.label()} is outside space {self.name!r}"
        self.check_resolution(arch.resolution)
        for i, (st, sp) in enumerate(zip(arch.stages, self.stages), start=1):
            if st.width not in sp.widths:
                raise UsageError(f"{where}: stage {i} width {st.width} not in {list(sp.widths)}")
            if not sp.depth_min <= st.depth <= sp.depth_max:
                raise UsageError(f"{where}: stage {i} depth {st.depth} not in {sp.depth_min}-{sp.depth_max}")
            for j, e in enumerate(st.expansions, start=1):
                if e not in sp.expansions:
                    raise UsageError(f"{where}: stage {i} block {j} expansion {e} not in {list(sp.expansions)}")
            if st.attention and not sp.attention:
                raise UsageError(f"{where}: stage {i} has {st.attention} attention blocks; the space allows none")

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except UsageError:
            return False
        return True

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, rng: random.Random, resolution: int | None = None) -> Arch:
        """A uniformly random subnet (per-dimension uniform choices)."""
        res = resolution if resolution is not None else rng.choice(self.resolutions)
        stages = []
        for sp in self.stages:
            depth = rng.randint(sp.depth_min, sp.depth_max)
            exps = tuple(rng.choice(sp.expansions) for _ in range(depth))
            attn = rng.randint(0, depth) if sp.attention else 0
            stages.append(StageArch(rng.choice(sp.widths), exps, attn))
        return Arch(tuple(stages), res)

    def sample_many(self, n: int, seed: int, resolution: int | None = None) -> list[Arch]:
        rng = random.Random(seed)
        return [self.sample(rng, resolution) for _ in range(n)]

    def largest(self, resolution: int | None = None) -> Arch:
        """The largest subnet: widest, deepest, highest expansion, attention as in the paper's L."""
        res = resolution or self.resolutions[0]
        stages = []
        for sp in self.stages:
            attn = min(6, sp.depth_max) if sp.attention else 0
            stages.append(StageArch(max(sp.widths), (max(sp.expansions),) * sp.depth_max, attn))
        return Arch(tuple(stages), res, "largest")


def _int_choices(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise UsageError(f"{where} must be a list of integers, got {value!r}")
    if not value:
        raise UsageError(f"{where}: empty choice list (give at least one value)")
    for v in value:
        if not is_int(v) or v <= 0:
            raise UsageError(f"{where}: {v!r} is not a positive integer")
    if len(set(value)) != len(value):
        raise UsageError(f"{where}: duplicate values in {value}")
    return sorted(value)
