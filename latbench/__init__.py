"""latbench: measured on-device latency for mobile vision architectures."""

__version__ = "0.1.0"
