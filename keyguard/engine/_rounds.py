"""Rule inference in rounds: prefix, segment and index-shift candidates voted, screened, accepted."""

from __future__ import annotations

import operator
import re
from itertools import compress
from typing import Final

from keyguard._patterns import HOLE, template
from keyguard.engine import _knowledge as knowledge
from keyguard.engine._groups import split_leaf
from keyguard.engine._infer import (
    SAMPLE,
    Candidate,
    evaluate,
    near_prefix_candidates,
    prefix_candidates,
    sample,
    segment_candidates,
    shift_candidates,
)
from keyguard.engine._state import (
    _DTYPE_OF,
    _FLOAT_DTYPES,
    _SHAPE_OF,
    EngineState,
    _Accepted,
    _Ambiguity,
    _code,
    _literal,
    _prefix_of,
    _rename_all,
)
from keyguard.fixes._rules import (
    AddPrefix,
    Applicability,
    MapKeys,
    Rename,
    ReplacePrefix,
    Rule,
    ShiftIndex,
    StripPrefix,
)


class _Rounds(EngineState):
    def _round(self) -> bool:
        self.endings = {}  # open expected keys change between rounds
        names = list(self.by_cur)
        expected = list(self.E) if len(self.open_e) == len(self.E) else [k for k in self.E if k in self.open_e]
        open_names = set(names)
        candidates = [
            *prefix_candidates(names, open_names, expected, self.open_e),
            *segment_candidates(names, expected),
            *shift_candidates(names, expected),
        ]
        unique: dict[str, Candidate] = {}
        for cand in candidates:
            if self.declined and cand.identity in self.declined:
                continue
            previous = unique.get(cand.identity)
            if previous is None or cand.known > previous.known:
                unique[cand.identity] = cand
        scored: list[tuple[int, Candidate]] = []
        contenders = list(unique.values())
        if len(names) > 4 * SAMPLE:
            contenders = self._screen(contenders, names)
        for cand in contenders:
            evaluate(cand, names, self.open_e)
        # most landings first; a candidate landing exactly like one already scored shares its support
        by_size = sorted(contenders, key=lambda c: -len(c.landing))
        for cand in by_size:
            if not cand.landing:
                break
            twin = next(
                (s for s, o in scored if len(o.landing) == len(cand.landing) and o.landing == cand.landing), None
            )
            support = twin if twin is not None else self._support(cand.landing)
            if support == 1 and cand.kind == "renamed" and not cand.known:
                continue  # a segment rename seen on one key is no rule: template alignment weighs such keys
            if support:
                scored.append((support, cand))
        if not scored:
            return self._lookahead(names, expected)
        scored.sort(key=lambda item: (-item[0], not item[1].known, not item[1].general, item[1].complexity))
        taken_c: set[str] = set()
        taken_e: set[str] = set()
        progress = False
        for support, cand in scored:
            pairs = (
                {n: e for n, e in cand.landing.items() if n not in taken_c and e not in taken_e}
                if taken_c or taken_e
                else cand.landing
            )
            if not pairs:
                continue
            rivals = [
                other
                for s, other in scored
                if other is not cand and s == support and other.landing != cand.landing and _conflicts(other, pairs)
            ]
            if rivals and not (cand.known and not any(r.known for r in rivals)):
                self._record_tie(cand, rivals, pairs, taken_c, taken_e, scored)
                progress = True
                continue
            pairs = self._carve_contested(cand, pairs, scored, taken_c, taken_e)
            if not pairs:
                progress = True
                continue
            if self._accept(cand, pairs):
                progress = True
                taken_c.update(pairs)
                taken_e.update(pairs.values())
                break  # names changed: re-generate candidates from what is left
        return progress

    def _lookahead(self, names: list[str], expected: list[str]) -> bool:
        """When no rule lands a key, take a prefix step after which a segment rule lands some (two edits at once)."""
        for step in near_prefix_candidates(names, expected, self.open_e):
            evaluate(step, names, self.open_e)
            renamed = _rename_all([step.rule], step.renamed)
            if not renamed or len(set(renamed.values())) != len(renamed):
                continue
            if not set(renamed.values()).isdisjoint(self.by_cur.keys() - renamed.keys()):
                continue
            if self._renames_resolved(step.rule):
                continue
            moved = [renamed.get(n, n) for n in names]
            followers = segment_candidates(moved, expected)
            for follower in followers:
                evaluate(follower, moved, self.open_e)
            if not any(f.landing for f in followers):
                continue
            index = len(self.accepted)
            accepted = _Accepted(step.kind, [step.rule], Applicability.safe, step)
            for name, new in renamed.items():
                original = self.by_cur.pop(name)
                accepted.touched.append(original)
                first = self.first_rule.setdefault(original, index)
                if first != index:
                    self.chain.setdefault(original, [first]).append(index)
                self.cur[original] = new
                self.by_cur[new] = original
            self.accepted.append(accepted)
            return True
        return False

    def _screen(self, contenders: list[Candidate], names: list[str]) -> list[Candidate]:
        """On many keys, try every candidate on a sample first: only those that land a fair share of it, and that
        land it differently from every better candidate (possible rivals), are evaluated on all keys."""
        probe = sample(names)
        for cand in contenders:
            evaluate(cand, probe, self.open_e)
        best = max((len(c.landing) for c in contenders), default=0)
        ordered = sorted(contenders, key=lambda c: (-len(c.landing), not c.known, not c.general, c.complexity))
        kept: list[Candidate] = []
        for cand in ordered:
            if not cand.landing or len(cand.landing) < best / 2:
                break
            if all(cand.landing != other.landing for other in kept):
                kept.append(cand)
        return kept

    def _support(self, landing: dict[str, str]) -> int:
        """How many landing pairs have compatible shapes (equal, or unknown on a side); C-level over columns."""
        ours = list(map(_SHAPE_OF, map(self.C.__getitem__, map(self.by_cur.__getitem__, landing))))
        theirs = list(map(_SHAPE_OF, map(self.E.__getitem__, landing.values())))
        equal: int = sum(map(operator.eq, ours, theirs))
        if None in ours or None in theirs:
            equal += sum(1 for a, b in zip(ours, theirs) if (a is None or b is None) and a != b)
        return equal

    def _record_tie(
        self,
        cand: Candidate,
        rivals: list[Candidate],
        pairs: dict[str, str],
        taken_c: set[str],
        taken_e: set[str],
        scored: list[tuple[int, Candidate]],
    ) -> None:
        """Declare the tied keys ambiguous, with every candidate target any rule offers for them.

        The affected set is closed over every scored candidate: a name is in it when one of its targets is, and a
        target when one of its names is, so no true target is left out of the candidates shown.
        """
        names = set(pairs) | {n for r in rivals for n in r.landing if n in pairs or r.landing[n] in pairs.values()}
        targets = set(pairs.values())
        everyone = [c for _, c in scored]
        for _ in range(8):
            grown = False
            for other in everyone:
                for name, target in other.landing.items():
                    if name in taken_c or target in taken_e:
                        continue
                    linked = name in names or target in targets
                    if linked and (name not in names or target not in targets):
                        names.add(name)
                        targets.add(target)
                        grown = True
            if not grown:
                break
        options: dict[str, list[str]] = {}
        for name in [n for n in self.by_cur if n in names]:  # in key order, so reports are reproducible
            offered = dict.fromkeys(other.landing[name] for other in everyone if other.landing.get(name) in targets)
            options[self.by_cur[name]] = list(offered)
        for original, choices in options.items():
            name = self.cur.pop(original)
            del self.by_cur[name]
            self.frozen.append(name)
            taken_c.add(name)
            for target in choices:
                self.open_e.discard(target)
                taken_e.add(target)
        for target in targets - taken_e:
            self.open_e.discard(target)
            taken_e.add(target)
        self._ambiguous(
            _Ambiguity(options, [cand.rule, *(r.rule for r in rivals)], "several rules explain these keys equally well")
        )

    def _accept(self, cand: Candidate, pairs: dict[str, str]) -> bool:
        if isinstance(cand.rule, ShiftIndex) and self._group_partly_resolved(cand.rule):
            # part of the numbered group already matches by name: an offset cannot be told from a coincidence
            self._contest_shift(cand.rule, pairs)
            return True
        rules = self._narrow(cand, pairs)
        narrowed_rename = isinstance(cand.rule, Rename) and any(isinstance(r, MapKeys) for r in rules)
        # narrowed rules rename a subset of what the candidate renames
        if rules == [cand.rule] and len(cand.renamed) == len(cand.targets):
            renamed = dict(zip(cand.renamed, cand.targets))  # evaluate() already renamed every key
            if self.frozen:
                renamed = {n: t for n, t in renamed.items() if n in self.by_cur}
        else:
            renamed = _rename_all(rules, [n for n in cand.renamed if n in self.by_cur])
        if self._splits_siblings(cand, renamed):
            # the rule lands some children of a module and leaves their siblings elsewhere: two readings of one
            # module (``encoder.patch_embeddings.0.norm`` -> ``stages.0.norm`` while its ``proj`` sibling needs
            # ``stages.0.patch_embeddings.proj``). Template alignment weighs the module as a whole instead.
            self.declined.add(cand.identity)
            return False
        if not cand.known and not self._on_every_key(cand.rule) and self._spelled_by_another(pairs):
            # a target that another open key of the checkpoint spells the same way, up to separators and case
            # (``h-0-norm.weight`` for ``h.0.norm.weight``): that key is the better claimant. Alignment weighs both
            self.declined.add(cand.identity)
            return False
        alike = self._lookalikes(pairs)
        if alike:
            # a key lands where another open key of the model looks just as right (``attentions.0.output.dense``
            # onto ``blocks.0.output.dense`` while ``blocks.0.attention.output.dense`` is as open, as shaped, and
            # ends alike): not this rule's to decide. Alignment weighs them; what it leaves is shown with both
            self.declined.add(cand.identity)
            self.lookalikes.append({self.by_cur[n]: targets for n, targets in alike.items()})
            return False
        if self._outweighed(renamed):
            # most of what the rule renames either collides with keys that match as they stand or lands on other
            # shapes: the few keys it lands are no reading of their own. Alignment weighs them instead
            self.declined.add(cand.identity)
            return False
        self._contest_exact(cand, renamed)
        # a rename onto a name another key keeps, or two renames onto one name, would lose a tensor
        new_names = set(renamed.values())
        if (
            len(new_names) != len(renamed)
            or not new_names.isdisjoint(self.by_cur.keys() - renamed.keys())
            or not new_names.isdisjoint(self.resolved.values())
        ):
            rules = [MapKeys(mapping=dict(pairs))]
            renamed = dict(pairs)
        if any(self._renames_resolved(rule) for rule in rules):
            rules = [MapKeys(mapping=dict(pairs))]
            renamed = dict(pairs)
        # judge the group with the rule as inferred, before narrowing: a scope must not hide the group's other blocks
        unscoped = {n: cand.rule.rename(n) or n for n in self.by_cur.keys() - pairs.keys()}
        suspicious = self._partial_groups(pairs, unscoped)
        if suspicious:
            # part of a numbered group lands while other blocks of the same group stay unmatched on both sides:
            # the block numbers may be offset, so the blocks that land could be the wrong ones. The rule is not
            # taken; template alignment weighs the whole group first, and what it leaves is shown with this reading
            doubtful = {n: e for n, e in pairs.items() if template(e)[0] in suspicious}
            self.deferred.append((cand, doubtful, suspicious, renamed))
            self.declined.add(cand.identity)
            self.deferred_templates |= suspicious  # no weaker rule may land this group piecemeal meanwhile
            return False
        if self.deferred_templates and any(template(e)[0] in self.deferred_templates for e in pairs.values()):
            self.declined.add(cand.identity)
            return False
        index = len(self.accepted)
        accepted = _Accepted(cand.kind, rules, Applicability.safe, cand)
        # move the renamed keys in bulk (C-level maps): this runs once per rule over up to every key
        originals = list(map(self.by_cur.pop, renamed))
        accepted.touched = originals
        for original in self.first_rule.keys() & set(originals):  # renamed before: now a chain of rules
            self.chain.setdefault(original, [self.first_rule[original]]).append(index)
        self.first_rule.update(
            dict.fromkeys(originals, index)
            if not self.first_rule
            else {o: index for o in originals if o not in self.first_rule}
        )
        news = list(renamed.values())
        lands = list(map(self.open_e.__contains__, news))
        landed = dict(compress(zip(originals, news), lands))
        stays = dict(compress(zip(originals, news), map(operator.not_, lands)))
        for original in landed:
            del self.cur[original]
        self.open_e.difference_update(landed.values())
        self.resolved.update(landed)
        self.via.update(dict.fromkeys(landed, index))
        accepted.pairs = landed
        self.cur.update(stays)
        self.by_cur.update(zip(stays.values(), stays))
        if narrowed_rename:
            accepted.applicability = Applicability.unsafe
            accepted.note = "the rename also matches keys that are already right, so it is applied key by key"
        self.accepted.append(accepted)
        return True

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
            clash = {n for n, t in other.landing.items() if n in pairs and pairs[n] != t}
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
        spelled = {n.translate(_NO_SEPARATORS).lower(): n for n in self.by_cur}
        for name, target in pairs.items():
            other = spelled.get(target.translate(_NO_SEPARATORS).lower())
            if other is not None and other != name and other != target:
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

    def _lookalikes(self, pairs: dict[str, str]) -> dict[str, list[str]]:
        """For landing pairs whose rule changed the target beyond a prefix, the other open expected keys that end
        the same way (the part the key kept) with the same shape: readings the rule cannot tell from its own."""
        out: dict[str, list[str]] = {}
        if all(n.endswith(t) for n, t in pairs.items()):
            return out  # a prefix stripped: every target is the whole of what its key kept
        targets = set(pairs.values())
        for name, target in pairs.items():
            a, b = name.split("."), target.split(".")
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
                for e in self._ending(kept).get(".".join(b[len(b) - kept :]), ())
                if e not in targets
                and e in self.open_e
                and e.startswith(start)
                and self.E[e].shape == shape
                and _names_only(e.split(".")[head : len(e.split(".")) - kept]) != middle  # not just another block
            ]
            if alike:
                out[name] = [target, *alike]
        return out

    def _ending(self, kept: int) -> dict[str, list[str]]:
        """Open expected keys by their last ``kept`` segments (built once per round and length)."""
        index = self.endings.get(kept)
        if index is None:
            index = {}
            for key in self.open_e:
                parts = key.rsplit(".", kept)
                if len(parts) > kept:
                    index.setdefault(".".join(parts[1:]), []).append(key)
            self.endings[kept] = index
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

    def _deferred_groups(self) -> None:
        """The partly landing groups the rounds set aside: what alignment left of them is shown as ambiguous,
        with the rule's reading."""
        for cand, doubtful, suspicious, renamed in self.deferred:
            still = {n: e for n, e in doubtful.items() if n in self.by_cur and e in self.open_e}
            if still:
                self._ambiguous_group(cand, still, suspicious, {n: t for n, t in renamed.items() if n in self.by_cur})

    def _contest_shift(self, rule: ShiftIndex, pairs: dict[str, str]) -> None:
        """Blocks of a numbered group match as they stand while others are offset (a pipeline stage saved with
        local indices: layers 0, 1 where the model has 1, 2). Exact matches are evidence, not truth: the whole
        group is shown with both readings, the blocks paired in order first, and neither is applied."""
        block = re.compile(re.escape(rule.prefix) + r"([0-9]+)(?:\.|$)")
        ours = {n: o for n, o in self.by_cur.items() if block.match(n)}
        kept = {o: t for o, t in self.resolved.items() if o in self.exact and block.match(t)}
        theirs = [k for k in self.E if block.match(k) and (k in self.open_e or k in kept.values())]

        def index(name: str) -> int:
            found = block.match(name)
            assert found is not None
            return int(found.group(1))

        c_numbers = sorted({index(n) for n in ours} | {index(t) for t in kept.values()})
        e_numbers = sorted({index(k) for k in theirs})
        in_order = dict(zip(c_numbers, e_numbers)) if len(c_numbers) == len(e_numbers) else {}
        freed = set(kept.values())
        options: dict[str, list[str]] = {}
        for name, original in [*ours.items(), *((t, o) for o, t in kept.items())]:
            readings: list[str] = []
            found = block.match(name)
            if found is not None and index(name) in in_order:
                moved = f"{rule.prefix}{in_order[index(name)]}{name[found.end(1) :]}"
                if moved in self.open_e or moved in freed:
                    readings.append(moved)
            current = pairs.get(name, name if original in kept else None)
            if current is not None and current not in readings and (current in self.open_e or current in freed):
                readings.append(current)
            options[original] = readings
        for name, original in ours.items():
            del self.by_cur[name]
            del self.cur[original]
            self.frozen.append(name)
        for original, target in kept.items():
            del self.resolved[original]
            self.exact.discard(original)
            self.frozen.append(target)
        for readings in options.values():
            self.open_e.difference_update(readings)
        offsets = {e - c for c, e in in_order.items()}
        shown: list[Rule] = [rule]
        if len(offsets) == 1 and (offset := offsets.pop()) != rule.offset:
            shown.insert(0, ShiftIndex(prefix=rule.prefix, offset=offset))
        self._ambiguous(
            _Ambiguity(
                options,
                shown,
                "some blocks of this numbered group match as they stand while others are offset",
                contested=bool(kept),
            )
        )

    def _finalize(self) -> None:
        """Settle each rule's applicability on all the keys it helped map, then let no rule be more applicable
        than an earlier rule the same keys depend on (a plan applies them in order)."""
        helped: dict[int, dict[str, str]] = {index: acc.pairs for index, acc in enumerate(self.accepted)}
        for original, chain in self.chain.items():  # keys that reached their target through several rules
            if original in self.resolved:
                for index in chain[:-1]:
                    helped[index] = {**helped[index], original: self.resolved[original]}
        for index, acc in enumerate(self.accepted):
            acc.helped = len(helped[index])
        for index, acc in enumerate(self.accepted):
            if acc.settled:
                continue
            level, note = self._applicability(acc.candidate, helped.get(index, {}))
            if level.rank < acc.applicability.rank:
                acc.applicability, acc.note = level, note
        used_by: dict[int, list[int]] = {}
        for original, chain in self.chain.items():
            if original in self.via:
                for i in chain[:-1]:
                    used_by.setdefault(i, []).append(self.via[original])
        for index, acc in enumerate(self.accepted):
            if not acc.pairs and index in used_by:  # a step that lands nothing itself
                best = max((self.accepted[j].applicability for j in used_by[index]), key=lambda a: a.rank)
                if best.rank < acc.applicability.rank:
                    acc.applicability, acc.note = best, f"only useful with later rules that are {best.value}"
        for original, chain in self.chain.items():
            if original in self.via:
                weakest = min((self.accepted[i] for i in chain), key=lambda a: a.applicability.rank)
                last = self.accepted[self.via[original]]
                if weakest.applicability.rank < last.applicability.rank:
                    last.applicability = weakest.applicability
                    last.note = f"depends on an earlier rule that is {weakest.applicability.value}"
        for acc in self.accepted:
            update = {"applicability": acc.applicability, "reason": _code(acc.candidate.kind)}
            acc.rules = [rule.model_copy(update=update) for rule in acc.rules]

    def _ambiguous_pairs(self, cand: Candidate, pairs: dict[str, str], why: str) -> None:
        options: dict[str, list[str]] = {}
        for name, target in pairs.items():
            original = self.by_cur.pop(name)
            del self.cur[original]
            self.frozen.append(name)
            self.open_e.discard(target)
            options[original] = [target]
        self._ambiguous(_Ambiguity(options, [cand.rule], why))

    def _ambiguous_group(
        self, cand: Candidate, doubtful: dict[str, str], templates: set[str], renamed: dict[str, str]
    ) -> None:
        """Declare a whole numbered group ambiguous: the blocks that land and those left on both sides."""
        options: dict[str, list[str]] = {}
        leftover_e = [e for e in self.open_e if e not in doubtful.values() and template(e)[0] in templates]
        for name in list(self.by_cur):
            new = renamed.get(name, name)
            if name in doubtful or template(new)[0] in templates:
                original = self.by_cur.pop(name)
                del self.cur[original]
                self.frozen.append(name)
                options[original] = [doubtful[name]] if name in doubtful else []
        for target in [*doubtful.values(), *leftover_e]:
            self.open_e.discard(target)
        for choices in options.values():
            choices.extend(e for e in leftover_e if e not in choices)
        self._ambiguous(
            _Ambiguity(options, [cand.rule], "other blocks of the same numbered group stay unmatched (offset?)")
        )

    def _partial_groups(self, pairs: dict[str, str], renamed: dict[str, str]) -> set[str]:
        if len(self.open_e) <= len(pairs):
            return set()  # every open expected key lands: nothing of any group is left over
        landed = {template(e)[0] for e in pairs.values()}
        numbered = {t for t in landed if HOLE in t}
        if not numbered:
            return set()
        targets = set(pairs.values())
        left_c = {template(renamed.get(n, n))[0] for n in renamed} & numbered
        open_first: dict[str, set[int]] = {}
        for e in self.open_e:
            if e not in targets:
                shape, numbers = template(e)
                if shape in numbered:
                    open_first.setdefault(shape, set()).add(numbers[0])
        landed_first: dict[str, set[int]] = {}
        for e in targets:
            shape, numbers = template(e)
            if shape in numbered:
                landed_first.setdefault(shape, set()).add(numbers[0])
        suspicious = set(open_first) & left_c
        # blocks missing *before* the ones that land also suggest an offset (trailing ones: a smaller model)
        suspicious |= {t for t, low in open_first.items() if min(low) < min(landed_first.get(t, {0}))}
        return suspicious

    def _group_partly_resolved(self, rule: ShiftIndex) -> bool:
        """Some blocks of the group already match, or were declared ambiguous: an offset for the rest cannot be
        told from a coincidence."""
        block = re.compile(re.escape(rule.prefix) + r"[0-9]+(?:\.|$)")
        return any(
            block.match(name) for name in (*self.resolved.values(), *self.frozen) if name.startswith(rule.prefix)
        )

    def _renames_resolved(self, rule: Rule) -> bool:
        """True when ``rule`` would rename a key that is already right, or one declared ambiguous."""
        literal = _literal(rule)
        return any(
            literal in name and rule.rename(name) is not None for name in (*self.resolved.values(), *self.frozen)
        )

    def _narrow(self, cand: Candidate, pairs: dict[str, str]) -> list[Rule]:
        """The candidate's rule, narrowed until it renames no key that is already right."""
        rule = cand.rule
        if isinstance(rule, AddPrefix):
            scope = sorted({name.split(".", 1)[0] for name in pairs})
            rule = AddPrefix(prefix=rule.prefix, only=scope)
        if not self._renames_resolved(rule):
            return [rule]
        if isinstance(rule, (StripPrefix, ReplacePrefix)):
            old = rule.prefix if isinstance(rule, StripPrefix) else rule.old
            new = "" if isinstance(rule, StripPrefix) else rule.new
            narrowed: list[Rule] = []
            leftovers: dict[str, str] = {}
            by_next: dict[str, dict[str, str]] = {}
            for name, target in pairs.items():
                head = name[len(old) :].split(".", 1)[0]
                by_next.setdefault(head, {})[name] = target
            for head, group in by_next.items():
                option = ReplacePrefix(old=f"{old}{head}.", new=f"{new}{head}.")
                if self._renames_resolved(option) or not all(n.startswith(option.old) for n in group):
                    leftovers.update(group)
                else:
                    narrowed.append(option)
            if leftovers:
                narrowed.append(MapKeys(mapping=leftovers))
            return narrowed
        return [MapKeys(mapping=dict(pairs))]

    def _applicability(self, cand: Candidate, pairs: dict[str, str]) -> tuple[Applicability, str | None]:
        unknown = mixed = 0
        if not (self.shapes_all_known and self.dtypes_all_float):
            ours = list(map(self.C.__getitem__, pairs))
            theirs = list(map(self.E.__getitem__, pairs.values()))
            unknown = [*map(_SHAPE_OF, ours), *map(_SHAPE_OF, theirs)].count(None)
            dtype_pairs = set(zip(map(_DTYPE_OF, ours), map(_DTYPE_OF, theirs)))
            mixed = sum(1 for a, b in dtype_pairs if a and b and (a in _FLOAT_DTYPES) != (b in _FLOAT_DTYPES))
        if mixed:
            return Applicability.unsafe, "some pairs match a float tensor with an integer one"
        if unknown:
            return Applicability.unsafe, "shapes are unknown on one side, so the mapping cannot be proven"
        rule = cand.rule
        known_prefix = (
            isinstance(rule, (StripPrefix, AddPrefix))
            or (isinstance(rule, ReplacePrefix) and cand.kind in ("extra_prefix", "missing_prefix"))
        ) and _prefix_of(rule) in knowledge.KNOWN_PREFIXES
        if len(pairs) < 2 and not cand.known and not known_prefix:
            return Applicability.display_only, "inferred from a single key: a candidate, never applied"
        if (
            isinstance(rule, ReplacePrefix)
            and not cand.known
            and not known_prefix
            and len({split_leaf(k)[0] for k in pairs}) < 2
        ):
            # one module's weight and bias are one piece of evidence: a prefix swapped on one module only
            # (``classifier.dense`` for ``pooler.dense``) may as well be another module of the same size
            return Applicability.display_only, "inferred from a single module: a candidate, never applied"
        return Applicability.safe, None


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


def _conflicts(other: Candidate, pairs: dict[str, str]) -> bool:
    inverse = {target: name for name, target in other.landing.items()}
    for name, target in pairs.items():
        mine = other.landing.get(name)
        if mine is not None and mine != target:
            return True
        theirs = inverse.get(target)
        if theirs is not None and theirs != name:
            return True
    return False


#: Separators set aside when comparing spellings: ``h-0-norm.weight`` and ``h.0.norm.weight`` read the same.
_NO_SEPARATORS: Final = str.maketrans("", "", "-_.")
