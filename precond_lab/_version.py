"""The package version, in one place (read by ``precond_lab`` and ``provenance``)."""

__version__ = "0.1.0"
