"""keyguard: why a checkpoint does not load into a PyTorch model, and a safe fix when there is one.

Importing keyguard never imports torch; torch is imported only for inputs that need it. The public names are
imported from their modules on first use, so ``import keyguard`` (and ``keyguard --version``) stay instant.
"""

from typing import TYPE_CHECKING

from keyguard._exceptions import (
    AdapterConfigError,
    HeaderError,
    KeyguardError,
    KeyMismatchError,
    MissingDependencyError,
    PatternError,
    PlanError,
    ShardIndexError,
    SourceError,
    UnsafePickleError,
    UnsupportedModelError,
    UnsupportedVersionError,
)
from keyguard._version import __version__

if TYPE_CHECKING:
    from keyguard._summary import SourceSummary, summarize
    from keyguard.adapter_checks import check_adapter
    from keyguard.engine import diagnose
    from keyguard.fixes import Applicability, Plan, load_state_dict, write_fixed
    from keyguard.report import Finding, LoadResult, Report, Severity
    from keyguard.sources import AdapterConfig, KeySet, TensorInfo, read_keys, write_manifest
else:
    from keyguard._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "SourceSummary": "keyguard._summary",
            "summarize": "keyguard._summary",
            "check_adapter": "keyguard.adapter_checks",
            "diagnose": "keyguard.engine",
            "Applicability": "keyguard.fixes",
            "Plan": "keyguard.fixes",
            "load_state_dict": "keyguard.fixes",
            "write_fixed": "keyguard.fixes",
            "Finding": "keyguard.report",
            "LoadResult": "keyguard.report",
            "Report": "keyguard.report",
            "Severity": "keyguard.report",
            "AdapterConfig": "keyguard.sources",
            "KeySet": "keyguard.sources",
            "TensorInfo": "keyguard.sources",
            "read_keys": "keyguard.sources",
            "write_manifest": "keyguard.sources",
        },
    )

__all__ = [
    "AdapterConfig",
    "AdapterConfigError",
    "Applicability",
    "Finding",
    "HeaderError",
    "KeyMismatchError",
    "KeySet",
    "KeyguardError",
    "LoadResult",
    "MissingDependencyError",
    "PatternError",
    "Plan",
    "PlanError",
    "Report",
    "Severity",
    "ShardIndexError",
    "SourceError",
    "SourceSummary",
    "TensorInfo",
    "UnsafePickleError",
    "UnsupportedModelError",
    "UnsupportedVersionError",
    "__version__",
    "check_adapter",
    "diagnose",
    "load_state_dict",
    "read_keys",
    "summarize",
    "write_fixed",
    "write_manifest",
]
