"""Regular expressions given by the user (``ignore=`` / ``--ignore``), compiled with keyguard's own error."""

from __future__ import annotations

import re
from collections.abc import Iterable

from keyguard._exceptions import PatternError


def compile_patterns(
    patterns: str | re.Pattern[str] | Iterable[str | re.Pattern[str]], option: str
) -> list[re.Pattern[str]]:
    """Compile each pattern (a single string counts as one pattern, not as its characters).

    Raises:
        PatternError: a pattern does not compile, or is not a string; the message names it and ``option``.
    """
    items = [patterns] if isinstance(patterns, (str, re.Pattern)) else list(patterns)
    compiled = []
    for item in items:
        if isinstance(item, re.Pattern):
            compiled.append(item)
            continue
        if not isinstance(item, str):
            raise PatternError(repr(item), option, f"expected a string, got a {type(item).__name__}")
        try:
            compiled.append(re.compile(item))
        except re.error as exc:
            raise PatternError(item, option, exc.msg, exc.pos) from None
        except (OverflowError, RecursionError) as exc:  # e.g. a repeat count too large, deeply nested groups
            raise PatternError(item, option, f"{type(exc).__name__}: {exc}") from None
    return compiled
