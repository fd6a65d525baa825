"""`python -m splatops.local [...]` is `splatops local [...]`."""

import argparse
import sys

from splatops.local import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m splatops.local", description="splatops local: "
                                     "run everything on this machine: API, operator, trainer")
    run.add_arguments(parser)
    sys.exit(run.main(parser.parse_args()))
