"""Building findings: one per kind, its keys collapsed into patterns, with a few concrete examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from keyguard._patterns import KeyGroup, collapse
from keyguard.report._kinds import FindingKind
from keyguard.report._model import Example, Finding, Fix

PATTERNS: Final = 6
EXAMPLES: Final = 3


def finding(
    kind: FindingKind,
    message: str,
    *,
    checkpoint_keys: Sequence[str] = (),
    expected_keys: Sequence[str] = (),
    examples: Sequence[Example] = (),
    ctx: dict[str, Any] | None = None,
    hint: str | None = None,
    fix: Fix | None = None,
    pattern_keys: Sequence[str] | None = None,
    count: int | None = None,
) -> Finding:
    """A ``Finding`` of ``kind``; patterns come from ``pattern_keys`` (default: the checkpoint keys, else the
    expected ones)."""
    keys = list(pattern_keys if pattern_keys is not None else (checkpoint_keys or expected_keys))
    groups: list[KeyGroup[None]] = collapse(keys)
    patterns = [g.pattern for g in groups[:PATTERNS]]
    if len(groups) > PATTERNS:
        patterns.append(f"... and {len(groups) - PATTERNS} more pattern(s)")
    return Finding(
        code=kind.code,
        kind=kind.kind,
        severity=kind.severity,
        message=message,
        count=count if count is not None else (len(checkpoint_keys) or len(expected_keys) or len(keys)),
        patterns=patterns,
        examples=list(examples)[:EXAMPLES],
        fix=fix,
        hint=hint,
        checkpoint_keys=list(checkpoint_keys),
        expected_keys=list(expected_keys),
        ctx=ctx or {},
    )


def shape_text(shape: Sequence[int] | None) -> str:
    return "?" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (many or word + 's')}"
