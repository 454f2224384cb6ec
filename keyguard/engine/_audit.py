"""The plans as they will be applied, checked against what the engine concluded.

A rule applies to every key it matches, not only to the keys the engine landed with it. A broad rule (a wrapper
prefix stripped from every key) can therefore carry a key the engine left open -- one it found renumbered by a later,
less certain rule, or ambiguous -- onto an expected key as it stands: a DDP checkpoint of a 1-based list, stripped of
``module.``, puts block 1 on block 1. Loading that plan would put a wrong tensor under a right name, the one failure
keyguard must never have.

So each plan is applied to every checkpoint key, and every key that lands on an expected key the engine did not
choose for it at that level (a "stray") is taken out of the rule that first moved it: the rule is narrowed around
the stray keys (prefix rules split along the key tree, so they stay readable; other rules become explicit maps), and
the part that carries the stray keys keeps the applicability of what those keys really need -- ``unsafe`` when the
unsafe plan lands them right, ``display_only`` otherwise. What remains applicable never lands a key anywhere the
engine did not decide.
"""

from __future__ import annotations

from itertools import filterfalse
from typing import Final

from keyguard._exceptions import PlanError
from keyguard.engine._state import EngineState, _Ambiguity, _rename_all
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import AddPrefix, Applicability, MapKeys, ReplacePrefix, Rule, StripPrefix

#: Narrowing rounds per plan; each takes the stray keys out of the rule that first moved them.
MAX_PASSES: Final = 4
#: Prefix rules a narrowed rule may split into before its part becomes one explicit map.
MAX_PIECES: Final = 16

_BROAD: Final = (StripPrefix, ReplacePrefix, AddPrefix)
_Place = tuple[int, int]  # (accepted rule index, position among its rules)


class _PlanAudit(EngineState):
    def _audit_plans(self) -> None:
        """Narrow every applicable rule until neither plan lands a key the engine did not choose for it."""
        if not self.accepted:
            return
        levels = [Applicability.safe]
        if any(
            acc.applicability is Applicability.unsafe or any(r.applicability is Applicability.unsafe for r in acc.rules)
            for acc in self.accepted
        ):
            levels.append(Applicability.unsafe)  # else the unsafe plan is the safe one, and so are its choices
        for level in levels:
            for _ in range(MAX_PASSES):
                strays = self._strays(level)
                if not strays:
                    break
                self._release([key for key in strays if self._intended(key, level) is not None])
                self._narrow_around(strays, level)
            else:
                # narrowing did not converge: no rule that still carries a stray key stays applicable
                for place in {self._culprit(key, level) for key in self._strays(level)} - {None}:
                    assert place is not None
                    self._demote_rule(place, level)

    # ------------------------------------------------------------------------------------------------ reading
    def _plan_at(self, level: Applicability) -> list[tuple[_Place, Rule]]:
        """The renaming rules of the plan at ``level``, in order, with where each comes from."""
        out: list[tuple[_Place, Rule]] = []
        for index, acc in enumerate(self.accepted):
            if not (acc.pairs or acc.helped) or not acc.applicability.at_least(level):
                continue
            out.extend(
                ((index, position), rule)
                for position, rule in enumerate(acc.rules)
                if rule.renames and rule.applicability.at_least(level)
            )
        return out

    def _intended(self, key: str, level: Applicability) -> str | None:
        """Where the engine put ``key`` with the rules at ``level``: as it stands, or through its rule chain."""
        target = self.resolved.get(key)
        index = self.via.get(key)
        if target is None or index is None:
            return target
        return target if self.accepted[index].applicability.at_least(level) else None

    def _strays(self, level: Applicability) -> list[str]:
        plan = self._plan_at(level)
        if not plan:
            return []
        resolved, via = self.resolved, self.via
        below = {i for i, acc in enumerate(self.accepted) if not acc.applicability.at_least(level)}
        if any(self.accepted[index].settled for (index, _), _ in plan):
            keys = list(self.C)
        else:
            # rules of the rounds only: each was narrowed when accepted until it renamed no key already landed,
            # so a key landed at this level ends where the engine put it; the others are the question
            keys = (
                [k for k in self.C if k not in resolved or via.get(k, -1) in below]
                if below
                # resolved holds checkpoint keys only: when it holds as many as C, every key is landed
                else (list(filterfalse(resolved.__contains__, self.C)) if len(resolved) < len(self.C) else [])
            )
            if not keys:
                return []
        renamed = _applied([rule for _, rule in plan], keys)
        expected = self.E
        landed = [(key, new) for key, new in renamed.items() if new != key and new in expected]
        strays = [
            key
            for key, new in landed
            if new != resolved.get(key) or (below and via.get(key, -1) in below)  # landed, but not by this plan
        ]
        if len(set(renamed.values())) != len(renamed):
            # keys renamed onto one name (applying the plan would be refused): those the engine did not put there
            owners: dict[str, list[str]] = {}
            for key, new in renamed.items():
                owners.setdefault(new, []).append(key)
            seen = set(strays)
            for new, keys_here in owners.items():
                if len(keys_here) < 2:
                    continue
                # a key that keeps its name holds it: every key renamed onto it goes; else the engine's choice stays
                kept = (
                    new if new in keys_here else next((k for k in keys_here if self._intended(k, level) == new), None)
                )
                strays += [k for k in keys_here if k != kept and k not in seen]
        return strays

    def _culprit(self, key: str, level: Applicability) -> _Place | None:
        """The rule of the plan to narrow around ``key``: the first prefix rule that renames it (a broad rule, not
        made for this key: a gamma/beta rename before the strip is right, the strip is what lands it), else the
        first rule that does."""
        name = key
        chain: list[tuple[_Place, Rule]] = []
        for place, rule in self._plan_at(level):
            new = rule.rename(name)
            if new is not None and new != name:
                chain.append((place, rule))
                name = new
        broad = [place for place, rule in chain if isinstance(rule, _BROAD)]
        return broad[0] if broad else (chain[0][0] if chain else None)

    # ---------------------------------------------------------------------------------------------- narrowing
    def _narrow_around(self, strays: list[str], level: Applicability) -> None:
        plan = self._plan_at(level)
        by_place: dict[_Place, list[str]] = {}
        for key in strays:
            place = self._culprit(key, level)
            if place is not None:
                by_place.setdefault(place, []).append(key)
        keys = list(self.C)
        for place in sorted(by_place, reverse=True):  # later places first: earlier positions stay valid
            position = next(i for i, (p, _) in enumerate(plan) if p == place)
            rule = plan[position][1]
            names = _applied([r for _, r in plan[:position]], keys)
            owner = {name: key for key, name in names.items()}
            moved = list(_rename_all([rule], list(names.values())))
            leave = {names[key] for key in by_place[place]}
            keep = {n for n in moved if self._intended(owner[n], level) is not None} - leave
            kept, out = _split(rule, moved, keep, leave)
            pieces = [r.model_copy(update={"applicability": rule.applicability, "reason": rule.reason}) for r in kept]
            for piece in out:
                needed = self._remainder_level([owner[n] for n in _rename_all([piece], moved)], level)
                if needed is not None:  # a part no plan needs is left out: the keys it carries stay as they are
                    pieces.append(piece.model_copy(update={"applicability": needed, "reason": rule.reason}))
            index, at = place
            self.accepted[index].rules[at : at + 1] = pieces

    def _release(self, keys: list[str]) -> None:
        """Keys the engine landed that the plan cannot carry there (a key that keeps its name already holds the
        target, or the rules put it elsewhere once applied to every key): shown with that reading as a candidate,
        never applied."""
        for key in keys:
            target = self.resolved.pop(key)
            index = self.via.pop(key, None)
            if index is not None:
                self.accepted[index].pairs.pop(key, None)
            self._ambiguous(
                _Ambiguity(
                    {key: [target]},
                    [],
                    "the plan cannot carry it there: applied to every key, its rules would collide or put it elsewhere",
                )
            )

    def _remainder_level(self, keys: list[str], level: Applicability) -> Applicability | None:
        """What the part of a rule that carries ``keys`` is worth: ``unsafe`` when the unsafe plan needs it to land
        some of them where the engine put them, else nothing (left out of the plans)."""
        if level is Applicability.safe and any(self._intended(k, Applicability.unsafe) is not None for k in keys):
            return Applicability.unsafe
        return None

    def _demote_rule(self, place: _Place, level: Applicability) -> None:
        index, at = place
        acc = self.accepted[index]
        rule = acc.rules[at]
        lower = Applicability.unsafe if level is Applicability.safe else Applicability.display_only
        acc.rules[at] = rule.model_copy(update={"applicability": lower})


def _split(rule: Rule, moved: list[str], keep: set[str], leave: set[str]) -> tuple[list[Rule], list[Rule]]:
    """``rule`` as two lists of rules that together rename what it renames: the first renames every name in
    ``keep`` and none in ``leave``, the second the reverse. Other names go with either, whichever keeps the rules
    few (prefix rules split along the key tree; other rules become explicit maps)."""
    if isinstance(rule, (StripPrefix, ReplacePrefix)):
        old = rule.prefix if isinstance(rule, StripPrefix) else rule.old
        new = "" if isinstance(rule, StripPrefix) else rule.new
        kept: list[Rule] = []
        out: list[Rule] = []
        _walk(old, new, "", moved, keep, leave, kept, out)
        if len(kept) > MAX_PIECES or len(out) > MAX_PIECES:
            kept = [_explicit(rule, [n for n in moved if n not in leave])]
            out = [_explicit(rule, [n for n in moved if n in leave])]
        return kept, out
    if isinstance(rule, AddPrefix):
        firsts_out = {n.split(".", 1)[0] for n in moved if n in leave}
        firsts_kept = {n.split(".", 1)[0] for n in moved if n not in leave}
        if not firsts_out & firsts_kept:
            kept_scope: list[Rule] = [AddPrefix(prefix=rule.prefix, only=sorted(firsts_kept))] if firsts_kept else []
            return kept_scope, [AddPrefix(prefix=rule.prefix, only=sorted(firsts_out))]
    kept_names = [n for n in moved if n not in leave]
    return ([_explicit(rule, kept_names)] if kept_names else []), [_explicit(rule, [n for n in moved if n in leave])]


def _walk(
    old: str, new: str, stem: str, names: list[str], keep: set[str], leave: set[str], kept: list[Rule], out: list[Rule]
) -> None:
    """Split a prefix rule along the key tree until no piece renames names of both ``keep`` and ``leave``."""
    if not any(n in leave for n in names) or not any(n in keep for n in names):
        piece: Rule = ReplacePrefix(old=old + stem, new=new + stem)
        if not stem and not new:
            piece = StripPrefix(prefix=old)
        (out if any(n in leave for n in names) else kept).append(piece)
        return
    buckets: dict[str, list[str]] = {}
    cut = len(old) + len(stem)
    for name in names:
        head, dot, _ = name[cut:].partition(".")
        if dot:
            buckets.setdefault(head, []).append(name)
        else:  # the key ends here: no deeper prefix tells it apart
            (out if name in leave else kept).append(MapKeys(mapping={name: new + name[len(old) :]}))
    for head, members in buckets.items():
        _walk(old, new, f"{stem}{head}.", members, keep, leave, kept, out)


def _applied(rules: list[Rule], keys: list[str]) -> dict[str, str]:
    """Every key's name under ``rules``; where two keys would collide (applying the plan would be refused), key by
    key, so that the audit can see which of them the engine did not put there."""
    plan = Plan(rules=rules)
    try:
        return plan.mapping(keys)
    except PlanError:
        return {key: plan.rename_key(key) for key in keys}


def _explicit(rule: Rule, names: list[str]) -> Rule:
    return MapKeys(mapping=_rename_all([rule], names))
