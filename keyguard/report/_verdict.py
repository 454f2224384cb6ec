"""What a report checked, and its closing verdict, rendered from data.

Every report names the check it is the result of (``Report.check``): a diagnosis for ``load_state_dict``, an
exported adapter's files, an adapter's keys against a live PEFT model, the tensors of a loaded adapter, an X-LoRA
preflight or verification, or a refusal before anything was compared. The verdict says what that check found, in
its own terms, and whether the report fails at the severity it is judged at (``Report.fail_on``, the CLI's
``--fail-on``): the verdict line and the exit code always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from keyguard._record import Record
from keyguard.report._kinds import Severity

if TYPE_CHECKING:  # pragma: no cover
    from keyguard.report._model import Finding, Report

Check = Literal[
    "state-dict",
    "adapter-files",
    "adapter-keys",
    "adapter-verify",
    "xlora-preflight",
    "xlora-verify",
    "refusal",
]
"""What a report is the result of (see ``CHECKS``)."""

FailOn = Literal["fatal", "error", "warning", "info", "never"]
"""The severity at which a report fails (``never``: it never does); the command line offers error, warning, never."""


@dataclass(frozen=True)
class CheckText:
    """How a check speaks: what it asks, its answer when nothing is wrong, and its answer for each kind of
    error finding (``load``: the keys or shapes; ``values``: NaN / Inf; ``xlora``: stock X-LoRA)."""

    question: str
    passes: str
    fails: str
    values: str = "tensors hold NaN or infinite values"
    xlora: str = "stock X-LoRA would not load it as an expert"
    counts: bool = True  # the summary's key counts mean something (not for a refusal)


CHECKS: Final[dict[Check, CheckText]] = {
    "state-dict": CheckText(
        "Would `load_state_dict(strict=True)` succeed with the checkpoint's keys as they stand?",
        "load_state_dict(strict=True) would succeed",
        "load_state_dict(strict=True) would fail as the keys stand",
    ),
    "adapter-files": CheckText(
        "Would a stock PEFT load take every tensor of the exported adapter? From the files alone.",
        "a stock PEFT load would take every tensor of the adapter",
        "a stock PEFT load would fail, or skip or mis-shape tensors of the adapter",
    ),
    "adapter-keys": CheckText(
        "Do the adapter file's keys fit the keys the PEFT model accepts for the adapter, as they stand?",
        "PEFT's set_peft_model_state_dict would take every tensor of the adapter",
        "the adapter's keys do not fit what the model accepts for it",
    ),
    "adapter-verify": CheckText(
        "Does every tensor the model holds for the adapter equal the file's?",
        "every tensor of the adapter equals the file",
        "the model does not hold the adapter as its file has it",
    ),
    "xlora-preflight": CheckText(
        "Would each X-LoRA expert load, with stock PEFT and through keyguard's guard? From the files' headers.",
        "every expert loads, with stock PEFT and through keyguard",
        "stock PEFT would not load every expert as it stands",
    ),
    "xlora-verify": CheckText(
        "Does the built X-LoRA model hold every expert, by name, as its file has it?",
        "every expert of the X-LoRA model equals its file",
        "the X-LoRA model does not hold every expert as its file has it",
    ),
    "refusal": CheckText(
        "Could the load start at all?",
        "nothing was refused",
        "refused before any tensor was compared; nothing was loaded",
        counts=False,
    ),
}

_VALUE_CODES: Final = frozenset({"KG601"})
_XLORA_STOCK_CODES: Final = frozenset({"KG550", "KG551", "KG552", "KG553", "KG554", "KG555"})
_KEYGUARD_LOADS: Final = "KG556"


@dataclass(frozen=True, kw_only=True)
class Verdict(Record):
    """The closing verdict of a report, at the severity it is judged at (``Report.fail_on``)."""

    passed: bool = field(metadata={"description": "no finding at or above fail_on remains: the command line exits 0"})
    exit_code: int = field(
        metadata={"description": "0 when passed, else 1 (the command line's exit code for this report)"}
    )
    errors: int = field(metadata={"description": "findings at or above error"})
    warnings: int = field(metadata={"description": "findings at warning"})
    message: str = field(metadata={"description": "the closing line, in the terms of the report's check"})


def verdict_of(report: Report) -> Verdict:
    """The verdict of ``report`` at ``report.fail_on``."""
    errors = report.errors()
    warnings = len(report.at_least(Severity.warning)) - len(errors)
    failing = report.fail_on != "never" and bool(report.at_least(Severity(report.fail_on)))
    text = CHECKS[report.check]
    if not errors:
        answer = text.passes
        if failing:
            found = len(report.at_least(Severity(report.fail_on)))
            below = _count(found, "warning" if report.fail_on == "warning" else "finding")
            message = f"FAILED (--fail-on {report.fail_on}): {below}, no error; {answer}."
        else:
            tail = f" ({_count(warnings, 'warning')})" if warnings else ""
            message = f"OK: {answer}{tail}."
    else:
        head = f"{_count(len(errors), 'error finding')}, {_count(warnings, 'warning')}"
        tail = "" if failing else f" (not failing: --fail-on {report.fail_on})"
        message = f"{head}: {_fails(report, text, errors)}{tail}."
    return Verdict(
        passed=not failing,
        exit_code=int(failing),
        errors=len(errors),
        warnings=warnings,
        message=message,
    )


def _fails(report: Report, text: CheckText, errors: Sequence[Finding]) -> str:
    codes = {f.code for f in errors}
    if report.check == "refusal":
        return text.fails
    parts = []
    if codes - _VALUE_CODES - _XLORA_STOCK_CODES or report.check == "xlora-preflight":
        parts.append(text.fails)
    if report.check != "xlora-preflight" and codes & _XLORA_STOCK_CODES:
        parts.append(text.xlora)
    if codes & _VALUE_CODES:
        parts.append(text.values)
    answer = "; ".join(parts)
    if report.check == "xlora-preflight":
        loads = [str(f.ctx.get("adapter")) for f in report.findings if f.code == _KEYGUARD_LOADS]
        if loads:
            answer += f"; keyguard's guard loads {', '.join(repr(n) for n in loads)}"
    return answer


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
