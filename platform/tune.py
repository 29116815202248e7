"""`python -m platform.tune SPEC [options]` from the repository root: the `tuning-platform` command."""

import sys

from tuning_platform.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m platform.tune"))
