"""Renderers over the one report model: ``table`` (default), ``json``, ``markdown``, ``github``."""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Callable
from typing import Any

from keyguard.report._kinds import Severity
from keyguard.report._model import Finding, Report

WIDTH = 100
_LABEL = {Severity.fatal: "FATAL", Severity.error: "error", Severity.warning: "warning", Severity.info: "info"}


def render(report: Report, format: str = "table", **options: Any) -> str:
    """Render ``report`` in ``format``."""
    renderer = RENDERERS.get(format)
    if renderer is None:
        raise ValueError(f"unknown report format {format!r} (choose from {', '.join(RENDERERS)})")
    return renderer(report, **options)


def _headline(report: Report) -> str:
    s = report.summary
    before, after = f"{s.coverage_before:.0%}", f"{s.coverage_after:.0%}"
    line = f"{s.checkpoint:,} checkpoint keys, {s.expected:,} expected: {s.matched:,} match as they stand"
    if s.fixable:
        line += f", the safe plan maps {s.fixable:,} more (coverage {before} -> {after})"
    else:
        line += f" (coverage {before})"
    if s.ignored:
        line += f"; {s.ignored:,} ignored"
    return line


def _verdict(report: Report) -> str:
    errors = len(report.errors())
    warnings = len(report.at_least(Severity.warning)) - errors
    if report.ok:
        tail = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
        return f"OK: load_state_dict(strict=True) would succeed{tail}."
    return (
        f"{errors} error finding{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}:"
        " load_state_dict(strict=True) would fail as the keys stand."
    )


def _wrap(text: str, indent: int, width: int, hang: int = 0) -> list[str]:
    """``text`` wrapped to ``width`` columns; continuation lines are indented ``hang`` more than the first."""
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + hang),
        break_on_hyphens=False,
    ) or [""]


def _fix_text(finding: Finding) -> str | None:
    if finding.fix is None:
        return None
    rules = "; ".join(rule.describe() for rule in finding.fix.rules[:3])
    if len(finding.fix.rules) > 3:
        rules += f"; +{len(finding.fix.rules) - 3} more"
    note = f" ({finding.fix.note})" if finding.fix.note else ""
    return f"fix [{finding.fix.applicability.value}]: {rules}{note}"


def render_table(report: Report, *, width: int = WIDTH, max_findings: int | None = 30) -> str:
    """A screen for people: headline, one table row per finding, then each finding's details."""
    from tabulate import tabulate

    # every line fits ``width``: long paths and large counts wrap instead of overflowing a terminal or CI log
    lines = [
        *_wrap(f"checkpoint: {report.checkpoint.location} ({report.checkpoint.format})", 0, width, hang=12),
        *_wrap(f"expected:   {report.expected.location} ({report.expected.format})", 0, width, hang=12),
        *_wrap(_headline(report), 0, width, hang=2),
        "",
    ]
    shown = report.findings if max_findings is None else report.findings[:max_findings]
    if shown:
        rows = [
            [
                _LABEL[f.severity],
                f.code,
                f.kind,
                f"{f.count:,}",
                f.fix.applicability.value if f.fix else ("harmless?" if f.benign else "-"),
            ]
            for f in shown
        ]
        lines.append(tabulate(rows, headers=["severity", "code", "kind", "keys", "fix"], tablefmt="simple"))
        lines.append("")
    for f in shown:
        lines.extend(_wrap(f"{f.code} {f.kind}: {f.message}", 0, width))
        for pattern in f.patterns[:4]:
            lines.append("    " + _clip(pattern, width - 4))
        if len(f.patterns) > 4:
            lines.append(f"    ... ({len(f.patterns) - 4} more)")
        for ex in f.examples[:2]:
            if ex.checkpoint and ex.expected:
                text = f"e.g. {ex.checkpoint} -> {ex.expected}"
            else:
                text = f"e.g. {ex.checkpoint or ex.expected}"
            if ex.detail:
                text += f"  ({ex.detail})"
            lines.extend(_wrap(text, 4, width))
        fix = _fix_text(f)
        if fix:
            lines.extend(_wrap(fix, 4, width))
        if f.benign:
            lines.extend(_wrap(f"usually harmless: {f.benign}", 4, width))
        if f.hint:
            lines.extend(_wrap(f.hint, 4, width))
        lines.append("")
    if max_findings is not None and len(report.findings) > max_findings:
        lines.append(f"... {len(report.findings) - max_findings} more findings (--format json lists all)")
        lines.append("")
    if not report.plan.empty:
        lines.append(f"Safe plan ({len(report.plan.rules)} rule{'s' if len(report.plan.rules) != 1 else ''}):")
        for rule in report.plan.rules:
            lines.extend(_wrap(f"- {rule.describe()}", 2, width, hang=2))
    lines.extend(_wrap(_verdict(report), 0, width))
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = (limit - 3) // 3
    return text[:head] + "..." + text[len(text) - (limit - 3 - head) :]


def render_json(report: Report, *, indent: int | None = 2) -> str:
    return report.model_dump_json(indent=indent)


def render_markdown(report: Report, **_: Any) -> str:
    """For pull-request comments: a summary table and a collapsible section per finding."""
    status = "✅" if report.ok else "❌"
    lines = [
        f"### {status} keyguard: {_code(str(report.checkpoint.location))} vs {_code(str(report.expected.location))}",
        "",
        _headline(report),
        "",
    ]
    if report.findings:
        lines += ["| severity | code | kind | keys | fix |", "|---|---|---|---:|---|"]
        for f in report.findings:
            fix = f.fix.applicability.value if f.fix else "-"
            lines.append(f"| {f.severity.value} | `{f.code}` | {f.kind} | {f.count:,} | {fix} |")
        lines.append("")
        for f in report.findings:
            # a line opening with <details> is raw HTML up to the next blank line: HTML escaping, no Markdown
            lines.append(f"<details><summary><code>{f.code}</code> {_html(f.message)}</summary>")
            lines.append("")
            for pattern in f.patterns:
                lines.append(f"- {_code(pattern)}")
            for ex in f.examples:
                arrow = (
                    f"{_code(ex.checkpoint)} → {_code(ex.expected)}"
                    if ex.checkpoint and ex.expected
                    else _code(ex.checkpoint or ex.expected or "")
                )
                lines.append(f"- e.g. {arrow}" + (f" ({_md(ex.detail)})" if ex.detail else ""))
            fix_line = _fix_text(f)
            if fix_line:
                lines.append(f"- {_md(fix_line)}")
            if f.benign:
                lines.append(f"- usually harmless: {_md(f.benign)}")
            if f.hint:
                lines.append(f"- {_md(f.hint)}")
            lines += ["", "</details>", ""]
    if not report.plan.empty:
        lines.append("**Safe plan:** " + "; ".join(_md(r.describe()) for r in report.plan.rules))
        lines.append("")
    lines.append(_verdict(report))
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text for a Markdown line: table pipes escaped, no HTML, one line."""
    text = " ".join(text.splitlines())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _html(text: str) -> str:
    """Text inside a raw HTML line (Markdown is not processed there, so a backslash escape would show)."""
    return html.escape(" ".join(text.splitlines()), quote=False)


def _code(text: str) -> str:
    """``text`` as one inline code span, whatever backticks or line breaks it holds (keys are arbitrary strings)."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text[:1] == text[-1:] == " " and text.strip()) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_github(report: Report, **_: Any) -> str:
    """GitHub Actions workflow commands: one annotation per finding, plus a notice with the summary."""
    level = {Severity.fatal: "error", Severity.error: "error", Severity.warning: "warning", Severity.info: "notice"}
    location = report.checkpoint.location or ""
    lines = []
    for f in report.findings:
        detail = f.message
        if f.patterns:
            detail += " | " + "; ".join(f.patterns[:3])
        fix = _fix_text(f)
        if fix:
            detail += " | " + fix
        if f.benign:
            detail += " | usually harmless: " + f.benign
        lines.append(
            f"::{level[f.severity]} file={_gh(location, True)},title={_gh(f.code + ' ' + f.kind, True)}::{_gh(detail)}"
        )
    lines.append(f"::notice title=keyguard::{_gh(_headline(report) + '. ' + _verdict(report))}")
    return "\n".join(lines)


def _gh(text: str, property: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


RENDERERS: dict[str, Callable[..., str]] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
    "github": render_github,
}
