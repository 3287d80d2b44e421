"""The six Phase 1 datasets from local files: sources, templates, tokenizer, packing, metrics.

- ``sources``: find ``DIR/<name>/`` (save_to_disk, parquet, jsonl, json) or the local HF cache.
- ``templates``: each dataset's hub row -> prompt/answer (+ choices, target number, tests).
- ``tokenizer``: ``--tokenizer {train,PATH}``: byte-level BPE or a local tokenizer folder.
- ``packing``: token streams, full rows of ``max_len``, the resumable ``PackedBatches``.
- ``cache``: the preprocessing cache; ``pipeline``: name -> records / cached tokens / BPE.
- ``metrics``: exact match of the final number, lm-eval multiple choice, mbpp loss and pass@1.
"""

from .sources import DATASET_NAMES, DataError

__all__ = ["DATASET_NAMES", "DataError"]
