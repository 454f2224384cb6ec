"""The report data model: one set of records (``keyguard._record``), JSON ``"format": "keyguard.report/v1"``, many
renderers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, cast

from keyguard._printable import printable
from keyguard._record import Record
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Applicability, Rule
from keyguard.report._kinds import KINDS, Severity
from keyguard.report._verdict import CHECKS, Check, FailOn, Verdict, verdict_of

REPORT_FORMAT = "keyguard.report/v1"
DOCS_URL: str | None = None
"""Where the docs are published (ending in ``/``), once they are; ``Finding.url`` links there."""


@dataclass(frozen=True, kw_only=True)
class Example(Record):
    """One concrete case of a finding: a checkpoint key, the expected key it maps to, and a detail."""

    checkpoint: str | None = None
    expected: str | None = None
    detail: str | None = None


@dataclass(frozen=True, kw_only=True)
class Fix(Record):
    """How a finding can be fixed: rules and how sure keyguard is."""

    applicability: Applicability
    rules: list[Rule] = field(default_factory=list)
    note: str | None = None

    def __post_init__(self) -> None:
        if type(self.applicability) is not Applicability:  # "safe" given in Python: the member, or a ValueError
            object.__setattr__(self, "applicability", Applicability(self.applicability))


@dataclass(frozen=True, kw_only=True)
class Finding(Record):
    """One explained problem covering a group of keys.

    ``message`` is rendered for people from ``ctx``; machines read ``code``/``kind``/``ctx``. Each checkpoint key
    and each expected key appears in at most one finding.
    """

    code: str
    kind: str
    severity: Severity
    message: str
    count: int = field(metadata={"description": "number of keys the finding covers"})
    patterns: list[str] = field(default_factory=list, metadata={"description": "the keys, numbered blocks collapsed"})
    examples: list[Example] = field(default_factory=list)
    fix: Fix | None = None
    benign: str | None = field(
        default=None, metadata={"description": "why this is usually harmless, and the one-flag remedy"}
    )
    hint: str | None = None
    checkpoint_keys: list[str] = field(default_factory=list)
    expected_keys: list[str] = field(default_factory=list)
    ctx: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.severity) is not Severity:  # "error" given in Python: the member, or a ValueError
            object.__setattr__(self, "severity", Severity(self.severity))

    @property
    def title(self) -> str:
        return KINDS[self.code].title

    def __repr__(self) -> str:
        from keyguard.report._notebook import finding_repr

        return finding_repr(self)

    def __str__(self) -> str:
        from keyguard.report._notebook import finding_str

        return finding_str(self)

    @property
    def explain(self) -> str:
        """The command that prints this kind's page (What it does / Why is this bad? / Fix safety / Example)."""
        return f"keyguard explain {self.code}"

    @property
    def url(self) -> str | None:
        """A link to this kind's page on the published docs, or ``None`` while no site is published (the docs are
        built locally with ``make docs``: ``site/findings/kgNNN.html``); ``explain`` names the page meanwhile."""
        return None if DOCS_URL is None else f"{DOCS_URL}findings/{self.code.lower()}.html"


@dataclass(frozen=True, kw_only=True)
class SourceRef(Record):
    """Which source a side of the comparison came from."""

    location: str | None
    format: str
    tensors: int

    def __post_init__(self) -> None:
        if self.location is not None:  # a file name that is not UTF-8 is shown escaped
            object.__setattr__(self, "location", printable(self.location))


@dataclass(frozen=True, kw_only=True)
class Summary(Record):
    """Counts over the whole comparison. Coverage is the fraction of expected keys matched."""

    expected: int
    checkpoint: int
    matched: int = field(metadata={"description": "expected keys present under the same name with the same shape"})
    fixable: int = field(metadata={"description": "further expected keys the safe plan maps correctly"})
    missing: int
    unexpected: int
    shape_mismatches: int
    ambiguous: int
    ignored: int = 0
    coverage_before: float
    coverage_after: float

    @classmethod
    def of(
        cls,
        *,
        expected: int,
        checkpoint: int,
        matched: int,
        fixable: int,
        missing: int,
        unexpected: int,
        shape_mismatches: int,
        ambiguous: int,
        ignored: int = 0,
        empty: float = 1.0,
    ) -> Summary:
        """A summary with its coverages derived from the counts (``empty`` when nothing is expected)."""
        before = round(matched / expected, 6) if expected else empty
        after = round(min(matched + fixable, expected) / expected, 6) if expected else empty
        return cls(
            expected=expected,
            checkpoint=checkpoint,
            matched=matched,
            fixable=fixable,
            missing=missing,
            unexpected=unexpected,
            shape_mismatches=shape_mismatches,
            ambiguous=ambiguous,
            ignored=ignored,
            coverage_before=before,
            coverage_after=after,
        )


@dataclass(frozen=True, kw_only=True)
class Report(Record):
    """The result of ``keyguard.diagnose``, and of every other check keyguard makes (``check`` says which).

    ``ok`` is True when nothing at or above ``error`` was found: for a diagnosis, ``load_state_dict(strict=True)``
    would succeed as the keys stand. ``plan`` holds the safe rules, in order. ``verdict`` is the closing line at the
    severity the report is judged at (``fail_on``), and agrees with ``exit_code()``.
    """

    format: Literal["keyguard.report/v1"] = "keyguard.report/v1"
    check: Check = field(
        default="state-dict",
        metadata={
            "description": "what was checked: state-dict (a diagnosis for load_state_dict), adapter-files (an exported"
            " adapter, from its files), adapter-keys (an adapter's keys against a live PEFT model), adapter-verify (a"
            " loaded adapter's tensors against its file), xlora-preflight, xlora-verify, or refusal (nothing compared)"
        },
    )
    fail_on: FailOn = field(
        default="error", metadata={"description": "the severity at which the report fails (--fail-on)"}
    )
    ok: bool
    checkpoint: SourceRef
    expected: SourceRef
    summary: Summary
    findings: list[Finding]
    plan: Plan = field(default_factory=Plan)
    unsafe_plan: Plan = field(
        default_factory=Plan, metadata={"description": "safe rules plus those that need --unsafe-fixes"}
    )

    computed: ClassVar[tuple[str, ...]] = ("verdict",)

    @property
    def verdict(self) -> Verdict:
        """The closing verdict at ``fail_on``: passed or not, and the line that says so in the check's terms."""
        return verdict_of(self)

    @property
    def question(self) -> str:
        """What the check behind this report asks."""
        return CHECKS[self.check].question

    def at_least(self, severity: Severity | str) -> list[Finding]:
        """Findings at or above ``severity``."""
        level = Severity(severity)
        return [f for f in self.findings if f.severity.at_least(level)]

    def errors(self) -> list[Finding]:
        """Findings at or above ``error`` (for a diagnosis: those that would stop ``load_state_dict(strict=True)``)."""
        return self.at_least(Severity.error)

    def failing_on(self, fail_on: Severity | str) -> Report:
        """This report judged at another severity: a ``Severity`` (``"error"``, ``"warning"``, ...) or ``"never"``."""
        level = "never" if fail_on == "never" else Severity(fail_on).value
        return self if level == self.fail_on else replace(self, fail_on=cast(FailOn, level))

    def exit_code(self, fail_on: Severity | str | None = None) -> int:
        """0 when nothing at or above ``fail_on`` remains, else 1; ``fail_on`` defaults to the report's own
        (``"error"`` unless set), and ``"never"`` always gives 0."""
        judged = self if fail_on is None else self.failing_on(fail_on)
        return judged.verdict.exit_code

    def render(self, format: str = "table", **options: Any) -> str:
        """Render as ``table`` (default), ``json``, ``markdown``, ``github`` or ``junit``; ``fail_on=`` judges the
        report at that severity first (the verdict line then agrees with ``exit_code(fail_on)``)."""
        from keyguard.report._render import render

        return render(self, format, **options)

    def __str__(self) -> str:
        return self.render("table")

    def __repr__(self) -> str:
        from keyguard.report._notebook import report_repr

        return report_repr(self)

    def _repr_html_(self) -> str:
        """Notebooks: the summary table and one collapsible block per finding."""
        from keyguard.report._notebook import report_html

        return report_html(self)

    def _repr_markdown_(self) -> str:
        """Markdown front ends: the ``markdown`` format (a summary table and collapsible findings)."""
        return self.render("markdown")
