"""Which finding kinds a ``check_adapter`` run checks: the test cases of its JUnit report, passing ones included."""

from __future__ import annotations

from typing import Final

from keyguard.report import _kinds as kinds

_ALWAYS: Final = (
    kinds.INVALID_ADAPTER_CONFIG,
    kinds.NO_MATCHING_MODULES,
    # the engine's naming findings, for keys that name nothing of the base
    kinds.EXTRA_PREFIX,
    kinds.MISSING_PREFIX,
    kinds.REPLACED_PREFIX,
    kinds.RENAMED,
    kinds.INDEX_SHIFT,
    kinds.UNEXPECTED,
    kinds.AMBIGUOUS,
    kinds.UNMATCHED_TARGET,
    kinds.TARGET_WITHOUT_WEIGHTS,
    kinds.UNDECLARED_WEIGHTS,
    kinds.INCOMPLETE_LORA_PAIR,
    kinds.RANK_MISMATCH,
    kinds.LORA_FEATURE_MISMATCH,
    kinds.SAVED_TENSOR_MISMATCH,
    kinds.SAVED_TENSOR_MISSING,
    kinds.MIXED_DTYPES,
)
_VALUES: Final = (kinds.NONFINITE_VALUES, kinds.UNTRAINED_LORA)
_XLORA: Final = (kinds.XLORA_STOCK_KEY_REWRITE_FAILS, kinds.XLORA_STOCK_LOOPS_FOREVER)


def checked_kinds(*, check_values: bool = False, xlora: bool = False) -> list[str]:
    """Codes of the finding kinds ``check_adapter`` checks with these options, in a stable order."""
    chosen = [*_ALWAYS, *(_VALUES if check_values else ()), *(_XLORA if xlora else ())]
    return [kind.code for kind in chosen]
