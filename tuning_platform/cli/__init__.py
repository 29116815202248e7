"""The `tuning-platform` command: `main.py` parses the command line and maps each outcome to
an exit code, `summary.py` writes what a job did."""

from tuning_platform.cli.main import EXIT_INTERRUPTED, EXIT_TERMINATED, build_parser, console, exit_command, main

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "build_parser", "console", "exit_command", "main"]
