"""How reports look in Python: short reprs, and rich display in notebooks (``_repr_html_`` / ``_repr_markdown_``).

A notebook shows the headline, the summary table (one row per finding) and each finding as a collapsible block with
its keys, examples, fix and hints, then the verdict. Everything is escaped: keys are arbitrary strings.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from keyguard.report._kinds import Severity

if TYPE_CHECKING:  # pragma: no cover
    from keyguard.report._model import Finding, Report

_COLORS = {Severity.fatal: "#b00020", Severity.error: "#d32f2f", Severity.warning: "#b26a00", Severity.info: "#0277bd"}


def report_repr(report: Report) -> str:
    """``<Report FAILS: 3 errors, 1 warning; 42 checkpoint keys vs 39 expected, coverage 0% -> 97%>``."""
    s = report.summary
    errors = len(report.errors())
    warnings = len(report.at_least(Severity.warning)) - errors
    coverage = f"{s.coverage_before:.0%}" + (f" -> {s.coverage_after:.0%}" if s.fixable else "")
    status = "OK" if report.verdict.passed else "FAILS"
    return (
        f"<Report {status}: {_count(errors, 'error')}, {_count(warnings, 'warning')};"
        f" {s.checkpoint:,} checkpoint keys vs {s.expected:,} expected, coverage {coverage}>"
    )


def finding_repr(finding: Finding) -> str:
    """``<Finding KG101 extra_prefix (error): 38 keys, fix safe>``."""
    fix = f", fix {finding.fix.applicability.value}" if finding.fix else (", harmless?" if finding.benign else "")
    return f"<Finding {finding.code} {finding.kind} ({finding.severity.value}): {_count(finding.count, 'key')}{fix}>"


def finding_str(finding: Finding) -> str:
    """The finding as the table format shows it: code, kind and message, then its keys, examples, fix and hints."""
    from keyguard._console import STABLE_WIDTH, clip, plain, wrap
    from keyguard.report._render import _example_text, _fix_text

    width = STABLE_WIDTH
    lines = wrap(f"{finding.code} {finding.kind}: {plain(finding.message)}", width, hang=2)
    lines += ["    " + clip(p, width - 4) for p in finding.patterns]
    for ex in finding.examples:
        text = _example_text(ex)
        if text and not (text in finding.patterns and not ex.detail):
            lines += wrap(f"e.g. {text}" + (f"  ({ex.detail})" if ex.detail else ""), width, indent=4, hang=5)
    for extra in (_fix_text(finding), finding.benign and f"usually harmless: {finding.benign}", finding.hint):
        if extra:
            lines += wrap(extra, width, indent=4, hang=2)
    return "\n".join(lines)


def report_html(report: Report) -> str:
    """The report for a notebook: headline, summary table, a ``<details>`` block per finding, the verdict."""
    from keyguard.report._render import _example_text, _fix_cell, _fix_text, _headline, _verdict

    cell = "padding:2px 8px;text-align:left"
    mark = "✅" if report.verdict.passed else "❌"
    parts = [
        "<div class='keyguard-report'>",
        f"<p><b>{mark} keyguard</b>: <code>{escape(str(report.checkpoint.location))}</code>"
        f" ({escape(report.checkpoint.format)}) vs <code>{escape(str(report.expected.location))}</code>"
        f" ({escape(report.expected.format)})<br/>{escape(_headline(report))}</p>",
    ]
    if report.findings:
        head = "".join(f"<th style='{cell}'>{h}</th>" for h in ("severity", "code", "kind", "keys", "fix"))
        rows = []
        for f in report.findings:
            color = _COLORS[f.severity]
            rows.append(
                "<tr>"
                f"<td style='{cell};color:{color};font-weight:bold'>{f.severity.value}</td>"
                f"<td style='{cell}'><code>{f.code}</code></td><td style='{cell}'>{escape(f.kind)}</td>"
                f"<td style='{cell.replace('left', 'right')}'>{f.count:,}</td>"
                f"<td style='{cell}'>{escape(_fix_cell(f))}</td></tr>"
            )
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        for f in report.findings:
            items = [f"<li><code>{escape(p)}</code></li>" for p in f.patterns]
            for ex in f.examples:
                text = _example_text(ex, "→")
                if text and not (text in f.patterns and not ex.detail):
                    detail = f" ({escape(ex.detail)})" if ex.detail else ""
                    items.append(f"<li>e.g. <code>{escape(text)}</code>{detail}</li>")
            for extra in (_fix_text(f), f.benign and f"usually harmless: {f.benign}", f.hint):
                if extra:
                    items.append(f"<li>{escape(extra)}</li>")
            items.append(f"<li>more: <code>{escape(f.explain)}</code></li>")
            parts.append(
                f"<details><summary><code style='color:{_COLORS[f.severity]}'>{f.code}</code> {escape(f.kind)}:"
                f" {escape(f.message)}</summary><ul>{''.join(items)}</ul></details>"
            )
    if not report.plan.empty:
        rules = "".join(f"<li><code>{escape(r.describe())}</code></li>" for r in report.plan.rules)
        parts.append(f"<p><b>Safe plan</b></p><ul>{rules}</ul>")
    parts.append(f"<p><b>{escape(_verdict(report))}</b></p></div>")
    return "\n".join(parts)


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"
