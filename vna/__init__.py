"""vna: an enterprise imaging archive."""

__version__ = "0.1.0"
