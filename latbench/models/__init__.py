"""Model registry, timm style: one builder function per named variant in its family's module,
registered under its function name with `@register_model`.

The catalogue of names (family module, default input resolution, the family's input rule) is
plain data, so listing and resolving model names never imports torch; building a model imports
its family module. A test checks that the catalogue and the registered builders agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from latbench.core.errors import UsageError
from latbench.core.userfiles import is_int
from latbench.space.arch import MAX_RESOLUTION
from latbench.space.arch import check_resolution as efficientformerv2_resolution


def multiple_of_32(family: str) -> Callable[[int], None]:
    def check(resolution: int) -> None:
        if not is_int(resolution) or resolution <= 0 or resolution % 32 or resolution > MAX_RESOLUTION:
            raise UsageError(f"{family} input resolution must be a multiple of 32 from 32 to {MAX_RESOLUTION}, "
                             f"got {resolution!r}")

    return check


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # module under latbench.models
    default_resolution: int
    check_resolution: Callable[[int], None]
    #: Parameters (1000 classes) and MACs at the default resolution, for models measured whole; tests
    #: check them against the built networks, so size and cost are known without importing torch.
    params: int | None = None
    macs: int | None = None


_FAMILIES: dict[str, tuple[tuple[str, ...], int, Callable[[int], None]]] = {
    "efficientformerv2": (("efficientformerv2_s0", "efficientformerv2_s1", "efficientformerv2_s2",
                           "efficientformerv2_l"), 224, efficientformerv2_resolution),
    # Fully convolutional, five stride-2 stages: any multiple of 32 keeps every map integral.
    "mobilenetv2": (("mobilenetv2_100",), 224, multiple_of_32("MobileNetV2")),
    # 2x2 patches at 1/8, 1/16 and 1/32 of the input need even maps there (MobileViT paper: 256).
    "mobilevit": (("mobilevit_xxs", "mobilevit_xs", "mobilevit_s"), 256, multiple_of_32("MobileViT")),
}
_COUNTS = {  # name: (parameters, MACs at the default resolution); MobileNetV2 3,504,872 and MobileViT
    # 1,272,024 / 2,317,848 / 5,578,632 parameters are the published counts.
    "mobilenetv2_100": (3_504_872, 300_774_272),
    "mobilevit_xxs": (1_272_024, 407_364_096),
    "mobilevit_xs": (2_317_848, 1_025_911_808),
    "mobilevit_s": (5_578_632, 2_000_831_488),
}
CATALOGUE: dict[str, ModelInfo] = {
    name: ModelInfo(name, family, res, rule, *_COUNTS.get(name, (None, None)))
    for family, (names, res, rule) in _FAMILIES.items() for name in names
}

ModelBuilder = Callable[..., Any]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Decorator registering a builder under its function name (which the catalogue must list)."""
    if fn.__name__ not in CATALOGUE:
        raise RuntimeError(f"model builder {fn.__name__} is not in latbench.models.CATALOGUE")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(CATALOGUE)


def model_info(name: str) -> ModelInfo:
    if name not in CATALOGUE:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(sorted(CATALOGUE))}")
    return CATALOGUE[name]


def default_resolution(name: str) -> int:
    return model_info(name).default_resolution


def check_resolution(name: str, resolution: int) -> None:
    """The input rule of `name`'s family (one-line UsageError when `resolution` breaks it)."""
    model_info(name).check_resolution(resolution)


def create_model(name: str, **kwargs: Any) -> Any:
    """Build a registered model by name; kwargs go to its builder (e.g. resolution=256)."""
    info = model_info(name)
    importlib.import_module(f"latbench.models.{info.family}")  # runs its @register_model decorators
    return _REGISTRY[name](**kwargs)
