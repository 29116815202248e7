"""`python -m tuning_platform SPEC [options]`: the `tuning-platform` command."""

import sys

from tuning_platform.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m tuning_platform"))
