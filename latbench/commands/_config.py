"""The lab's defaults (latbench.toml): kept in latbench.core.config so the API reads them too."""

from latbench.core.config import KEYS, default, default_device, default_for_help, defaults, table_arg

__all__ = ["KEYS", "default", "default_device", "default_for_help", "defaults", "table_arg"]
