"""wavadapt: bottleneck adapters for self-supervised speech models."""

__version__ = "0.1.0"
