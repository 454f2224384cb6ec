"""Reports: findings as data (one pydantic model) and the renderers over it."""

from keyguard.report._kinds import KINDS, FindingKind, Severity, lookup
from keyguard.report._model import REPORT_FORMAT, Example, Finding, Fix, Report, SourceRef, Summary
from keyguard.report._render import RENDERERS, render

__all__ = [
    "KINDS",
    "RENDERERS",
    "REPORT_FORMAT",
    "Example",
    "Finding",
    "FindingKind",
    "Fix",
    "Report",
    "Severity",
    "SourceRef",
    "Summary",
    "lookup",
    "render",
]
