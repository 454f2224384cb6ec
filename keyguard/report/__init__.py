"""Reports: findings as data (one set of records, validated and written by pydantic) and the renderers over it."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyguard.report._kinds import KINDS, FindingKind, Severity, lookup
    from keyguard.report._load_result import LOAD_RESULT_FORMAT, LoadResult
    from keyguard.report._model import REPORT_FORMAT, Example, Finding, Fix, Report, SourceRef, Summary
    from keyguard.report._render import RENDERERS, render
else:
    from keyguard._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "KINDS": "keyguard.report._kinds",
            "FindingKind": "keyguard.report._kinds",
            "Severity": "keyguard.report._kinds",
            "lookup": "keyguard.report._kinds",
            "LOAD_RESULT_FORMAT": "keyguard.report._load_result",
            "LoadResult": "keyguard.report._load_result",
            "REPORT_FORMAT": "keyguard.report._model",
            "Example": "keyguard.report._model",
            "Finding": "keyguard.report._model",
            "Fix": "keyguard.report._model",
            "Report": "keyguard.report._model",
            "SourceRef": "keyguard.report._model",
            "Summary": "keyguard.report._model",
            "RENDERERS": "keyguard.report._render",
            "render": "keyguard.report._render",
        },
    )

__all__ = [
    "KINDS",
    "LOAD_RESULT_FORMAT",
    "RENDERERS",
    "REPORT_FORMAT",
    "Example",
    "Finding",
    "FindingKind",
    "Fix",
    "LoadResult",
    "Report",
    "Severity",
    "SourceRef",
    "Summary",
    "lookup",
    "render",
]
