"""Options shared by commands that read sources."""

from __future__ import annotations

import argparse
from typing import Any


def add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--container",
        metavar="KEY",
        help="for PyTorch checkpoints holding several state dicts: the one to read (e.g. model_ema)",
    )
    p.add_argument(
        "--architecture",
        metavar="CLASS",
        help="for config.json folders: the transformers model class to build (default: architectures[0])",
    )


def source_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"container": args.container, "architecture": args.architecture}


def add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=["table", "json", "markdown", "github", "junit"],
        default="table",
        help="output format (default: table; junit: one test case per finding kind, for CI dashboards)",
    )
    p.add_argument(
        "--fail-on",
        choices=["error", "warning", "never"],
        default="error",
        help="exit 1 when findings at or above this severity remain (default: error)",
    )


def hint_pair(text: str) -> tuple[str, str]:
    """``--hint CHECKPOINT_KEY=EXPECTED_KEY`` parsed (argparse ``type``: a malformed hint is a usage error)."""
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f"expected CHECKPOINT_KEY=EXPECTED_KEY, got {text!r}")
    return old, new


def add_hint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hint",
        action="append",
        default=[],
        type=hint_pair,
        metavar="CHECKPOINT_KEY=EXPECTED_KEY",
        help="decide a tie keyguard cannot: this checkpoint key is that expected key; the choice carries over to the"
        " key's whole numbered group, is checked against shapes, and is recorded in the plan (repeatable)",
    )


def add_match_values_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--match-values",
        action="store_true",
        help="where keys stay ambiguous or were matched by names, compare tensor bytes with the reference (reads"
        " those tensors; both sides must hold data): equal bytes make a mapping safe",
    )
