"""Phase 1 training for Cognate models.

``engine`` is the one training loop; a task gives it a model, batches, a loss and an
evaluation: ``trainer`` (one specialization on the curriculum) and ``grok`` (modular arithmetic
until grokking). Around them: ``config``/``presets``/``validation`` (settings), ``state`` and
``checkpoints``/``manifest`` (what a run saves, resume), ``runtime``, ``lock``, ``detector``
(``GrokkingDetector``), ``optim``, ``metrics``, ``progress``, ``plots``, ``report``, ``cli`` and
``commands``; the data side: ``tokenizer``, ``data``, ``curriculum``, ``tasks``, ``evaluation``,
``grok_data``.
"""

from .detector import GrokkingDetector

__version__ = "0.1.0"

__all__ = ["GrokkingDetector", "__version__"]
