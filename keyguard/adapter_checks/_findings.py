"""Building findings: one per kind, its keys collapsed into patterns, with a few concrete examples."""

from __future__ import annotations

from collections.abc import Sequence

from keyguard.report._build import make_finding

finding = make_finding


def shape_text(shape: Sequence[int] | None) -> str:
    return "?" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (many or word + 's')}"
