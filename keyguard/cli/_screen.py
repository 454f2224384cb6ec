"""How the commands write for people: the width and colour of standard output (``keyguard._console``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Screen:
    """Standard output as the commands see it: ``width`` columns, ``color`` on or off."""

    width: int
    color: bool


def screen(args: argparse.Namespace) -> Screen:
    """The screen for standard output under the ``--color`` option and the environment."""
    from keyguard._console import terminal_width, use_color

    return Screen(terminal_width(sys.stdout), use_color(sys.stdout, getattr(args, "color", "auto")))
