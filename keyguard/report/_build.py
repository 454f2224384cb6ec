"""Building a finding: one place that collapses keys into patterns and caps the examples.

The engine, the adapter checks and the integrations all build findings through ``make_finding``, so every finding
is shaped the same way whichever part of keyguard reports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from keyguard._patterns import summarize_patterns
from keyguard.report._kinds import FindingKind
from keyguard.report._model import Example, Finding, Fix

#: Patterns listed per finding (the rest are counted), and concrete examples kept.
PATTERNS: Final = 6
EXAMPLES: Final = 3


_MORE: Final = "... and {} more pattern(s)"  # the last item of a finding's patterns when it lists only some
_MORE_COUNT: Final = re.compile(re.escape(_MORE).replace(re.escape("{}"), "([0-9]+)"))


def more_patterns(patterns: Sequence[str], shown: int) -> int:
    """How many patterns of a finding are not among the first ``shown`` of ``patterns`` (counting those its last
    item, ``... and N more pattern(s)``, stands for)."""
    listed = list(patterns)
    counted = _MORE_COUNT.fullmatch(listed[-1]) if listed else None
    if counted is not None:
        listed.pop()
    return max(0, len(listed) - shown) + (int(counted.group(1)) if counted is not None else 0)


def more_patterns_line(more: int) -> str:
    """The line that stands for ``more`` patterns left out of a list."""
    return _MORE.format(more)


def make_finding(
    kind: FindingKind,
    message: str,
    *,
    checkpoint_keys: Sequence[str] = (),
    expected_keys: Sequence[str] = (),
    examples: Sequence[Example] = (),
    fix: Fix | None = None,
    benign: str | None = None,
    hint: str | None = None,
    ctx: Mapping[str, Any] | None = None,
    pattern_keys: Sequence[str] | None = None,
    count: int | None = None,
) -> Finding:
    """A ``Finding`` of ``kind``. Patterns come from ``pattern_keys`` (default: the checkpoint keys, else the
    expected ones); ``count`` defaults to the number of keys the finding covers."""
    keys = pattern_keys if pattern_keys is not None else (checkpoint_keys or expected_keys)
    patterns, groups = summarize_patterns(keys, PATTERNS)
    if groups > PATTERNS:
        patterns.append(more_patterns_line(groups - PATTERNS))
    return Finding(
        code=kind.code,
        kind=kind.kind,
        severity=kind.severity,
        message=message,
        count=count if count is not None else (len(checkpoint_keys) or len(expected_keys) or len(keys)),
        patterns=patterns,
        examples=list(examples)[:EXAMPLES],
        fix=fix,
        benign=benign,
        hint=hint,
        checkpoint_keys=list(checkpoint_keys),
        expected_keys=list(expected_keys),
        ctx=dict(ctx or {}),
    )
