"""``keyguard explain CODE_OR_KIND``: a finding kind's docs page in the terminal."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "show what a finding code or kind means, why it matters, and how safe its fix is"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("explain", help=HELP, description=HELP + ".", parents=[common])
    p.add_argument("code", metavar="CODE_OR_KIND", nargs="?", help="e.g. KG101 or extra_prefix; omit to list all")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from keyguard._exceptions import KeyguardError
    from keyguard.cli._screen import screen
    from keyguard.report import KINDS, lookup

    out = screen(args)
    if args.code is None:
        print(render_listing(list(KINDS.values()), out.width, color=out.color))
        return 0
    found = lookup(args.code)
    if found is None:
        raise KeyguardError(f"unknown finding code or kind {args.code!r} (`keyguard explain` lists them)")
    print(render_page(found, out.width, color=out.color))
    return 0


def render_listing(kinds: list[Any], width: int = 100, *, color: bool = False) -> str:
    """Every kind, ordered by code, in columns sized to the longest name; in a terminal too narrow for a title
    column, each kind takes two lines (the title under its name) instead."""
    from keyguard._console import paint, wrap

    kinds = sorted(kinds, key=lambda k: k.code)
    name = max(len(k.kind) for k in kinds)
    level = max(len(k.severity.value) for k in kinds)
    title_at = len(kinds[0].code) + 2 + name + 2 + level + 2
    lines = []
    for kind in kinds:
        code = paint(kind.code, kind.severity.value, color)
        if width - title_at >= _TITLE_ROOM:
            title = wrap(kind.title, width - title_at)
            lines.append(f"{code}  {kind.kind:<{name}}  {kind.severity.value:<{level}}  {title[0]}")
            lines.extend(" " * title_at + line for line in title[1:])
        else:
            lines.append(f"{code}  {kind.kind} ({kind.severity.value})")
            lines.extend(wrap(kind.title, width, indent=len(kind.code) + 2, hang=2))
    return "\n".join(lines)


_TITLE_ROOM = 40  # narrower than this, a title column is too broken up to read: each kind takes two lines


def render_page(kind: Any, width: int = 100, *, color: bool = False) -> str:
    """A kind's page: What it does / Why is this bad? / Fix safety / Example, wrapped to ``width``."""
    from keyguard._console import paint, wrap

    def section(heading: str, text: str) -> str:
        return "\n".join([paint(heading, "heading", color), *wrap(text, width, color=color)])

    title = f"{kind.code} {kind.kind} ({kind.severity.value}): {kind.title}"
    return "\n\n".join(
        [
            "\n".join(paint(line, "heading", color) for line in wrap(title, width, hang=2)),
            section("What it does", kind.what),
            section("Why is this bad?", kind.why),
            section("Fix safety", kind.fix_safety),
            section("Example", kind.example),
        ]
    )
