"""Fix plans: rules with applicability levels, applied in memory or written out."""

from keyguard._exceptions import WriteError
from keyguard.fixes._load import load_state_dict, load_tensors
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
from keyguard.fixes._writer import WriteResult, write_fixed

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
    "WriteError",
    "WriteResult",
    "load_state_dict",
    "load_tensors",
    "write_fixed",
]
