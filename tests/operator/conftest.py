import pathlib
import sys

# Let the tests import their fixtures module by name (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(pathlib.Path(__file__).parent))
