"""Building rename rules from one segment edit (rename, insertion or removal) with its neighbours as context."""

from __future__ import annotations

import re

from keyguard._patterns import HOLE
from keyguard.fixes._rules import Applicability, Rename

_NUMBER = "[0-9]+"


def _atom(segment: str) -> str:
    return _NUMBER if segment == HOLE else re.escape(segment)


def segment_rule(
    left: str | None,
    old: str,
    new: str,
    right: str | None,
    *,
    applicability: Applicability = Applicability.safe,
    reason: str | None = None,
) -> Rename:
    """Rule replacing the segment(s) ``old`` by ``new``; either may be empty (an insertion or a removal).

    ``left`` / ``right`` are the neighbouring segments that must surround the edit (``None``: the key's start /
    end); ``HOLE`` stands for any block number. The left neighbour may sit at any depth.
    """
    pattern_parts: list[str] = []
    new_parts: list[str] = []
    group = 0
    if left is not None:
        pattern_parts.append(r"((?:.*\.)?" + _atom(left) + ")")
        group += 1
        new_parts.append(f"\\g<{group}>")
    pattern_parts.extend(_atom(p) for p in old.split(".") if p)
    if new:
        new_parts.append(new.replace("\\", "\\\\"))
    if right is not None:
        pattern_parts.append("(" + _atom(right) + r"(?:\..*)?)")
        group += 1
        new_parts.append(f"\\g<{group}>")
    return Rename(
        pattern=r"\.".join(pattern_parts),
        replacement=".".join(new_parts),
        old=old,
        new=new,
        applicability=applicability,
        reason=reason,
    )


def anywhere_rule(old: str, new: str, *, reason: str | None = None) -> Rename:
    """Rename the segment ``old`` to ``new`` wherever it occurs as a whole segment (known conventions only)."""
    return Rename(
        pattern=rf"((?:.*\.)?){re.escape(old)}((?:\..*)?)",
        replacement=f"\\g<1>{new}\\g<2>",
        old=old,
        new=new,
        reason=reason,
    )
