"""``python -m cognate_train`` == the ``cognate-train`` console script."""

import sys

from .cli import main

sys.exit(main())
