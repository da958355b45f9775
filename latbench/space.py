"""The EfficientFormerV2 search space as data: `SearchSpace` (a YAML file) and `Arch` (one subnet).

An Arch lists, per stage, the width, the FFN expansion ratio of every block (so its length is the
stage depth) and how many trailing blocks are attention blocks. Attention is only defined in
stages 3 and 4, as in the paper.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from latbench.errors import UsageError

N_STAGES = 4
ATTENTION_STAGES = (3, 4)
FAMILY = "efficientformerv2"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_yaml_or_json(path: str | Path, what: str) -> Any:
    """Parse a YAML (or JSON, a YAML subset) file safely, with a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).replace("\n", " ")
        raise UsageError(f"{what} file {path} is not valid YAML/JSON: {reason}") from None


def check_keys(data: dict, known: set[str], where: str) -> None:
    """One-line error for the first key of `data` that is not in `known`."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def check_family(data: dict, where: str) -> None:
    if data.get("family", FAMILY) != FAMILY:
        raise UsageError(f"{where}: family {data['family']!r} is not supported (only {FAMILY!r})")


@dataclass(frozen=True)
class StageArch:
    width: int
    expansions: tuple[int, ...]
    attention: int = 0

    @property
    def depth(self) -> int:
        return len(self.expansions)


@dataclass(frozen=True)
class Arch:
    """One EfficientFormerV2 subnet. Hashable and comparable, so it can key caches."""

    stages: tuple[StageArch, ...]
    resolution: int = 224
    name: str | None = field(default=None, compare=False)

    @property
    def widths(self) -> list[int]:
        return [s.width for s in self.stages]

    @property
    def depths(self) -> list[int]:
        return [s.depth for s in self.stages]

    def label(self) -> str:
        return self.name or f"arch-{self.digest()[:10]}"

    def compact(self) -> str:
        """Readable one-line description, e.g. w32-48-96-176 d2-2-6-4 a0-0-2-2 r224."""
        return (
            f"w{'-'.join(map(str, self.widths))} d{'-'.join(map(str, self.depths))} "
            f"a{'-'.join(str(s.attention) for s in self.stages)} r{self.resolution}"
        )

    def digest(self) -> str:
        body = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"family": FAMILY}
        if self.name:
            d["name"] = self.name
        d["resolution"] = self.resolution
        d["stages"] = [
            {"width": s.width, "expansions": list(s.expansions), "attention": s.attention} for s in self.stages
        ]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> None:
        from latbench.fileio import atomic_write_text

        text = json.dumps(self.to_dict(), indent=2) if str(path).endswith(".json") else self.to_yaml()
        atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> Arch:
        return cls.from_dict(read_yaml_or_json(path, "arch"), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<arch>") -> Arch:
        where = f"arch {source}"
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a mapping with 'stages', got {type(data).__name__}")
        check_keys(data, {"family", "name", "resolution", "stages"}, where)
        check_family(data, where)
        res = data.get("resolution", 224)
        if not _is_int(res) or res <= 0:
            raise UsageError(f"{where}: resolution must be a positive integer, got {res!r}")
        stages_raw = data.get("stages")
        if not isinstance(stages_raw, list) or len(stages_raw) != N_STAGES:
            raise UsageError(f"{where}: 'stages' must be a list of {N_STAGES} stages")
        stages = []
        for i, st in enumerate(stages_raw, start=1):
            sw = f"{where}: stage {i}"
            if not isinstance(st, dict):
                raise UsageError(f"{sw}: expected a mapping with width/expansions/attention")
            check_keys(st, {"width", "expansions", "attention"}, sw)
            width, exps, attn = st.get("width"), st.get("expansions"), st.get("attention", 0)
            if not _is_int(width) or width <= 0:
                raise UsageError(f"{sw}: width must be a positive integer, got {width!r}")
            if not isinstance(exps, list) or not exps:
                raise UsageError(f"{sw}: 'expansions' must be a non-empty list (one ratio per block)")
            for j, e in enumerate(exps, start=1):
                if not _is_int(e) or e <= 0:
                    raise UsageError(f"{sw} block {j}: expansion ratio must be a positive integer, got {e!r}")
            if not _is_int(attn) or not 0 <= attn <= len(exps):
                raise UsageError(f"{sw}: attention must be an integer from 0 to the depth {len(exps)}, got {attn!r}")
            if attn and i not in ATTENTION_STAGES:
                raise UsageError(f"{sw}: attention blocks are only possible in stages 3 and 4")
            stages.append(StageArch(width, tuple(exps), attn))
        name = data.get("name")
        return cls(tuple(stages), res, str(name) if name is not None else None)


# Published variants (REFERENCE.md section 1).
_NAMED = {
    "efficientformerv2_s0": ([32, 48, 96, 176], [[4, 4], [4, 4], [4, 3, 3, 3, 4, 4], [4, 3, 3, 4]], 2),
    "efficientformerv2_s1": (
        [32, 48, 120, 224],
        [[4, 4, 4], [4, 4, 4], [4, 4, 3, 3, 3, 3, 4, 4, 4], [4, 4, 3, 3, 4, 4]],
        2,
    ),
    "efficientformerv2_s2": (
        [32, 64, 144, 288],
        [[4] * 4, [4] * 4, [4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4], [4, 4, 3, 3, 3, 3, 4, 4]],
        4,
    ),
    "efficientformerv2_l": (
        [40, 80, 192, 384],
        [[4] * 5, [4] * 5, [4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4], [4, 4, 4, 3, 3, 3, 3, 4, 4, 4]],
        6,
    ),
}
NAMED_ARCHS = tuple(_NAMED)


def named_arch(name: str, resolution: int = 224) -> Arch:
    """The Arch of a published variant (S0, S1, S2, L)."""
    if name not in _NAMED:
        raise UsageError(f"unknown EfficientFormerV2 variant {name!r}; known: {', '.join(_NAMED)}")
    widths, exps, vit = _NAMED[name]
    stages = tuple(
        StageArch(w, tuple(e), vit if i + 1 in ATTENTION_STAGES else 0) for i, (w, e) in enumerate(zip(widths, exps))
    )
    return Arch(stages, resolution, name)


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
        from latbench.models.efficientformerv2 import check_resolution

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
            if _is_int(depth):
                depth = [depth, depth]
            if not (isinstance(depth, list) and len(depth) == 2 and all(_is_int(d) for d in depth)):
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

    def smallest(self, resolution: int | None = None) -> Arch:
        res = resolution or self.resolutions[0]
        stages = [StageArch(min(sp.widths), (min(sp.expansions),) * sp.depth_min, 0) for sp in self.stages]
        return Arch(tuple(stages), res, "smallest")


def _int_choices(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise UsageError(f"{where} must be a list of integers, got {value!r}")
    if not value:
        raise UsageError(f"{where}: empty choice list (give at least one value)")
    for v in value:
        if not _is_int(v) or v <= 0:
            raise UsageError(f"{where}: {v!r} is not a positive integer")
    if len(set(value)) != len(value):
        raise UsageError(f"{where}: duplicate values in {value}")
    return sorted(value)
