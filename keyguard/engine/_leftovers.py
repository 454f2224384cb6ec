"""What is left once every rule and alignment is settled, as findings: missing and unexpected keys (with the closest
candidates, only with evidence), ambiguous keys with their readings, and the report that gathers every finding."""

from __future__ import annotations

import difflib
import re
from typing import Final

from keyguard._patterns import HOLE, template
from keyguard.engine import _knowledge as knowledge
from keyguard.engine._groups import leaf_class
from keyguard.engine._state import (
    EngineState,
    _display_only,
)
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import (
    Applicability,
    Rule,
)
from keyguard.report import _kinds as kinds
from keyguard.report._build import EXAMPLES
from keyguard.report._model import Example, Finding, Fix, Report, SourceRef, Summary
from keyguard.sources._keyset import TensorInfo

#: Ambiguous keys whose candidates the report lists in full (machines read them: ``ctx.candidates``).
MAX_CANDIDATES_SHOWN: Final = 2000


class _Leftovers(EngineState):
    def _leftover_findings(self) -> None:
        # nothing open on a side: its leftovers are known empty without a pass over every key of that side
        missing = [k for k in self.E if k in self.open_e] if self.open_e else []
        unexpected = [k for k in self.C if k in self.cur] if self.cur else []
        tied = self.ex_set.tied_to()
        tied_groups = {k: g for g in self.ex_set.tied for k in g}
        # only a missing key of a tied group asks what is present
        present = set(self.resolved.values()) if missing and tied_groups else set()
        categories: dict[str, list[str]] = {}
        for key in missing:
            group = tied_groups.get(key, ())
            if any(other in present for other in group if other != key):
                why = "tied"
            elif self._is_task_head(key):
                why = "head"
            elif key.endswith("num_batches_tracked"):
                why = "legacy"
            else:
                why = ""
            categories.setdefault(why, []).append(key)
        del tied
        for why, keys in categories.items():
            self.findings.append(self._missing_finding(why, keys, unexpected))
        categories = {}
        non_persistent = self.ex_set.non_persistent
        for key in unexpected:
            name = self.cur[key]
            if name in non_persistent:
                why = "non-persistent"
            elif knowledge.is_legacy_buffer(name):
                why = "legacy"
            else:
                why = ""
            categories.setdefault(why, []).append(key)
        for why, keys in categories.items():
            self.findings.append(self._unexpected_finding(why, keys, missing))

    def _is_task_head(self, key: str) -> bool:
        if not self.resolved or not knowledge.is_task_head(key):
            return False  # with nothing else loaded, a missing head is not the explanation
        head = key.split(".", 1)[0]
        # a head is "absent on purpose" only when the checkpoint holds none of it
        return not any(k.split(".", 1)[0] == head for k in self.resolved.values())

    def _missing_finding(self, why: str, keys: list[str], unexpected: list[str]) -> Finding:
        benign = {
            "tied": "tied to a weight the checkpoint holds (transformers re-ties it; checkpoints leave it out on"
            " purpose). load_state_dict(strict=True) still reports it: --ignore it",
            "head": "a task head absent from a base-model checkpoint: it starts from its initialisation, as expected"
            " when fine-tuning. --ignore it to load the rest strictly",
            "legacy": "older BatchNorm checkpoints lack num_batches_tracked; PyTorch fills it in",
        }.get(why)
        if benign is not None:
            benign = benign.replace("--ignore it", f"--ignore {_ignore_hint(keys)}")
        label = {"tied": " (tied weights)", "head": " (a task head)", "legacy": " (legacy)"}.get(why, "")
        hint = None if why else self._closest(keys, [self.cur[k] for k in unexpected])
        return self._finding(
            kinds.MISSING,
            f"{len(keys):,} expected key(s) are missing from the checkpoint{label}",
            [],
            keys,
            examples=[Example(expected=k) for k in keys[:EXAMPLES]],
            benign=benign,
            hint=hint,
            ctx={"count": len(keys), "category": why or None},
            pattern_keys=keys,
        )

    def _unexpected_finding(self, why: str, keys: list[str], missing: list[str]) -> Finding:
        benign = {
            "legacy": "legacy buffers older code saved and current models recompute at init; safe to drop:"
            " --drop-unexpected when fixing, or --ignore",
            "non-persistent": "non-persistent buffers of the model, never part of its state dict; safe to drop:"
            " --drop-unexpected when fixing, or --ignore",
        }.get(why)
        label = {"legacy": " (legacy buffers)", "non-persistent": " (non-persistent buffers)"}.get(why, "")
        names = [self.cur[k] for k in keys]
        renamed = sum(1 for k in keys if self.cur[k] != k)
        message = f"{len(keys):,} checkpoint key(s) are not expected by the model{label}"
        if renamed:
            message += f"; the plan renames {renamed:,} of them without finding a match"
        return self._finding(
            kinds.UNEXPECTED,
            message,
            keys,
            [],
            examples=[
                Example(checkpoint=k, detail=None if self.cur[k] == k else f"renamed to {self.cur[k]}")
                for k in keys[:EXAMPLES]
            ],
            benign=benign,
            hint=None if why else self._closest(names, missing),
            ctx={"count": len(keys), "category": why or None},
        )

    def _closest(self, keys: list[str], pool: list[str]) -> str | None:
        """A hint only where the evidence allows one: same shape, same leaf, same count of indices, and a name
        clearly closer than any other such key. Better no hint than a wrong one."""
        if not pool or not keys:
            return None
        hints = []
        for key in keys[:3]:
            info = self._info_of(key)
            if info is None or info.shape is None:
                continue
            holes, leaf = _hole_count(key), leaf_class(key)
            fitting: list[str] = []
            for other in pool[:20_000]:
                if (
                    (o := self._info_of(other)) is not None
                    and o.shape == info.shape
                    and _hole_count(other) == holes
                    and leaf_class(other) == leaf
                    and _alike(key, other)
                ):
                    fitting.append(other)
                    if len(fitting) > _HINT_RIVALS:
                        break
            if len(fitting) > _HINT_RIVALS:
                continue  # so many keys fit as well that no name can be clearly closer (and scoring them all costs)
            scored = sorted(
                ((difflib.SequenceMatcher(None, key, other).ratio(), other) for other in fitting), reverse=True
            )
            if scored and scored[0][0] >= 0.6 and (len(scored) == 1 or scored[0][0] - scored[1][0] >= 0.1):
                hints.append(f"{key} ~ {scored[0][1]}")
        return "closest candidates: " + "; ".join(hints) if hints else None

    def _info_of(self, name: str) -> TensorInfo | None:
        """What is known of a key by its current name: an expected key, or an open checkpoint key."""
        if name in self.E:
            return self.E[name]
        original = self.by_cur.get(name)
        return self.C[original] if original is not None else None

    def _ambiguity_findings(self) -> None:
        for amb in self.ambiguities:
            keys = list(amb.keys)
            targets = list(dict.fromkeys(t for ts in amb.keys.values() for t in ts))
            single = all(len(ts) == 1 for ts in amb.keys.values())
            if single:
                message = f"{len(keys):,} checkpoint key(s) have one candidate each that nothing confirms ({amb.why})"
            else:
                message = f"{len(keys):,} checkpoint key(s) could map to several expected keys ({amb.why})"
            fix = (
                Fix(
                    applicability=Applicability.display_only,
                    rules=[_display_only(r) for r in amb.rules],
                    note="never applied: write the mapping you mean in a plan (--plan)",
                )
                if amb.rules
                else None
            )
            if amb.contested:
                message = (
                    f"{len(keys):,} key(s) match as they stand, or belong elsewhere by the rule that explains their"
                    f" neighbours ({amb.why}); both readings are shown"
                )
            self.findings.append(
                self._finding(
                    kinds.CONTESTED_MATCH if amb.contested else kinds.AMBIGUOUS,
                    message,
                    keys,
                    targets,
                    examples=[
                        Example(checkpoint=k, expected=" | ".join(amb.keys[k]), detail="candidates")
                        for k in keys[:EXAMPLES]
                    ],
                    fix=fix,
                    hint=None
                    if amb.rules
                    else "choose with --hint CHECKPOINT_KEY=EXPECTED_KEY (one key decides its whole numbered group),"
                    " or write the mapping you mean in a plan (--plan)",
                    ctx={"count": len(keys), "candidates": dict(list(amb.keys.items())[:MAX_CANDIDATES_SHOWN])},
                )
            )

    # -------------------------------------------------------------------------------------------------- report
    def _report(self, problem: set[str]) -> Report:
        matched = len(self.exact) - len(problem & self.exact)
        safe = [acc.applicability is Applicability.safe for acc in self.accepted]
        fixable = sum(map(safe.__getitem__, self.via.values())) - sum(
            1 for k in problem if k in self.via and safe[self.via[k]]
        )
        if not self.exact and self.C and self.E:
            self.findings.insert(0, self._no_overlap(fixable))
        safe_rules: list[Rule] = []
        all_rules: list[Rule] = []
        for acc in self.accepted:
            if (acc.pairs or acc.helped) and acc.applicability.at_least(Applicability.unsafe):
                # a rule narrowed by the plan audit may leave a part of it less applicable than the rest
                all_rules.extend(r for r in acc.rules if r.applicability.at_least(Applicability.unsafe))
                if acc.applicability is Applicability.safe:
                    safe_rules.extend(r for r in acc.rules if r.applicability is Applicability.safe)
        for finding in self.findings:
            if finding.kind in ("transposed", "fused_split") and finding.fix is not None:
                all_rules.extend(r for r in finding.fix.rules if r.applicability.at_least(Applicability.unsafe))
        missing = sum(f.count for f in self.findings if f.kind == "missing")
        unexpected = sum(f.count for f in self.findings if f.kind == "unexpected")
        shape = sum(f.count for f in self.findings if f.kind in ("shape_mismatch", "transposed"))
        ambiguous = sum(f.count for f in self.findings if f.kind in ("ambiguous", "contested_match"))
        summary = Summary.of(
            expected=len(self.E),
            checkpoint=len(self.C),
            matched=matched,
            fixable=fixable,
            missing=missing,
            unexpected=unexpected,
            shape_mismatches=shape,
            ambiguous=ambiguous,
            ignored=self.ignored,
        )
        order = {"fatal": 0, "error": 1, "warning": 2, "info": 3}
        findings = sorted(self.findings, key=lambda f: (order[f.severity.value], f.code))
        return Report(
            ok=not any(f.severity.at_least(kinds.Severity.error) for f in findings),
            checkpoint=SourceRef(location=self.ck_set.location, format=self.ck_set.format, tensors=len(self.ck_set)),
            expected=SourceRef(location=self.ex_set.location, format=self.ex_set.format, tensors=len(self.ex_set)),
            summary=summary,
            findings=findings,
            plan=Plan(rules=safe_rules),
            unsafe_plan=Plan(rules=all_rules),
        )

    def _no_overlap(self, fixable: int) -> Finding:
        if fixable:
            after = f"; the safe plan maps {fixable:,} of {len(self.E):,} expected keys"
        else:
            after = "; no safe plan could map them"
        return self._finding(
            kinds.NO_OVERLAP,
            "no checkpoint key matches the model as the keys stand: load_state_dict(strict=False) would load"
            f" nothing and leave the model unchanged{after}",
            [],
            [],
            examples=[],
            ctx={"checkpoint": len(self.C), "expected": len(self.E), "fixable": fixable},
        )


#: Keys of the same shape, leaf and index count that look alike, beyond which no "closest candidate" is hinted.
_HINT_RIVALS: Final = 64


def _hole_count(key: str) -> int:
    return template(key)[0].count(HOLE)


def _alike(a: str, b: str) -> bool:
    """True when the parts where ``a`` and ``b`` differ look alike (``layer.0.attn`` / ``layers.0.attention``), so
    a shared frame (``base_model.model.`` ... ``.lora_A.weight``) alone never pairs two unrelated modules."""
    shorter = min(len(a), len(b))
    head = 0
    while head < shorter and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < shorter - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    left, right = a[head : len(a) - tail], b[head : len(b) - tail]
    if not left or not right:
        return True
    matcher = difflib.SequenceMatcher(None, left, right)
    # the quick ratios bound the ratio from above: most unrelated pairs are told apart without computing it
    return matcher.real_quick_ratio() >= 0.5 and matcher.quick_ratio() >= 0.5 and matcher.ratio() >= 0.5


def _ignore_hint(keys: list[str]) -> str:
    """The ``--ignore`` argument that covers exactly ``keys`` (one alternation for a few, the pattern for many)."""
    if len(keys) <= 3:
        body = "|".join(re.escape(k) for k in keys)
        return f"'^(?:{body})$'" if len(keys) > 1 else f"'^{body}$'"
    return f"'{re.escape(keys[0].split('.', 1)[0])}\\.'"
