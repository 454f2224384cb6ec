"""Renderers over the one report model: ``table`` (default), ``json``, ``markdown``, ``github``, ``junit``."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from keyguard.report._build import more_patterns, more_patterns_line
from keyguard.report._kinds import Severity
from keyguard.report._model import Example, Finding, Report
from keyguard.report._next import NextStep
from keyguard.report._verdict import CHECKS

if TYPE_CHECKING:  # pragma: no cover - imported where JUnit is rendered: the table path never needs it
    import xml.etree.ElementTree as ET

WIDTH = 100  # pipes, files and renderers called without a width (keyguard._console.STABLE_WIDTH)
_LABEL = {Severity.fatal: "FATAL", Severity.error: "error", Severity.warning: "warning", Severity.info: "info"}


def render(report: Report, format: str = "table", *, fail_on: Severity | str | None = None, **options: Any) -> str:
    """Render ``report`` in ``format``, judged at ``fail_on`` when given (default: the report's own ``fail_on``)."""
    renderer = RENDERERS.get(format)
    if renderer is None:
        raise ValueError(f"unknown report format {format!r} (choose from {', '.join(RENDERERS)})")
    return renderer(_judged(report, fail_on), **options)


def _judged(report: Report, fail_on: Severity | str | None) -> Report:
    return report if fail_on is None else report.failing_on(fail_on)


def _headline(report: Report) -> str:
    if not CHECKS[report.check].counts:
        return "nothing was compared: the load was refused before reading any tensor"
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
    return report.verdict.message


def _fix_text(finding: Finding) -> str | None:
    if finding.fix is None:
        return None
    level = finding.fix.applicability
    rules = "; ".join(
        rule.describe() + (f" [{rule.applicability.value}]" if rule.applicability.rank < level.rank else "")
        for rule in finding.fix.rules[:3]
    )
    if len(finding.fix.rules) > 3:
        rules += f"; +{len(finding.fix.rules) - 3} more"
    note = f" ({finding.fix.note})" if finding.fix.note else ""
    return f"fix [{finding.fix.applicability.value}]: {rules}{note}"


def _fix_cell(finding: Finding) -> str:
    """The summary tables' fix column: the fix's applicability, ``harmless?`` for a benign finding, else ``-``."""
    return finding.fix.applicability.value if finding.fix else ("harmless?" if finding.benign else "-")


def _example_text(ex: Example, arrow: str = "->") -> str | None:
    """``A -> B``, or the one key when both sides name the same (a shape or dtype mismatch)."""
    if ex.checkpoint and ex.expected and ex.checkpoint != ex.expected:
        return f"{ex.checkpoint} {arrow} {ex.expected}"
    return ex.checkpoint or ex.expected


def render_table(
    report: Report,
    *,
    width: int | None = None,
    color: bool = False,
    max_findings: int | None = 30,
    next_steps: Sequence[NextStep] = (),
) -> str:
    """A screen for people: headline, one table row per finding, each finding's details, the verdict, and the
    ``next_steps`` commands when given.

    ``width``: columns to fit (default: ``COLUMNS``, else the terminal's, else 100 for pipes and files); lines
    break between words only, never inside a key or a flag. ``color``: ANSI colours for severities, codes and the
    verdict.
    """
    from keyguard._console import clip, paint, plain, terminal_width, wrap

    width = terminal_width() if width is None else width
    lines = [
        *wrap(f"checkpoint: {report.checkpoint.location} ({report.checkpoint.format})", width, hang=12),
        *wrap(f"expected:   {report.expected.location} ({report.expected.format})", width, hang=12),
        *wrap(_headline(report), width, hang=2),
        "",
    ]
    shown = report.findings if max_findings is None else report.findings[:max_findings]
    if shown:
        rows = [
            [
                paint(_LABEL[f.severity], f.severity.value, color),
                paint(f.code, "code", color),
                f.kind,
                f"{f.count:,}",
                _fix_cell(f),
            ]
            for f in shown
        ]
        headers = ["severity", "code", "kind", "keys", "fix"]
        lines.extend(fit_table(rows, headers, width, align=["left", "left", "left", "right", "left"]))
        lines.append("")
    for f in shown:
        lines.extend(_headed(f"{f.code} {f.kind}:", plain(f.message), width, paint(f.code, f.severity.value, color)))
        listed = set(f.patterns[:4])
        for pattern in f.patterns[:4]:
            lines.append("    " + clip(pattern, width - 4))
        more = more_patterns(f.patterns, 4)
        if more:
            lines.append("    " + more_patterns_line(more))
        for ex in f.examples[:2]:
            text = _example_text(ex)
            if text is None or (text in listed and not ex.detail):
                continue  # says nothing the patterns did not
            lines.extend(wrap(f"e.g. {text}" + (f"  ({ex.detail})" if ex.detail else ""), width, indent=4, hang=5))
        fix = _fix_text(f)
        if fix:
            lines.extend(wrap(fix, width, indent=4, hang=2, color=color))
        if f.benign:
            lines.extend(wrap(f"usually harmless: {f.benign}", width, indent=4, hang=2, color=color))
        if f.hint:
            lines.extend(wrap(f.hint, width, indent=4, hang=2, color=color))
        lines.append("")
    if max_findings is not None and len(report.findings) > max_findings:
        lines.extend(wrap(f"... {len(report.findings) - max_findings} more findings (--format json lists all)", width))
        lines.append("")
    if not report.plan.empty:
        lines.append(f"Safe plan ({len(report.plan.rules)} rule{'s' if len(report.plan.rules) != 1 else ''}):")
        for rule in report.plan.rules:
            lines.extend(wrap(f"- {rule.describe()}", width, indent=2, hang=2))
    tone = "ok" if report.verdict.passed else "fail"
    lines.extend(paint(line, tone, color) for line in wrap(_verdict(report), width))
    if next_steps:
        from keyguard.report._next import render_steps

        lines.append("")
        lines.extend(render_steps(next_steps, width, color=color))
    return "\n".join(lines)


def _headed(label: str, text: str, width: int, styled_code: str) -> list[str]:
    """``label text`` wrapped to ``width``; the label's leading code shown as ``styled_code`` (colour)."""
    from keyguard._console import wrap

    lines = wrap(f"{label} {text}", width, hang=2)
    code = label.split(" ", 1)[0]
    lines[0] = styled_code + lines[0][len(code) :]
    return lines


def fit_table(
    rows: Sequence[Sequence[str]],
    headers: Sequence[str],
    width: int,
    *,
    align: Sequence[str] | None = None,
    shrink: int | None = None,
    min_shrunk: int = 24,
) -> list[str]:
    """A ``tabulate`` table that fits ``width``. Column ``shrink`` (a key pattern) is shortened from the middle when
    that helps; when that is not enough, each row is stacked (its first cell, then ``header: value`` lines) rather
    than wrapped."""
    from tabulate import tabulate

    from keyguard._console import clip, visible_len

    cells = [[str(c) for c in row] for row in rows]
    limit = max((visible_len(row[shrink]) for row in cells), default=0) if shrink is not None else 0
    while True:
        shown = [[clip(c, limit) if i == shrink else c for i, c in enumerate(row)] for row in cells]
        table = tabulate(shown, headers=list(headers), tablefmt="simple", colalign=align)
        excess = max((visible_len(line) for line in table.splitlines()), default=0) - width
        if excess <= 0:
            return table.splitlines()
        if shrink is None or limit <= min_shrunk:
            break
        limit = max(min_shrunk, limit - excess)
    out: list[str] = []
    for row in cells:
        out.append(row[0] if visible_len(row[0]) <= width else clip(row[0], width))
        out.extend(f"  {header}: {cell}" for header, cell in zip(headers[1:], row[1:]) if cell)
    return out


def render_json(report: Report, *, indent: int | None = 2) -> str:
    return report.model_dump_json(indent=indent)


def render_markdown(report: Report, **_: Any) -> str:
    """For pull-request comments: a summary table and a collapsible section per finding."""
    status = "✅" if report.verdict.passed else "❌"
    lines = [
        f"### {status} keyguard: {_code(str(report.checkpoint.location))} vs {_code(str(report.expected.location))}",
        "",
        _headline(report),
        "",
    ]
    if report.findings:
        lines += ["| severity | code | kind | keys | fix |", "|---|---|---|---:|---|"]
        for f in report.findings:
            lines.append(f"| {f.severity.value} | `{f.code}` | {f.kind} | {f.count:,} | {_fix_cell(f)} |")
        lines.append("")
        for f in report.findings:
            # a line opening with <details> is raw HTML up to the next blank line: HTML escaping, no Markdown
            lines.append(f"<details><summary><code>{f.code}</code> {_html(f.message)}</summary>")
            lines.append("")
            lines.append(f"- more: `{f.explain}`")  # every block has a body, even a finding without keys (KG404)
            for pattern in f.patterns:
                lines.append(f"- {_code(pattern)}")
            for ex in f.examples:
                arrow = (
                    f"{_code(ex.checkpoint)} → {_code(ex.expected)}"
                    if ex.checkpoint and ex.expected and ex.checkpoint != ex.expected
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
    # several adapters each get a notice: its title names the one it is about
    title = _gh(f"keyguard: {location}" if location else "keyguard", True)
    lines.append(f"::notice title={title}::{_gh(_headline(report) + '. ' + _verdict(report))}")
    return "\n".join(lines)


def _gh(text: str, property: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def render_junit(
    report: Report,
    *,
    checks: Sequence[str] | None = None,
    fail_on: Severity | str | None = None,
    **_: Any,
) -> str:
    """JUnit XML for CI dashboards: one ``<testcase>`` per finding kind checked, failing for findings at or above
    ``fail_on`` (default: the report's own; ``"never"``: none fails).

    ``checks`` lists the codes that were checked, passing ones included (``keyguard.adapter_checks.checked_kinds`` for
    an adapter check); by default the engine's kinds (KG1xx-KG4xx). A kind that has findings always gets its case.
    """
    return _junit_document([_junit_suite(_judged(report, fail_on), checks)])


def _junit_document(suites: list[ET.Element]) -> str:
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="keyguard")
    for key in ("tests", "failures", "errors"):
        root.set(key, str(sum(int(suite.get(key, "0")) for suite in suites)))
    root.extend(suites)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _junit_suite(report: Report, checks: Sequence[str] | None) -> ET.Element:
    import xml.etree.ElementTree as ET

    from keyguard.report._kinds import KINDS

    level = None if report.fail_on == "never" else Severity(report.fail_on)
    location = str(report.checkpoint.location)
    codes = list(checks) if checks is not None else [code for code in KINDS if code < "KG5"]
    codes += [f.code for f in report.findings if f.code not in codes]
    suite = ET.Element("testsuite", name=f"keyguard: {location}", errors="0", skipped="0")
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("checkpoint", location),
        ("expected", str(report.expected.location)),
        ("headline", _headline(report)),
        ("check", report.check),
        ("verdict", _verdict(report)),
    ):
        ET.SubElement(properties, "property", name=name, value=value)
    failures = 0
    for code in codes:
        kind = KINDS[code]
        case = ET.SubElement(suite, "testcase", classname=location, name=f"{code} {kind.kind}: {kind.title}")
        found = [f for f in report.findings if f.code == code]
        failing = [f for f in found if level is not None and f.severity.at_least(level)]
        for f in failing:
            failure = ET.SubElement(case, "failure", type=f"{f.code} {f.kind}", message=f.message)
            failure.text = _junit_details(f)
        failures += bool(failing)
        passing = [f for f in found if f not in failing]
        if passing:
            out = ET.SubElement(case, "system-out")
            out.text = "\n\n".join(f"{_LABEL[f.severity]}: {f.message}\n{_junit_details(f)}" for f in passing)
    suite.set("tests", str(len(codes)))
    suite.set("failures", str(failures))
    return suite


def _junit_details(finding: Finding) -> str:
    lines = [f"{finding.severity.value} {finding.code} {finding.kind}: {finding.message}", *finding.patterns]
    for ex in finding.examples:
        lines.append(f"e.g. {_example_text(ex)}" + (f" ({ex.detail})" if ex.detail else ""))
    for extra in (_fix_text(finding), finding.benign and f"usually harmless: {finding.benign}", finding.hint):
        if extra:
            lines.append(extra)
    lines.append(f"more: {finding.explain}" + (f" ({finding.url})" if finding.url else ""))
    return "\n".join(lines)


def _many_with_steps(reports: Sequence[Report], errors: Mapping[str, str], steps_for: Any, **options: Any) -> str:
    """``render_many`` for tables, each report followed by its next steps (``check-adapter``: the fix command)."""
    parts = [render(r, "table", next_steps=steps_for(r), **options) for r in reports]
    if len(reports) == 1 and not errors:
        return parts[0]
    return f"\n\n{'=' * 40}\n\n".join([*parts, _many_summary(reports, errors)])


def render_many(
    reports: Sequence[Report],
    format: str = "table",
    *,
    errors: Mapping[str, str] | None = None,
    **options: Any,
) -> str:
    """Several reports in one output, with one summary at the end (``keyguard check-adapter`` on many folders).

    ``errors`` maps inputs that could not be checked to why; they count in the summary (and are JUnit errors).
    One report and no error renders exactly as ``render`` does, except ``junit`` (always one document) and ``json``
    (a list whenever more than one input was given).
    """
    errors = dict(errors or {})
    checks = options.pop("checks", None)
    fail_on = options.pop("fail_on", None)
    reports = [_judged(r, fail_on) for r in reports]
    steps_for = options.pop("next_steps_for", None)  # table only: the commands to run after each report
    if steps_for is not None and format == "table":
        return _many_with_steps(reports, errors, steps_for, **options)
    if format == "junit":
        import xml.etree.ElementTree as ET

        suites = [_junit_suite(r, checks) for r in reports]
        for location, message in errors.items():
            suite = ET.Element("testsuite", name=f"keyguard: {location}", tests="1", failures="0", errors="1")
            case = ET.SubElement(suite, "testcase", classname=location, name="read the input")
            ET.SubElement(case, "error", type="unreadable", message=message).text = message
            suites.append(suite)
        return _junit_document(suites)
    if format not in RENDERERS:
        raise ValueError(f"unknown report format {format!r} (choose from {', '.join(RENDERERS)} or junit)")
    if format == "json":
        if len(reports) == 1 and not errors:
            return render_json(reports[0], **options)
        return "[\n" + ",\n".join(render_json(r, **options) for r in reports) + "\n]"
    if len(reports) == 1 and not errors:
        return render(reports[0], format, **options)
    if format == "github":
        body = [render_github(r) for r in reports]
        body += [
            f"::error title={_gh('keyguard: ' + where, True)}::{_gh(message)}" for where, message in errors.items()
        ]
        body.append(f"::notice title=keyguard summary::{_gh(_many_summary(reports, errors))}")
        return "\n".join(body)
    rule = "=" * 40 if format == "table" else "---"
    parts = [render(r, format, **options) for r in reports]
    summary = _many_summary(reports, errors)
    if format == "markdown":
        rows = ["| input | result | errors | warnings |", "|---|---|---:|---:|"]
        for r in reports:
            errs = len(r.errors())
            warns = len(r.at_least(Severity.warning)) - errs
            rows.append(
                f"| {_code(str(r.checkpoint.location))} | {'✅' if r.verdict.passed else '❌'} | {errs} | {warns} |"
            )
        rows += [f"| {_code(location)} | unreadable | - | - |" for location in errors]
        summary = "\n".join([f"**{_md(summary)}**", "", *rows])
    return f"\n\n{rule}\n\n".join([*parts, summary])


def _many_summary(reports: Sequence[Report], errors: Mapping[str, str]) -> str:
    what = "adapters" if all(r.checkpoint.format == "peft-adapter" for r in reports) else "inputs"
    passed = [r for r in reports if r.verdict.passed]
    warned = [r for r in passed if r.at_least(Severity.warning)]
    parts = [f"{len(passed)} OK"]
    if warned:
        parts[0] += f" ({len(warned)} with warnings)"
    parts.append(f"{len(reports) - len(passed)} failing")
    levels = sorted({r.fail_on for r in reports} - {"error"})
    if levels:
        parts[-1] += f" (--fail-on {', '.join(levels)})"
    if errors:
        parts.append(f"{len(errors)} unreadable")
    return f"{len(reports) + len(errors)} {what} checked: " + ", ".join(parts)


RENDERERS: dict[str, Callable[..., str]] = {
    "table": render_table,
    "json": render_json,
    "markdown": render_markdown,
    "github": render_github,
    "junit": render_junit,  # a CI format with options of its own (``checks``, ``fail_on``)
}
