"""`python -m platform.tune SPEC [options]` from the repository root: the `tuning-platform` command."""

from tuning_platform.cli import exit_command, main

if __name__ == "__main__":
    exit_command(main(prog="python -m platform.tune"))
