"""`python -m tuning_platform SPEC [options]`: the `tuning-platform` command."""

from tuning_platform.cli import exit_command, main

if __name__ == "__main__":
    exit_command(main(prog="python -m tuning_platform"))
