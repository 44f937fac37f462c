"""The ``haagent`` command line."""

from haagent.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
