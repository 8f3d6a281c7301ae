"""varrt's version, in the one place the package metadata (pyproject.toml) and the code read it."""

__version__ = "0.1.0"
