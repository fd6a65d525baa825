"""`python -m splatops_trainer` is `splatops-train`."""

import sys

from .cli import main

sys.exit(main())
