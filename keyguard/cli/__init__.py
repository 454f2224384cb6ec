"""The ``keyguard`` command line: a thin layer over the library (every command is one library call away)."""

from keyguard.cli._app import main

__all__ = ["main"]
