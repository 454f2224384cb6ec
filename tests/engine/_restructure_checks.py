"""The invariants keyguard must keep on restructured checkpoints, and coverage figures, checked against a case's
truth (``_restructure_case.Case``).

(a) neither plan puts a checkpoint key under a wrong expected key;
(b) every key is in at most one finding, and none is lost (exact matches, same name and shape, only in findings
    about exact pairs);
(c) a rule finding's examples are what the unsafe plan does;
(d) candidates offered for a key (``ctx["candidates"]``) always have its shape;
(e) no exact match is kept silently when the truth says it is another tensor and the report has the evidence in
    hand (the key that really holds that name is in the checkpoint, in the same numbered group or offered it);
(f) a plan lands a key on an expected key only as far as the finding that holds it allows: the safe plan none of
    the keys of ambiguous, contested and unsafe or display-only rule findings, the unsafe plan none of display-only
    ones (a wrapper prefix stripped from them on the way is fine).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from _restructure_case import Case

import keyguard
from keyguard.report import Report

#: Finding kinds whose fix renames keys by a rule inferred from the keys.
RULE_KINDS = frozenset(
    {"extra_prefix", "missing_prefix", "replaced_prefix", "renamed", "index_shift", "restructured", "renumbered"}
)
#: Finding kinds that may name keys that match as they stand.
EXACT_KINDS = frozenset({"shape_mismatch", "transposed", "dtype_mismatch", "contested_match"})


@dataclass(frozen=True)
class Violation:
    """One broken invariant: ``check`` (a..e), the keys, and what in the report did it (``by``)."""

    check: str
    message: str
    by: str = ""  # the finding kind / applicability / evidence behind it, for grouping counterexamples

    @property
    def signature(self) -> tuple[str, str]:
        return self.check, self.by


def diagnose(case: Case) -> Report:
    checkpoint, expected = case.sources()
    return keyguard.diagnose(checkpoint, expected)


def _finding_of(report: Report, key: str) -> Any:
    return next((f for f in report.findings if key in f.checkpoint_keys), None)


def _by(finding: Any) -> str:
    if finding is None:
        return "no finding"
    level = finding.fix.applicability.value if finding.fix is not None else "-"
    evidence: list[str] = []
    for change in finding.ctx.get("changes") or []:
        for item in change.get("evidence", []):
            if item["kind"] not in evidence:
                evidence.append(item["kind"])
    rules = sorted({type(r).__name__ for r in finding.fix.rules}) if finding.fix is not None else []
    return f"{finding.kind}/{level}/{'+'.join(rules)}/{'+'.join(sorted(evidence))}"


def numbers_out(key: str) -> str:
    """The key with its numbers collapsed: keys of one numbered group agree."""
    return re.sub(r"[0-9]+", "#", key)


def violations(case: Case, report: Report) -> list[Violation]:
    """Every invariant ``report`` breaks on ``case`` (empty when it keeps them all)."""
    out: list[Violation] = []
    ck, ex = case.checkpoint, case.expected
    # a name both sides have is an exact match only with equal shapes: a key whose name is taken by a tensor of
    # another shape may be moved (or reported as a shape mismatch)
    exact = {k for k in ck.keys() & ex.keys() if ck[k].shape == ex[k].shape}
    # (a) no key goes under a wrong expected key, by either plan
    wrong_safe: set[str] = set()  # a key the safe plan maps wrong is not reported again for the unsafe plan
    for label, plan in (("safe", report.plan), ("unsafe", report.unsafe_plan)):
        try:
            final = plan.mapping(ck)
        except keyguard.PlanError as exc:
            out.append(Violation("a", f"the {label} plan collides: {exc}", "plan error"))
            continue
        for original, new in final.items():
            if new != original and new in ex and case.truth.get(original) != new and original not in wrong_safe:
                wrong_safe.add(original)
                out.append(
                    Violation(
                        "a",
                        f"{label} plan maps {original!r} onto {new!r}, but it is {case.truth.get(original)!r}",
                        f"{label}:{_by(_finding_of(report, original))}",
                    )
                )
    # (b) every key in at most one finding, none lost
    seen_c: list[str] = []
    seen_e: list[str] = []
    for finding in report.findings:
        seen_c.extend(finding.checkpoint_keys)
        seen_e.extend(finding.expected_keys)
    twice_c = sorted({k for k in seen_c if seen_c.count(k) > 1})
    twice_e = sorted({k for k in seen_e if seen_e.count(k) > 1})
    if twice_c:
        out.append(Violation("b", f"checkpoint keys in two findings: {twice_c}", "twice:checkpoint"))
    if twice_e:
        out.append(Violation("b", f"expected keys in two findings: {twice_e}", "twice:expected"))
    lost_c = sorted(set(ck) - set(seen_c) - exact)
    lost_e = sorted(set(ex) - set(seen_e) - exact)
    if lost_c:
        out.append(Violation("b", f"checkpoint keys missing from the report: {lost_c}", "lost:checkpoint"))
    if lost_e:
        out.append(Violation("b", f"expected keys missing from the report: {lost_e}", "lost:expected"))
    for finding in report.findings:
        if finding.kind not in EXACT_KINDS and set(finding.checkpoint_keys) & exact:
            out.append(Violation("b", f"a {finding.kind} finding names exact matches", f"exact in {finding.kind}"))
    # (c) a rule finding's examples are what the unsafe plan does
    for finding in report.findings:
        if finding.kind in RULE_KINDS and finding.fix is not None and finding.fix.applicability.value != "display_only":
            for example in finding.examples:
                if example.checkpoint is None:
                    continue
                got = report.unsafe_plan.rename_key(example.checkpoint)
                if got != example.expected:
                    out.append(
                        Violation(
                            "c",
                            f"{finding.kind} example {example.checkpoint!r} -> {example.expected!r}, plan: {got!r}",
                            _by(finding),
                        )
                    )
    # (f) the plans respect the applicability of the finding that holds a key
    allowed = {"safe": {"safe"}, "unsafe": {"safe", "unsafe"}}
    for label, plan in (("safe", report.plan), ("unsafe", report.unsafe_plan)):
        for finding in report.findings:
            if finding.kind in RULE_KINDS and finding.fix is not None:
                level = finding.fix.applicability.value
            elif finding.kind in ("ambiguous", "contested_match"):
                level = "display_only"
            else:
                continue
            if level in allowed[label]:
                continue
            # landing on a model key counts; a prefix step that lands nothing is fine
            moved = [k for k in finding.checkpoint_keys if (new := plan.rename_key(k)) != k and new in ex]
            if moved:
                out.append(
                    Violation(
                        "f",
                        f"the {label} plan lands {moved[:2]} of a {level} {finding.kind} finding",
                        f"{label}:{finding.kind}/{level}",
                    )
                )
    # (d) candidates always have the checkpoint key's shape
    for finding in report.findings:
        for key, targets in (finding.ctx.get("candidates") or {}).items():
            info = ck.get(key)
            for target in targets:
                other = ex.get(target)
                if info is None or other is None or info.shape != other.shape:
                    out.append(
                        Violation(
                            "d",
                            f"{finding.kind} offers {target!r} {other and other.shape}"
                            f" for {key!r} {info and info.shape}",
                            finding.kind,
                        )
                    )
    # (e) no exact match kept silently against evidence the report has in hand: a key that is another expected key
    # (a shifted block) while the key that really holds its name sits in the same numbered group or is offered that
    # name; a stale copy (the model's name beside the renamed real key) while the report offers the real key that
    # name
    mentioned = set(seen_c)
    offers = offered(case, report)
    owners = {t: k for k, t in case.truth.items() if t is not None and t != k}
    for key in sorted(exact - mentioned):
        owner, truth = owners.get(key), case.truth.get(key)
        if owner is None or truth is None:
            continue
        linked = key in offers.get(owner, ())
        if truth == key and not linked:
            continue  # a stale copy the report does not link to the real key: it loads that tensor
        if truth != key and not linked and numbers_out(owner) != numbers_out(key):
            continue
        try:
            kept = report.unsafe_plan.mapping(ck).get(key) == key
        except keyguard.PlanError:
            kept = True
        if kept:
            what = "a stale copy" if truth == key else f"it is {truth!r}"
            out.append(Violation("e", f"{key!r} kept as it stands ({what}), but {owner!r} is {key!r}", "kept silently"))
    return out


def check(case: Case) -> None:
    """Assert every invariant on ``case``; the message names the steps that made it."""
    found = violations(case, diagnose(case))
    assert not found, "\n".join([*(f"({v.check}) {v.message}" for v in found), f"steps: {case.steps}"])


# -- coverage ----------------------------------------------------------------------------------------------------


@dataclass
class Coverage:
    need: int = 0
    safe: int = 0
    unsafe: int = 0
    explained: int = 0
    wrong: int = 0

    def add(self, other: Coverage) -> None:
        self.need += other.need
        self.safe += other.safe
        self.unsafe += other.unsafe
        self.explained += other.explained
        self.wrong += other.wrong


def offered(case: Case, report: Report) -> dict[str, set[str]]:
    """Checkpoint key -> every expected key the report offers it: by either plan, among a finding's candidates,
    in a finding's examples."""
    out: dict[str, set[str]] = {}
    for plan in (report.plan, report.unsafe_plan):
        for key in case.checkpoint:
            new = plan.rename_key(key)
            if new != key and new in case.expected:
                out.setdefault(key, set()).add(new)
    for finding in report.findings:
        for key, targets in (finding.ctx.get("candidates") or {}).items():
            out.setdefault(key, set()).update(targets)
        for example in finding.examples:
            if example.checkpoint and example.expected:
                out.setdefault(example.checkpoint, set()).update(example.expected.split(" | "))
    return out


def coverage(case: Case, report: Report) -> Coverage:
    """Of the keys that need a rename: mapped right by the safe plan, by the unsafe plan, and explained (the right
    target in a plan or among a finding's candidates or examples)."""
    need = case.need()
    result = Coverage(need=len(need))
    maps = []
    for plan in (report.plan, report.unsafe_plan):
        try:
            maps.append(plan.mapping(case.checkpoint))
        except keyguard.PlanError:
            maps.append({k: plan.rename_key(k) for k in case.checkpoint})
    offers = offered(case, report)
    for key in need:
        truth = case.truth[key]
        safe, unsafe = maps[0].get(key) == truth, maps[1].get(key) == truth
        result.safe += safe
        result.unsafe += unsafe
        result.explained += safe or unsafe or truth in offers.get(key, ())
        result.wrong += any(m.get(key) not in (key, truth) and m.get(key) in case.expected for m in maps)
    return result
