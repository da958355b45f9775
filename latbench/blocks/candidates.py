"""Resolve what a user names on the command line (a registered model or an arch file) to a Candidate.

A Candidate knows how to build itself and how it decomposes into block configurations: an
EfficientFormerV2 (named or from an arch file) into its blocks, any other registered model into
one whole-model block.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.blocks.configs import BlockConfig, ModelConfig, arch_params, decompose
from latbench.core.errors import UsageError
from latbench.core.userfiles import read_yaml_or_json
from latbench.models import check_resolution as check_model_resolution
from latbench.models import create_model, default_resolution, list_models, model_info
from latbench.space import NAMED_ARCHS, Arch, SearchSpace, check_resolution, named_arch

ARCH_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Candidate:
    name: str
    resolution: int
    arch: Arch | None = None  # set for EfficientFormerV2 subnets (named or from a file)
    model_name: str | None = None  # registry name, when it is a registered model
    source: str = "registry"

    def build(self) -> Any:
        if self.arch is not None:
            from latbench.models.efficientformerv2 import EfficientFormerV2

            return EfficientFormerV2(self.arch)
        return create_model(self.model_name, resolution=self.resolution)

    def blocks(self) -> list[BlockConfig]:
        if self.arch is not None:
            return decompose(self.arch)
        return [ModelConfig(self.resolution, self.model_name)]

    def params(self) -> int:
        if self.arch is not None:
            return arch_params(self.arch)
        info = model_info(self.model_name)
        if info.params is not None and self.resolution == info.default_resolution:
            return info.params
        return sum(p.numel() for p in self.build().parameters())

    def macs(self) -> int:
        if self.arch is None:
            info = model_info(self.model_name)
            if info.macs is not None and self.resolution == info.default_resolution:
                return info.macs
        return sum(c.macs() for c in self.blocks())

    @property
    def key(self) -> str:
        """Stable identifier of what gets exported (the arch's content, not just its name)."""
        if self.arch is not None:
            return f"arch-{self.arch.digest()[:12]}-r{self.resolution}"
        return f"model-{self.model_name}-r{self.resolution}"

    @property
    def kind(self) -> str:
        return "model"

    def fields(self) -> dict[str, Any]:
        """What identifies the candidate in journals and tables (like BlockConfig.fields)."""
        return {"kind": "model", "name": self.name, "model_name": self.model_name,
                "arch": None if self.arch is None else self.arch.to_dict()}

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.resolution, self.resolution)


def _from_arch(arch: Arch, source: str) -> Candidate:
    check_resolution(arch.resolution)
    return Candidate(arch.label(), arch.resolution, arch=arch, source=source)


def resolve_candidate(spec: str, resolution: int | None = None) -> Candidate:
    """NAME of a registered model, or the path of an arch YAML/JSON file."""
    names = list_models()
    if spec in names:
        res = resolution or default_resolution(spec)
        if spec in NAMED_ARCHS:
            return _from_arch(named_arch(spec, res), "registry")
        check_model_resolution(spec, res)
        return Candidate(spec, res, model_name=spec)
    path = Path(spec)
    if path.suffix.lower() in ARCH_SUFFIXES and path.is_file():
        arch = Arch.load(path)
        if resolution is not None and resolution != arch.resolution:
            arch = Arch(arch.stages, resolution, arch.name)
        if arch.name is None:
            arch = Arch(arch.stages, arch.resolution, path.stem)
        return _from_arch(arch, str(path))
    if path.suffix.lower() in ARCH_SUFFIXES:
        raise UsageError(f"arch file {spec} does not exist")
    raise UsageError(f"unknown model {spec!r}: known models are {', '.join(names)}; or pass an arch .yaml/.json file")


def to_candidate(target: Any, resolution: int | None = None) -> Candidate:
    """A Candidate from what a caller has: a Candidate, an Arch, an arch mapping (as in an arch
    file), a registered model name, or the path of an arch file."""
    if isinstance(target, Candidate):
        return target
    if isinstance(target, Arch):
        return _from_arch(target if target.name else Arch(target.stages, target.resolution, target.label()), "arch")
    if isinstance(target, dict):
        return _from_arch(Arch.from_dict(target, source="<dict>"), "dict")
    if isinstance(target, (str, Path)):
        return resolve_candidate(str(target), resolution)
    raise UsageError(f"cannot estimate a {type(target).__name__}: give a model name, an Arch, an arch mapping "
                     "or an arch file path")


def resolve_candidates(specs: list[str], resolution: int | None = None) -> list[Candidate]:
    """Like resolve_candidate, but a YAML file holding a list expands to its entries.

    A list entry is a model name, an arch file path, or an inline arch mapping.
    """
    out: list[Candidate] = []
    for spec in specs:
        path = Path(spec)
        if path.suffix.lower() in ARCH_SUFFIXES and path.is_file():
            data: Any = read_yaml_or_json(path, "candidate")
            if isinstance(data, list):
                for i, entry in enumerate(data):
                    if isinstance(entry, str):
                        out.append(resolve_candidate(entry, resolution))
                    elif isinstance(entry, dict):
                        arch = Arch.from_dict(entry, source=f"{spec}[{i}]")
                        if arch.name is None:
                            arch = Arch(arch.stages, arch.resolution, f"{path.stem}-{i}")
                        out.append(_from_arch(arch, f"{spec}[{i}]"))
                    else:
                        raise UsageError(f"candidate list {spec} entry {i}: expected a model name or an arch mapping")
                continue
        out.append(resolve_candidate(spec, resolution))
    seen: set[str] = set()
    for c in out:
        if c.name in seen:
            raise UsageError(f"candidate name {c.name!r} appears twice; give the arch files distinct 'name' fields")
        seen.add(c.name)
    return out


def sample_candidates(space: SearchSpace, resolution: int, n: int, seed: int, *, purpose: str = "validation",
                      named: bool = True) -> list[Candidate]:
    """Whole models to measure end to end: published variants in the space plus seeded random
    subnets, for `purpose`:

    - "validation": S0-L (those in the space, with `named`) plus `n` random subnets `subnet-SEED-I`;
    - "calibration": S0 (when in the space) counted within `n`, the rest random `calib-I`.

    The two purposes draw from different random streams, so a table is never validated on the
    subnets it was calibrated on.
    """
    if purpose not in ("validation", "calibration"):
        raise ValueError(f"unknown purpose {purpose!r}")
    if n < 0:
        raise UsageError(f"the number of subnets must be >= 0, got {n}")
    out: list[Candidate] = []
    variants = NAMED_ARCHS if purpose == "validation" else ("efficientformerv2_s0",)
    for name in variants if named else ():
        arch = named_arch(name, resolution)
        if space.contains(arch):
            out.append(Candidate(name, resolution, arch=arch))
    if purpose == "calibration":
        out = out[:n]
    rng = random.Random(f"{'validate' if purpose == 'validation' else 'calibration'}:{seed}")
    for i in range(n if purpose == "validation" else n - len(out)):
        a = space.sample(rng, resolution)
        name = f"subnet-{seed}-{i}" if purpose == "validation" else f"calib-{len(out)}"
        out.append(Candidate(name, resolution, arch=Arch(a.stages, resolution, name)))
    return out
