"""Phase 1 training for Cognate models."""
__version__ = "0.1.0"
