"""Phase 1 training for Cognate models.

Modules: ``cli`` (the ``cognate-train`` command), ``config`` (dataclasses, presets, TOML),
``trainer`` (one specialization on the curriculum), ``grok`` (modular arithmetic until grokking),
``detector`` (``GrokkingDetector``), ``checkpoints`` (atomic, checksummed, resumable),
``metrics``, ``plots``, ``report``, ``optim``; the data side: ``tokenizer``, ``data``, ``tasks``,
``evaluation``, ``grok_data``.
"""

from .detector import GrokkingDetector

__version__ = "0.1.0"

__all__ = ["GrokkingDetector", "__version__"]
