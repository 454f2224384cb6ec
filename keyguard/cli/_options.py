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
