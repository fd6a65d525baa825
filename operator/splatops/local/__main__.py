"""`python -m splatops.local [...]` is `splatops local [...]`."""

import sys

from splatops.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["local", *sys.argv[1:]]))
