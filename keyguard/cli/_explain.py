"""``keyguard explain CODE_OR_KIND``: a finding kind's docs page in the terminal."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

HELP = "show what a finding code or kind means, why it matters, and how safe its fix is"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("explain", help=HELP, description=HELP + ".", parents=[common])
    p.add_argument("code", metavar="CODE_OR_KIND", nargs="?", help="e.g. KG101 or extra_prefix; omit to list all")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keyguard._exceptions import KeyguardError
    from keyguard.report import KINDS, lookup

    if args.code is None:
        for kind in KINDS.values():
            print(f"{kind.code}  {kind.kind:<16} {kind.severity.value:<8} {kind.title}")
        return 0
    found = lookup(args.code)
    if found is None:
        raise KeyguardError(f"unknown finding code or kind {args.code!r} (`keyguard explain` lists them)")
    print(render_page(found))
    return 0


def render_page(kind: Any, width: int = 100) -> str:
    def para(text: str) -> str:
        return textwrap.fill(text, width=width)

    return "\n\n".join(
        [
            f"{kind.code} {kind.kind} ({kind.severity.value}): {kind.title}",
            "What it does\n" + para(kind.what),
            "Why is this bad?\n" + para(kind.why),
            "Fix safety\n" + para(kind.fix_safety),
            "Example\n" + para(kind.example),
        ]
    )
