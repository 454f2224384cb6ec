"""``keyguard snapshot SOURCE -o keys.json``: pin the keys a model expects in a manifest."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keyguard.cli._options import add_source_options, source_kwargs

HELP = "write a key manifest (keyguard.keys/v1) of a source, for CI checks without the model"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("snapshot", help=HELP, description=HELP + ".", parents=[common])
    p.add_argument("source", metavar="SOURCE", help="anything `keyguard inspect` reads")
    p.add_argument("-o", "--output", required=True, help="manifest file to write ('-' for standard output)")
    add_source_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keyguard.sources import manifest_json, read_keys, write_manifest

    keys = read_keys(args.source, **source_kwargs(args))
    if args.output == "-":
        sys.stdout.write(manifest_json(keys))
    else:
        try:
            write_manifest(keys, args.output)
        except OSError as exc:  # a missing folder, a directory in the way, no permission: bad input, not a bug
            from keyguard._exceptions import KeyguardError

            raise KeyguardError(f"{args.output}: cannot write the manifest ({exc.strerror or exc})") from exc
        print(f"wrote {args.output}: {len(keys):,} keys from {keys.location} ({keys.format})", file=sys.stderr)
    return 0
