"""Fix plans: rules with applicability levels, applied in memory or written out."""

from keyguard.fixes._plan import PLAN_FORMAT, Plan
from keyguard.fixes._rules import (
    AddPrefix,
    Applicability,
    Drop,
    Fuse,
    MapKeys,
    Rename,
    ReplacePrefix,
    Rule,
    ShiftIndex,
    Split,
    StripPrefix,
    Transpose,
)

__all__ = [
    "PLAN_FORMAT",
    "AddPrefix",
    "Applicability",
    "Drop",
    "Fuse",
    "MapKeys",
    "Plan",
    "Rename",
    "ReplacePrefix",
    "Rule",
    "ShiftIndex",
    "Split",
    "StripPrefix",
    "Transpose",
]
