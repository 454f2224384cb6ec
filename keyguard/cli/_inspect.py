"""``keyguard inspect SOURCE``: what a source holds."""

from __future__ import annotations

import argparse
from typing import Any

from keyguard.cli._options import add_source_options, source_kwargs

HELP = "show what a checkpoint, adapter, model config or manifest holds"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inspect", help=HELP, description=HELP + ".", parents=[common])
    p.add_argument("source", metavar="SOURCE", help="file, folder, index, adapter folder, config folder or manifest")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")
    p.add_argument("--all", action="store_true", help="list every key group, not only the first 40")
    add_source_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keyguard._summary import render_summary, summarize
    from keyguard.sources import read_keys

    summary = summarize(read_keys(args.source, **source_kwargs(args)))
    if args.format == "json":
        print(summary.model_dump_json(indent=2))
    else:
        from keyguard.cli._screen import screen

        print(render_summary(summary, max_groups=None if args.all else 40, width=screen(args).width))
    return 0
