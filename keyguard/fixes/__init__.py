"""Fix plans: rules with applicability levels, applied in memory or written out."""

from keyguard._exceptions import WriteError
from keyguard.fixes._adapter_write import write_fixed_adapter
from keyguard.fixes._load import load_state_dict, load_tensors
from keyguard.fixes._plan import PLAN_FORMAT, Plan
from keyguard.fixes._rules import (
    AddPrefix,
    Applicability,
    Drop,
    Fuse,
    MapKeys,
    Remap,
    Rename,
    ReplacePrefix,
    Rule,
    ShiftIndex,
    Split,
    StripPrefix,
    Transpose,
)
from keyguard.fixes._stale import StaleTemp, find_stale_temps, remove_stale_temps
from keyguard.fixes._writer import WriteResult, write_fixed

__all__ = [
    "PLAN_FORMAT",
    "AddPrefix",
    "Applicability",
    "Drop",
    "Fuse",
    "MapKeys",
    "Plan",
    "Remap",
    "Rename",
    "ReplacePrefix",
    "Rule",
    "ShiftIndex",
    "Split",
    "StaleTemp",
    "StripPrefix",
    "Transpose",
    "WriteError",
    "WriteResult",
    "find_stale_temps",
    "load_state_dict",
    "load_tensors",
    "remove_stale_temps",
    "write_fixed",
    "write_fixed_adapter",
]
