"""The trainer tests' helpers (trainer_process.py) importable by name, as in tests/operator."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
