"""keyguard: why a checkpoint does not load into a PyTorch model, and a safe fix when there is one.

Importing keyguard never imports torch; torch is imported only for inputs that need it.
"""

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
from keyguard._summary import SourceSummary, summarize
from keyguard._version import __version__
from keyguard.adapter_checks import check_adapter
from keyguard.engine import diagnose
from keyguard.fixes import Applicability, Plan, load_state_dict, write_fixed
from keyguard.report import Finding, LoadResult, Report, Severity
from keyguard.sources import AdapterConfig, KeySet, TensorInfo, read_keys, write_manifest

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
