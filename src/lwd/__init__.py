"""lwd: learning while deploying."""

__version__ = "0.1.0"
