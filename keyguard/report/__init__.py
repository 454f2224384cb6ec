"""Reports: findings as data (one pydantic model) and the renderers over it."""

from keyguard.report._kinds import KINDS, FindingKind, Severity, lookup
from keyguard.report._load_result import LOAD_RESULT_FORMAT, LoadResult
from keyguard.report._model import REPORT_FORMAT, Example, Finding, Fix, Report, SourceRef, Summary
from keyguard.report._render import RENDERERS, render

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
