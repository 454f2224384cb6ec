"""Argument parsing, error handling and exit codes shared by every command.

Exit codes: 0 success; 1 findings at or above ``--fail-on`` remain; 2 bad input or usage (one line on stderr, no
traceback unless ``--debug``); 3 an internal error (a bug in keyguard); 130 interrupted (Ctrl-C, one line).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from keyguard._exceptions import KeyguardError
from keyguard._gc import cyclic_gc_paused
from keyguard._printable import printable
from keyguard._version import __version__

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process interrupted by Ctrl-C

Runner = Callable[[argparse.Namespace], int]


def _commands() -> list[ModuleType]:
    from keyguard.cli import _check_adapter, _diagnose, _explain, _fix, _inspect, _snapshot

    return [_inspect, _diagnose, _fix, _explain, _snapshot, _check_adapter]


def build_parser() -> argparse.ArgumentParser:
    # the shared options go before or after the command; SUPPRESS keeps a command's parser from resetting a value
    # given before the command name (``keyguard --color never diagnose ...``) to its default
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of any error"
    )
    common.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default=argparse.SUPPRESS,
        help="colour in the output: auto (default: on a terminal, unless NO_COLOR is set; FORCE_COLOR forces it),"
        " always or never; JSON, GitHub, JUnit and Markdown output never has colour",
    )
    parser = argparse.ArgumentParser(
        prog="keyguard",
        description="Explain why a checkpoint does not load into a PyTorch model, and fix it safely when possible.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"keyguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _commands():
        command.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    # a file name that is not UTF-8 (or any other lone surrogate) is printed escaped rather than failing the print
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        return _run(argv)
    except KeyboardInterrupt:  # at any moment: while the parser is built, the arguments parsed, or a command runs
        print("keyguard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    args.color = getattr(args, "color", "auto")
    runner: Runner = args.run
    try:
        return _run_without_cyclic_gc(runner, args)
    except KeyguardError as exc:
        if args.debug:
            raise
        print(f"keyguard: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"keyguard: internal error: {type(exc).__name__}: {exc} (this is a bug in keyguard;"
            " rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _run_without_cyclic_gc(runner: Runner, args: argparse.Namespace) -> int:
    """Run a command with the cyclic garbage collector paused (and restored after, for callers in process).

    A command builds large acyclic structures (an object or two per key, up to millions): the collector would
    rescan them over and over as they grow and find nothing to free; that was 10% of a diagnosis.
    """
    with cyclic_gc_paused():
        return runner(args)
