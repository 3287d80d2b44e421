"""Cognate: TRM x Titans-MAG recursive model."""
__version__ = "0.1.0"
