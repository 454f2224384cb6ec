"""Doubts about a rule before and after the rounds take it: readings that contest it (exact matches, another
rule), lookalike targets, a rule that splits siblings, leaves its part or drops an index, and the keys left for
alignment to weigh, shown with every reading when alignment does not settle them. Groups a rule lands only partly
are ``_offsets``'."""

from __future__ import annotations

import operator
from itertools import filterfalse
from typing import Final

from keyguard._patterns import HOLE, template
from keyguard.engine import _knowledge as knowledge
from keyguard.engine._groups import digit_template, split_leaf
from keyguard.engine._infer import (
    Candidate,
)
from keyguard.engine._names import canonical_tokens
from keyguard.engine._offsets import _Offsets
from keyguard.engine._state import (
    _SHAPE_OF,
    _Ambiguity,
)
from keyguard.fixes._rules import (
    AddPrefix,
    Rename,
    ReplacePrefix,
    Rule,
    StripPrefix,
)


class _Doubts(_Offsets):
    def _carve_contested(
        self,
        cand: Candidate,
        pairs: dict[str, str],
        scored: list[tuple[int, Candidate]],
        taken_c: set[str],
        taken_e: set[str],
    ) -> dict[str, str]:
        """Keys another rule reads otherwise, where that rule also explains keys of its own (two subtrees renamed
        onto one prefix: ``trunk.norm`` could be ``model.norm`` or ``transformer.norm``), are taken out of the
        winner's pairs and shown with both readings."""
        if not isinstance(cand.rule, (StripPrefix, ReplacePrefix, AddPrefix)):
            return pairs  # numbered groups have their own checks (offsets, partly matched groups)
        contested: dict[str, list[str]] = {}
        for _, other in scored:
            if (
                other is cand
                or not other.landing
                or not isinstance(other.rule, (StripPrefix, ReplacePrefix, AddPrefix))
            ):
                continue
            clash = [n for n, t in other.landing.items() if n in pairs and pairs[n] != t]  # in key order
            if not clash:
                continue
            own = [n for n in other.landing if n not in pairs and n not in taken_c]
            if not own:
                continue
            for name in clash:
                readings = contested.setdefault(name, [pairs[name]])
                if other.landing[name] not in readings and other.landing[name] not in taken_e:
                    readings.append(other.landing[name])
        contested = {n: ts for n, ts in contested.items() if len(ts) > 1}
        if not contested:
            return pairs
        options: dict[str, list[str]] = {}
        for name, targets in contested.items():
            original = self.by_cur.pop(name)
            del self.cur[original]
            self.frozen.append(name)
            taken_c.add(name)
            for target in targets:
                self.open_e.discard(target)
                taken_e.add(target)
            options[original] = targets
        self._ambiguous(
            _Ambiguity(options, [cand.rule], "two rules that each explain other keys read these keys differently")
        )
        return {n: t for n, t in pairs.items() if n not in contested}

    def _spelled_by_another(self, pairs: dict[str, str]) -> bool:
        """A target that another open checkpoint key names better: spelled the same up to separators and case
        (``h-0-norm.weight`` for ``h.0.norm.weight``), or holding every word of the target's name where the key
        the rule lands lacks some (``encoder.branches.0.transition.norm.weight`` for
        ``encoder.transitions.0.norm.weight``, which ``head.branches.0.norm.weight`` would take by its prefix)."""
        names = list(self.by_cur)
        spelled = dict(zip(map(_unseparated, names), names))
        for name, target in pairs.items():
            other = spelled.get(_unseparated(target))
            if other is not None and other != name and other != target:
                return True
        if len(pairs) > _FEW:
            # a rule landing many keys is a reading of its own (``attention`` -> ``self_attn`` on every layer): a
            # rival naming every word of each target would have to mirror all of them
            return False
        doubtful = {n: t for n, t in pairs.items() if not canonical_tokens(t) <= canonical_tokens(n)}
        if not doubtful:
            return False
        rivals: dict[tuple[str, tuple[int, ...]], list[str]] = {}
        for other in filterfalse(pairs.__contains__, self.by_cur):
            rivals.setdefault((other.rsplit(".", 1)[-1], template(other)[1]), []).append(other)
        if not rivals:
            return False
        for target in doubtful.values():
            found = rivals.get((target.rsplit(".", 1)[-1], template(target)[1]))
            if not found:
                continue
            words = canonical_tokens(target)
            shape = self.E[target].shape
            if any(words <= canonical_tokens(o) and self.C[self.by_cur[o]].shape == shape for o in found):
                return True
        return False

    def _leaves_its_part(self, cand: Candidate, pairs: dict[str, str]) -> bool:
        """A prefix stripped or replaced so that keys leave a top-level part the model also has
        (``head.branches.`` -> ``encoder.transitions.``; ``module.head.groups.0.`` stripped onto ``norm``) while the
        model's own part still has open keys of the same leaf and shape (``head.norms.0.weight``): staying in its
        part is as good a reading. Alignment weighs both. Wrappers (``module.``) are no part."""
        rule = cand.rule
        if cand.known or not isinstance(rule, (StripPrefix, ReplacePrefix)):
            return False
        if (rule.prefix if isinstance(rule, StripPrefix) else rule.old) in knowledge.KNOWN_PREFIXES:
            return False
        targets = set(pairs.values())
        kinds_in: dict[str, set[tuple[str, object]]] = {}
        roots = self._expected_roots()
        for name, target in pairs.items():
            part = name.split(".", 1)[0]
            if part + "." in _WRAPPERS:
                part = _part(name)
            if part == target.split(".", 1)[0] or part not in roots:
                continue
            kinds = kinds_in.get(part)
            if kinds is None:
                head = part + "."
                kinds = {
                    (e.rsplit(".", 1)[-1], self.E[e].shape)
                    for e in self.open_e
                    if e.startswith(head) and e not in targets
                }
                kinds_in[part] = kinds
            if (target.rsplit(".", 1)[-1], self.E[target].shape) in kinds:
                return True
        return False

    def _expected_roots(self) -> frozenset[str]:
        """The model's top-level parts (computed once: the model's keys do not change)."""
        if self.roots is None:
            self.roots = frozenset(k.split(".", 1)[0] for k in self.E)
        return self.roots

    def _drops_an_index(self, cand: Candidate, pairs: dict[str, str]) -> bool:
        """A prefix or segment rule that throws away a number (``module.groups-1-branche.`` stripped, ``stages1``
        removed) and lands keys in a numbered family whose other blocks stay open in the model, or where a block of
        a list ends the same way with the same shape: the number it drops may be the one that says which block they
        are (stage 1 is ``layers.1``, not ``layers.0``; ``stage1-1.norm`` may be a block's norm, not the final one)."""
        rule = cand.rule
        if isinstance(rule, StripPrefix):
            old, new = rule.prefix, ""
        elif isinstance(rule, (ReplacePrefix, Rename)):
            old, new = rule.old, rule.new  # a segment renamed or removed (``stages1``) drops its number too
        else:
            return False
        if cand.known or old in knowledge.KNOWN_PREFIXES or len(digit_template(old)[1]) <= len(digit_template(new)[1]):
            return False
        landed = {self._template(t)[0] for t in pairs.values()}
        targets = set(pairs.values())
        # the open model keys by their last two segments: a key ending like a target, with its shape, inside a list
        # (``stages.0.blocks.0.norm.weight`` for ``norm.weight``) is where the dropped number may have pointed
        endings: dict[str, list[str]] = {}
        for e in self.open_e:
            if e not in targets:
                if self._template(e)[0] in landed:
                    return True
                endings.setdefault(".".join(e.rsplit(".", 2)[-2:]), []).append(e)
        for target in targets:
            shape = self.E[target].shape
            for other in endings.get(".".join(target.rsplit(".", 2)[-2:]), ()):
                if self.E[other].shape == shape and HOLE in self._template(other)[0]:
                    return True
        return False

    def _splits_siblings(self, cand: Candidate, renamed: dict[str, str]) -> bool:
        """True when the rule lands some keys of a parent module and renames siblings of theirs onto nothing
        (nothing a known convention, such as ``gamma`` -> ``weight``, makes land). Wrapper prefixes on every key
        and known conventions are exempt: their part-way renames are the first of two steps."""
        if cand.known or not renamed or self._on_every_key(cand.rule):
            return False
        landing = {_parent(n) for n, t in renamed.items() if t in self.open_e}
        if not landing:
            return False
        return any(
            t not in self.open_e and _parent(n) in landing and not _lands_by_convention(t, self.open_e)
            for n, t in renamed.items()
        )

    def _on_every_key(self, rule: Rule) -> bool:
        if isinstance(rule, (StripPrefix, ReplacePrefix)):
            old = rule.prefix if isinstance(rule, StripPrefix) else rule.old
            return old in knowledge.KNOWN_PREFIXES or all(n.startswith(old) for n in self.by_cur)
        if isinstance(rule, AddPrefix):
            return rule.prefix in knowledge.KNOWN_PREFIXES
        return False

    def _contest_exact(self, cand: Candidate, renamed: dict[str, str]) -> None:
        """A rule that explains a group would also put a key onto a name that matches as it stands (a stale
        unprefixed copy beside the prefixed one): both readings are shown, neither is applied."""
        if not self.exact:
            return
        contested = {n: t for n, t in renamed.items() if t in self.exact and self.resolved.get(t) == t}
        if not contested or len(contested) * 2 > len(renamed):
            return  # most of what the rule renames collides: it is no reading of this checkpoint
        options: dict[str, list[str]] = {}
        for name, target in contested.items():
            original = self.by_cur.pop(name)
            del self.cur[original]
            del renamed[name]
            self.frozen.append(name)
            del self.resolved[target]
            self.exact.discard(target)
            self.frozen.append(target)
            options[target] = [target]
            options[original] = [target]
        self._ambiguous(
            _Ambiguity(
                options,
                [cand.rule],
                "a key matches as it stands while a rule that explains its neighbours puts another key there",
                contested=True,
            )
        )

    def _outweighed(self, renamed: dict[str, str]) -> bool:
        """The rule puts keys onto names that match as they stand, and lands no more keys of the right shape
        than it collides with or lands on other shapes."""
        if not self.exact:
            return False
        collides = sum(1 for t in renamed.values() if t in self.exact and self.resolved.get(t) == t)
        if not collides or collides * 2 > len(renamed):
            return False  # no collision, or _contest_exact's "no reading": the exact matches stand
        fits = mismatched = 0
        for name, target in renamed.items():
            if target in self.open_e:
                ours, theirs = self.C[self.by_cur[name]].shape, self.E[target].shape
                if ours is not None and theirs is not None and ours != theirs:
                    mismatched += 1
                else:
                    fits += 1
        return fits <= collides + mismatched

    def _reordered(self, renamed: dict[str, str]) -> bool:
        """Keys the rule lands on blocks of other shapes, where the blocks of that numbered family, taken in
        another order, have exactly the shapes the keys have: a list reordered (reversed stages), not resized.
        Alignment pairs them by shape instead."""
        landed = {n: t for n, t in renamed.items() if t in self.open_e}
        names, targets = list(landed), list(landed.values())
        ours_all = map(_SHAPE_OF, map(self.C.__getitem__, map(self.by_cur.__getitem__, names)))
        theirs_all = map(_SHAPE_OF, map(self.E.__getitem__, targets))
        odd = [t for t, differ in zip(targets, map(operator.ne, ours_all, theirs_all)) if differ]
        odd_families = {self._template(t)[0] for t in odd}
        if not odd_families:
            return False
        families: dict[str, list[tuple[str, str]]] = {}
        for name, target in renamed.items():
            if target in self.open_e and HOLE in (shape := self._template(target)[0]) and shape in odd_families:
                families.setdefault(shape, []).append((name, target))
        for pairs in families.values():
            ours = [self.C[self.by_cur[n]].shape for n, _ in pairs]
            theirs = [self.E[t].shape for _, t in pairs]
            if None in ours or None in theirs or ours == theirs:
                continue
            if sorted(map(str, ours)) == sorted(map(str, theirs)):
                return True
        # a key landing on a block of another shape while another open block of that family has its shape: the
        # list reads in another order (only part of it saved), not resized
        taken = set(renamed.values())
        wanted: dict[str, set[object]] = {}
        for name, target in landed.items():
            shape = self._template(target)[0]
            ours_shape = self.C[self.by_cur[name]].shape
            if shape in families and ours_shape is not None and ours_shape != self.E[target].shape:
                wanted.setdefault(shape, set()).add(ours_shape)
        if wanted:
            for e in self.open_e:
                if e not in taken and self.E[e].shape in wanted.get(self._template(e)[0], ()):
                    return True
        return False

    def _lookalikes(self, pairs: dict[str, str]) -> dict[str, list[str]]:
        """For landing pairs whose rule changed the target beyond a prefix, the other open expected keys that end
        the same way (the part the key kept) with the same shape: readings the rule cannot tell from its own."""
        out: dict[str, list[str]] = {}
        if all(map(str.endswith, pairs, pairs.values())):  # C-level: runs over every key a rule lands
            return out  # a prefix stripped: every target is the whole of what its key kept
        targets = set(pairs.values())
        for name, target in pairs.items():
            a, b = name.split("."), target.split(".")
            a[-1] = knowledge.KNOWN_RENAMES.get(a[-1], a[-1])  # gamma is weight: the ending is kept
            kept = 0
            while kept < min(len(a), len(b)) and a[-1 - kept] == b[-1 - kept]:
                kept += 1
            if kept == len(b) or kept == 0:
                continue  # a prefix edit keeps the whole target: nothing else ends like it
            while kept > 1 and b[len(b) - kept].isdigit():
                kept -= 1  # a block number right after the change belongs to the changed part
            head = 0
            while head < min(len(a), len(b)) - kept and a[head] == b[head]:
                head += 1
            shape = self.C[self.by_cur[name]].shape
            if shape is None:
                continue
            start = ".".join(b[:head]) + "." if head else ""
            # alike: the same kept prefix and ending, another middle (where the rule made its change)
            middle = _names_only(b[head : len(b) - kept])
            alike = [
                e
                for e in self._ending(head, kept).get((start, ".".join(b[len(b) - kept :])), ())
                if e not in targets
                and e in self.open_e
                and self.E[e].shape == shape
                and _names_only(e.split(".")[head : len(e.split(".")) - kept]) != middle  # not just another block
            ]
            if alike:
                out[name] = [target, *alike]
        return out

    def _ending(self, head: int, kept: int) -> dict[tuple[str, str], list[str]]:
        """Open expected keys by their first ``head`` segments (as a prefix ending in ``.``, empty for none) and
        their last ``kept`` segments: one lookup per landing pair, built once per round and lengths (an index by
        ending alone made keys of one long list compare with every key of it)."""
        index = self.endings.get((head, kept))
        if index is None:
            index = {}
            for key in self._side_ordered(self.open_e, self.E):  # the model's order: readings listed reproducibly
                parts = key.split(".")
                if len(parts) > max(head, kept):
                    start = ".".join(parts[:head]) + "." if head else ""
                    index.setdefault((start, ".".join(parts[len(parts) - kept :])), []).append(key)
            self.endings[(head, kept)] = index
        return index

    def _deferred_lookalikes(self) -> None:
        """Keys a rule left for another reading: what alignment did not settle is shown with every reading."""
        for options in self.lookalikes:
            still = {o: [t for t in ts if t in self.open_e] for o, ts in options.items() if o in self.cur}
            still = {o: ts for o, ts in still.items() if len(ts) > 1}
            if not still:
                continue
            for original in still:
                name = self.cur.pop(original)
                del self.by_cur[name]
                self.frozen.append(name)
            for targets in still.values():
                self.open_e.difference_update(targets)
            self._ambiguous(_Ambiguity(still, [], "another open key of the same shape ends the same way"))

    def _ambiguous_pairs(self, cand: Candidate, pairs: dict[str, str], why: str) -> None:
        options: dict[str, list[str]] = {}
        for name, target in pairs.items():
            original = self.by_cur.pop(name)
            del self.cur[original]
            self.frozen.append(name)
            self.open_e.discard(target)
            options[original] = [target]
        self._ambiguous(_Ambiguity(options, [cand.rule], why))


#: Landing pairs up to which a rule's targets are weighed against rivals naming their every word.
_FEW: Final = 256
#: Prefixes that wrap a whole model (DDP, torch.compile, FSDP): no part of it.
_WRAPPERS: Final = tuple(p for p in knowledge.KNOWN_PREFIXES if p == "module." or p.startswith("_"))


def _part(name: str) -> str:
    """The top-level part a key belongs to, wrappers set aside (``module.head.x`` -> ``head``)."""
    while True:
        wrapper = next((w for w in _WRAPPERS if name.startswith(w)), None)
        if wrapper is None:
            return name.split(".", 1)[0]
        name = name[len(wrapper) :]


def _names_only(segments: list[str]) -> tuple[str, ...]:
    return tuple(s for s in segments if not s.isdigit())


def _parent(name: str) -> str:
    """The parent of the module a key belongs to (``a.b.q_proj.weight`` -> ``a.b``)."""
    module = split_leaf(name)[0]
    return module.rsplit(".", 1)[0] if "." in module else ""


def _lands_by_convention(name: str, open_expected: set[str]) -> bool:
    parts = name.split(".")
    for i, part in enumerate(parts):
        new = knowledge.KNOWN_RENAMES.get(part)
        if new is not None and ".".join([*parts[:i], new, *parts[i + 1 :]]) in open_expected:
            return True
    return False


def _unseparated(name: str) -> str:
    """``name`` without separators, in lower case: ``h-0-norm.weight`` and ``h.0.norm.weight`` read the same
    (three C-level replaces cost a fifth of a ``str.translate`` table)."""
    return name.replace(".", "").replace("_", "").replace("-", "").lower()
