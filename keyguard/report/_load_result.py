"""What a guarded load did: ``keyguard.load_state_dict`` and ``keyguard.integrations.peft.load_adapter`` return it.

A load that returns has happened: every tensor was loaded and compared with its source afterwards. A load that cannot
be done raises ``KeyMismatchError`` instead, so a ``LoadResult`` never describes a failure; its ``report`` is the
diagnosis of the source *as given*, before the plan, which is why that report may list errors the plan fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from keyguard._record import Record
from keyguard.fixes._plan import Plan
from keyguard.report._model import Finding, Report

LOAD_RESULT_FORMAT = "keyguard.load/v1"


@dataclass(frozen=True, kw_only=True)
class LoadResult(Record):
    """A load that happened: what was loaded where, with which plan, and how much of it was verified.

    ``str(result)`` says it in a few lines; ``result.report`` is the diagnosis of the source before the plan (what
    ``load_state_dict`` returned before this type existed).
    """

    format: Literal["keyguard.load/v1"] = "keyguard.load/v1"
    source: str | None = field(
        metadata={"description": "the checkpoint or adapter folder (None for an in-memory state dict)"}
    )
    target: str = field(
        metadata={"description": "what it was loaded into: the module's class, or the adapter and its model"}
    )
    loaded: int = field(metadata={"description": "tensors loaded"})
    verified: int = field(metadata={"description": "tensors compared with their source after loading, and equal"})
    plan: Plan = field(
        metadata={"description": "the plan applied to the source's keys (empty: loaded as the keys stand)"}
    )
    report: Report = field(metadata={"description": "the diagnosis of the source as given, before the plan"})
    left_out: list[str] = field(
        default_factory=list,
        metadata={"description": "source keys not loaded: ignored, dropped as unexpected, or by the plan"},
    )
    kept: list[str] = field(
        default_factory=list,
        metadata={"description": "expected keys ignored and absent from the source: they keep their value"},
    )
    assigned: bool = field(
        default=False, metadata={"description": "tensors were assigned (the target was on the meta device)"}
    )
    on_meta: list[str] = field(
        default_factory=list,
        metadata={"description": "non-persistent buffers in no checkpoint that stay on the meta device"},
    )
    notes: list[Finding] = field(
        default_factory=list,
        metadata={
            "description": "what the load did beyond the source's own tensors (KG620: a base weight the file carried"
            " replaced the model's)"
        },
    )

    @property
    def ok(self) -> bool:
        """Always true: a load that could not be done raised ``KeyMismatchError`` instead of returning."""
        return True

    @property
    def findings(self) -> list[Finding]:
        """The findings of ``report`` (the source before the plan)."""
        return self.report.findings

    def render(self, format: str = "table") -> str:
        """``table`` (a few lines for people) or ``json``."""
        if format == "json":
            return self.model_dump_json(indent=2)
        if format != "table":
            raise ValueError(f"unknown format {format!r} for a load result (choose from table, json)")
        return "\n".join(self._lines())

    def _lines(self) -> list[str]:
        source = f" from {self.source}" if self.source else ""
        how = "assigned" if self.assigned else "loaded"
        if self.verified == self.loaded:
            what = f"{how.capitalize()} and verified {self.loaded:,} tensor{_s(self.loaded)}"
        else:
            what = f"{how.capitalize()} {self.loaded:,} tensor{_s(self.loaded)}, {self.verified:,} verified"
        lines = [f"{what} into {self.target}{source}."]
        rules = self.plan.rules
        if rules:
            listed = "; ".join(rule.describe() for rule in rules[:3])
            if len(rules) > 3:
                listed += f"; +{len(rules) - 3} more"
            lines.append(f"Plan applied ({len(rules)} rule{_s(len(rules))}): {listed}.")
        else:
            lines.append("Plan applied: none (the keys loaded as they stand).")
        errors = self.report.errors()
        if errors:
            codes = ", ".join(dict.fromkeys(f"{f.code} {f.kind}" for f in errors))
            lines.append(
                f"As given, the source had {len(errors)} error finding{_s(len(errors))} ({codes}), which the plan"
                " resolved; `.report` holds that diagnosis."
            )
        if self.left_out:
            lines.append(f"Left out: {_some(self.left_out)}.")
        if self.kept:
            lines.append(f"Kept at their current value (ignored, not in the source): {_some(self.kept)}.")
        if self.on_meta:
            lines.append(f"Still on the meta device (in no checkpoint; initialise before use): {_some(self.on_meta)}.")
        lines.extend(f"{note.code} {note.kind}: {note.message}." for note in self.notes)
        return lines

    def __str__(self) -> str:
        return self.render("table")

    def __repr__(self) -> str:
        return (
            f"LoadResult(target={self.target!r}, source={self.source!r}, loaded={self.loaded},"
            f" verified={self.verified}, plan={len(self.plan.rules)} rule(s))"
        )


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys):,} key{_s(len(keys))} ({shown}{', ...' if len(keys) > limit else ''})"
