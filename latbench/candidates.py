"""Resolve what a user names on the command line (a registered model or an arch file) to a Candidate.

A Candidate knows how to build itself and how it decomposes into block configurations: an
EfficientFormerV2 (named or from an arch file) into its blocks, any other registered model into
one whole-model block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from latbench.blocks import BlockConfig, ModelConfig, arch_params, decompose
from latbench.errors import UsageError
from latbench.models import create_model, default_resolution, list_models
from latbench.space import NAMED_ARCHS, Arch, named_arch, read_yaml_or_json

ARCH_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Candidate:
    name: str
    resolution: int
    arch: Arch | None = None  # set for EfficientFormerV2 subnets (named or from a file)
    model_name: str | None = None  # registry name, when it is a registered model
    source: str = "registry"

    def build(self) -> nn.Module:
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
        return sum(p.numel() for p in self.build().parameters())

    def macs(self) -> int:
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
    from latbench.models.efficientformerv2 import check_resolution

    check_resolution(arch.resolution)
    return Candidate(arch.label(), arch.resolution, arch=arch, source=source)


def resolve_candidate(spec: str, resolution: int | None = None) -> Candidate:
    """NAME of a registered model, or the path of an arch YAML/JSON file."""
    names = list_models()
    if spec in names:
        res = resolution or default_resolution(spec)
        if spec in NAMED_ARCHS:
            return _from_arch(named_arch(spec, res), "registry")
        from latbench.models.efficientformerv2 import check_resolution

        check_resolution(res)
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
