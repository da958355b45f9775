"""One EfficientFormerV2 architecture as data (`Arch`), the published variants, and the facts the
family fixes for every subnet (four stages, attention only in stages 3 and 4, input resolutions).

An Arch lists, per stage, the width, the FFN expansion ratio of every block (so its length is the
stage depth) and how many trailing blocks are attention blocks.

Architecture facts are from Li et al., "Rethinking Vision Transformers for MobileNet Size and
Speed" (ICCV 2023, arXiv:2212.08059), Table 1 and its public code (snap-research/EfficientFormer).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from latbench.core.errors import UsageError
from latbench.core.userfiles import check_keys, is_int, read_yaml_or_json

N_STAGES = 4
ATTENTION_STAGES = (3, 4)
FAMILY = "efficientformerv2"

# Fixed by the paper, not searched (Sec. 3 and the public code's Attention4D / Attention4DDownsample):
ATTN_KEY_DIM = 32  # attention blocks: key dim, heads, value ratio (v = 4 * key dim per head)
ATTN_HEADS = 8
ATTN_RATIO = 4
DOWN_KEY_DIM = 16  # attention downsampling between stages 3 and 4
DOWN_HEADS = 8
DOWN_RATIO = 4
LAYER_SCALE_INIT = 1e-5


def stage_resolution(resolution: int, stage: int) -> int:
    """Feature-map side of stage 1..4 (1/4 .. 1/32 of the input)."""
    return -(-resolution // 2 ** (stage + 1))


#: Bounds past any mobile model, so a typo cannot make latbench allocate tens of GB building one.
MAX_RESOLUTION = 2048
MAX_WIDTH = 4096
MAX_EXPANSION = 16
MAX_STAGE_DEPTH = 64


def check_resolution(resolution: int) -> None:
    """EfficientFormerV2's input rule. Strided attention downsamples stage 3 by 2 and upsamples by 2
    again; that only lines up when every stage side is an integer: a multiple of 32."""
    if not is_int(resolution) or resolution < 64 or resolution % 32 or resolution > MAX_RESOLUTION:
        raise UsageError(f"resolution {resolution!r} is not supported: use a multiple of 32 from 64 to "
                         f"{MAX_RESOLUTION} (e.g. 224, 256, 288)")


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

    def without_attention(self) -> Arch:
        """The same subnet with every attention block a plain FFN block (its twin in calibration:
        the two differ by exactly their attention mixers)."""
        return Arch(tuple(StageArch(s.width, s.expansions) for s in self.stages), self.resolution,
                    f"{self.label()}-noattn")

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
        from latbench.core.fileio import atomic_write_text

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
        if not is_int(res) or not 0 < res <= MAX_RESOLUTION:
            raise UsageError(f"{where}: resolution must be an integer from 1 to {MAX_RESOLUTION}, got {res!r}")
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
            if not is_int(width) or not 0 < width <= MAX_WIDTH:
                raise UsageError(f"{sw}: width must be an integer from 1 to {MAX_WIDTH}, got {width!r}")
            if not isinstance(exps, list) or not exps:
                raise UsageError(f"{sw}: 'expansions' must be a non-empty list (one ratio per block)")
            if len(exps) > MAX_STAGE_DEPTH:
                raise UsageError(f"{sw}: {len(exps)} blocks; a stage has at most {MAX_STAGE_DEPTH}")
            for j, e in enumerate(exps, start=1):
                if not is_int(e) or not 0 < e <= MAX_EXPANSION:
                    raise UsageError(f"{sw} block {j}: expansion ratio must be an integer from 1 to "
                                     f"{MAX_EXPANSION}, got {e!r}")
            if not is_int(attn) or not 0 <= attn <= len(exps):
                raise UsageError(f"{sw}: attention must be an integer from 0 to the depth {len(exps)}, got {attn!r}")
            if attn and i not in ATTENTION_STAGES:
                raise UsageError(f"{sw}: attention blocks are only possible in stages 3 and 4")
            stages.append(StageArch(width, tuple(exps), attn))
        name = data.get("name")
        return cls(tuple(stages), res, str(name) if name is not None else None)


# Published variants: widths, per-block expansion ratios, attention blocks at the end of stages 3-4
# (EfficientFormerV2 paper, Table 1; eformer_{s0,s1,s2,l} in snap-research/EfficientFormer).
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
