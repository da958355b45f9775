"""Model registry: one builder function per named variant, looked up by name (timm style)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from latbench.errors import UsageError

ModelBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}
_DEFAULT_RESOLUTION: dict[str, int] = {}


def register_model(default_resolution: int = 224) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering a builder under its function name."""

    def wrap(fn: ModelBuilder) -> ModelBuilder:
        _REGISTRY[fn.__name__] = fn
        _DEFAULT_RESOLUTION[fn.__name__] = default_resolution
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the family modules runs their @register_model decorators.
    from latbench.models import efficientformerv2, mobilenetv2, mobilevit  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def default_resolution(name: str) -> int:
    _ensure_loaded()
    _check_known(name)
    return _DEFAULT_RESOLUTION[name]


def _check_known(name: str) -> None:
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; kwargs go to its builder (e.g. resolution=256)."""
    _ensure_loaded()
    _check_known(name)
    return _REGISTRY[name](**kwargs)
