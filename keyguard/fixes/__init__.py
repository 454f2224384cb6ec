"""Fix plans: rules with applicability levels, applied in memory or written out."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
else:
    from keyguard._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "WriteError": "keyguard._exceptions",
            "write_fixed_adapter": "keyguard.fixes._adapter_write",
            "load_state_dict": "keyguard.fixes._load",
            "load_tensors": "keyguard.fixes._load",
            "PLAN_FORMAT": "keyguard.fixes._plan",
            "Plan": "keyguard.fixes._plan",
            "AddPrefix": "keyguard.fixes._rules",
            "Applicability": "keyguard.fixes._rules",
            "Drop": "keyguard.fixes._rules",
            "Fuse": "keyguard.fixes._rules",
            "MapKeys": "keyguard.fixes._rules",
            "Remap": "keyguard.fixes._rules",
            "Rename": "keyguard.fixes._rules",
            "ReplacePrefix": "keyguard.fixes._rules",
            "Rule": "keyguard.fixes._rules",
            "ShiftIndex": "keyguard.fixes._rules",
            "Split": "keyguard.fixes._rules",
            "StripPrefix": "keyguard.fixes._rules",
            "Transpose": "keyguard.fixes._rules",
            "StaleTemp": "keyguard.fixes._stale",
            "find_stale_temps": "keyguard.fixes._stale",
            "remove_stale_temps": "keyguard.fixes._stale",
            "WriteResult": "keyguard.fixes._writer",
            "write_fixed": "keyguard.fixes._writer",
        },
    )

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
