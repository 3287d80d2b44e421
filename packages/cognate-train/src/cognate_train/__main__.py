"""``python -m cognate_train`` == the ``cognate-train`` console script."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: no traceback either
    print("cognate-train: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
