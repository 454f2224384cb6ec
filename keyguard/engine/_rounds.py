"""Rule inference in rounds: prefix, segment and index-shift candidates voted, screened, accepted (what may
still contest a rule is in ``_doubts``)."""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable
from itertools import compress, filterfalse

from keyguard.engine import _knowledge as knowledge
from keyguard.engine._doubts import _Doubts
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
    _Accepted,
    _Ambiguity,
    _code,
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


class _Rounds(_Doubts):
    def _round(self) -> bool:
        self.endings = {}  # open expected keys change between rounds
        names = list(self.by_cur)
        expected = list(self.E) if len(self.open_e) == len(self.E) else [k for k in self.E if k in self.open_e]
        candidates = [
            # names is list(by_cur): its keys are the same set, asked in place of a copy (nothing renames meanwhile)
            *prefix_candidates(names, self.by_cur.keys(), expected, self.open_e),
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
            evaluate(cand, names, self.open_e, expected)  # expected: the open expected keys in the model's order
        evaluated = self._open_state()  # open_e as the landings saw it
        # most landings first; a candidate landing exactly like one already scored shares its support
        by_size = sorted(contenders, key=lambda c: -len(c.landing))
        for cand in by_size:
            if not cand.landing:
                break
            twin = next(
                ((s, o) for s, o in scored if len(o.landing) == len(cand.landing) and o.landing == cand.landing), None
            )
            if twin is not None:
                support, cand.differ = twin[0], twin[1].differ
            else:
                support = self._support(cand)
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
            if (
                rivals
                and isinstance(cand.rule, ShiftIndex)
                and all(isinstance(r.rule, ShiftIndex) and r.rule.prefix == cand.rule.prefix for r in rivals)
                and self._group_partly_resolved(cand.rule)
            ):
                # offsets tie while blocks of the group match as they stand: those matches are no more certain
                # than either offset, so the whole group is contested, the blocks paired in order first
                self._contest_shift(cand.rule, pairs)
                progress = True
                break  # keys and targets left play: re-generate candidates from what is left
            if rivals and not (cand.known and not any(r.known for r in rivals)):
                self._record_tie(cand, rivals, pairs, taken_c, taken_e, scored)
                progress = True
                continue
            pairs = self._carve_contested(cand, pairs, scored, taken_c, taken_e)
            if not pairs:
                progress = True
                continue
            if self._accept(cand, pairs, shapes_agree=support == len(cand.landing), evaluated=evaluated):
                progress = True
                break  # names changed: re-generate candidates from what is left
        return progress

    def _lookahead(self, names: list[str], expected: list[str]) -> bool:
        """When no rule lands a key, take a prefix step after which a segment rule lands some (two edits at once)."""
        for step in near_prefix_candidates(names, expected, self.open_e):
            evaluate(step, names, self.open_e)
            renamed = _rename_all([step.rule], step.renamed)
            if not renamed or len(set(renamed.values())) != len(renamed):
                continue
            if not set(renamed.values()).isdisjoint(filterfalse(renamed.__contains__, self.by_cur)):
                continue
            if self._renames_resolved(step.rule):
                continue
            moved = [renamed.get(n, n) for n in names]
            followers = segment_candidates(moved, expected)
            for follower in followers:
                evaluate(follower, moved, self.open_e)
            if not any(f.landing for f in followers):
                continue
            back = {new: name for name, new in renamed.items()}
            landed = {back.get(n, n): t for f in followers for n, t in f.landing.items()}
            if self._leaves_its_part(step, landed) or self._drops_an_index(step, landed):
                continue  # the step's doubts, judged on what it leads to
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

    def _support(self, cand: Candidate) -> int:
        """How many landing pairs have compatible shapes (equal, or unknown on a side); C-level over columns. The
        pairs differing in shape or dtype go to ``cand.differ``: the findings need that of every pair a rule lands."""
        landing = cand.landing
        # until a rule leaves a key renamed but open (recorded in first_rule), every open key has its own name
        originals = list(map(self.by_cur.__getitem__, landing)) if self.first_rule else landing
        # both sides in one order (every key of each, paired in turn): their tables are read in order, without a
        # lookup per key (on millions of keys each lookup misses the cache)
        if len(landing) == len(self.C) and all(map(operator.is_, originals, self.C)):
            ours_info = list(self.C.values())
        else:
            ours_info = list(map(self.C.__getitem__, originals))
        if len(landing) == len(self.E) and all(map(operator.eq, landing.values(), self.E)):
            theirs_info = list(self.E.values())
        else:
            theirs_info = list(map(self.E.__getitem__, landing.values()))
        ours = list(map(_SHAPE_OF, ours_info))
        theirs = list(map(_SHAPE_OF, theirs_info))
        equal: int = sum(map(operator.eq, ours, theirs))
        if equal == len(ours) and self.one_dtype:
            cand.differ = []  # equal shapes, and one dtype on both sides
            return equal
        if None in ours or None in theirs:
            equal += sum(1 for a, b in zip(ours, theirs) if (a is None or b is None) and a != b)
        differ = map(  # as _Findings._pair_findings asks it: shapes or dtypes unequal (None included)
            operator.or_,
            map(operator.ne, ours, theirs),
            map(operator.ne, map(_DTYPE_OF, ours_info), map(_DTYPE_OF, theirs_info)),
        )
        cand.differ = list(compress(originals, differ))
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

    def _open_state(self) -> tuple[int, int, int]:
        """What tells that ``open_e`` still holds what it held: the same set, as large, nothing put back since."""
        return id(self.open_e), len(self.open_e), self.reopened

    def _accept(
        self,
        cand: Candidate,
        pairs: dict[str, str],
        *,
        shapes_agree: bool = False,
        evaluated: tuple[int, int, int] | None = None,
    ) -> bool:
        """Take the rule (or its narrowed form) unless a doubt declines it; ``shapes_agree``: every key it lands has
        the shape of its target (the round counted them), so no reading by shapes can contest it; ``evaluated``:
        ``_open_state()`` when the candidate was evaluated."""
        if isinstance(cand.rule, ShiftIndex) and self._group_partly_resolved(cand.rule):
            # part of the numbered group already matches by name: an offset cannot be told from a coincidence
            self._contest_shift(cand.rule, pairs)
            return True
        rules = self._narrow(cand, pairs)
        narrowed_rename = isinstance(cand.rule, Rename) and any(isinstance(r, MapKeys) for r in rules)
        # narrowed rules rename a subset of what the candidate renames
        if rules == [cand.rule] and len(cand.renamed) == len(cand.targets):
            # evaluate() already renamed every key; when all of them land, that is the landing (a copy: it is edited)
            landing = cand.landing
            from_landing = len(landing) == len(cand.renamed)
            renamed = dict(landing) if from_landing else dict(zip(cand.renamed, cand.targets))
            if self.frozen:
                renamed = {n: t for n, t in renamed.items() if n in self.by_cur}
        else:
            from_landing = False
            renamed = _rename_all(rules, [n for n in cand.renamed if n in self.by_cur])
        if self._splits_siblings(cand, renamed):
            # the rule lands some children of a module and leaves their siblings elsewhere: two readings of one
            # module (``encoder.patch_embeddings.0.norm`` -> ``stages.0.norm`` while its ``proj`` sibling needs
            # ``stages.0.patch_embeddings.proj``). Template alignment weighs the module as a whole instead.
            self.declined.add(cand.identity)
            return False
        if self._leaves_its_part(cand, pairs) or self._drops_an_index(cand, pairs):
            # keys leaving a part the model has, or a number thrown away where it may say the block: alignment
            # weighs these against the other readings
            self.declined.add(cand.identity)
            return False
        if not cand.known and not self._on_every_key(cand.rule) and self._spelled_by_another(pairs):
            # a target that another open key of the checkpoint spells the same way, up to separators and case
            # (``h-0-norm.weight`` for ``h.0.norm.weight``): that key is the better claimant. Alignment weighs both
            self.declined.add(cand.identity)
            return False
        # a stripped prefix leaves each target the whole tail of its key (pairs come from the rule's own landing):
        # _lookalikes would find exactly that, in a pass over every pair
        alike = self._lookalikes(pairs) if not isinstance(cand.rule, StripPrefix) else {}
        if alike:
            # a key lands where another open key of the model looks just as right (``attentions.0.output.dense``
            # onto ``blocks.0.output.dense`` while ``blocks.0.attention.output.dense`` is as open, as shaped, and
            # ends alike): not this rule's to decide. Alignment weighs them; what it leaves is shown with both
            self.declined.add(cand.identity)
            self.lookalikes.append({self.by_cur[n]: targets for n, targets in alike.items()})
            return False
        if self._outweighed(renamed) or (not shapes_agree and self._reordered(renamed)):
            # most of what the rule renames either collides with keys that match as they stand or lands on other
            # shapes: the few keys it lands are no reading of their own. Alignment weighs them instead
            self.declined.add(cand.identity)
            return False
        self._contest_exact(cand, renamed)
        # a rename onto a name another open or resolved key keeps, or two renames onto one name, would lose a tensor
        # (keys held for a shape mismatch are not in either table, and the check below never looked at them). One
        # prefix rule renames distinct names to distinct names (the tails differ); renaming every open name with
        # nothing resolved, no open or resolved key keeps a name: then the set of new names would tell nothing
        injective = len(rules) == 1 and isinstance(rules[0], (StripPrefix, ReplacePrefix))
        if not (injective and len(renamed) >= len(self.by_cur) and not self.resolved):
            new_names = set(renamed.values())
            if (
                len(new_names) != len(renamed)
                # (renamed is a subset of the open names: when it holds them all, no other key keeps a name)
                or (
                    len(renamed) < len(self.by_cur)
                    and not new_names.isdisjoint(filterfalse(renamed.__contains__, self.by_cur))
                )
                or not new_names.isdisjoint(self.resolved.values())
            ):
                rules = [MapKeys(mapping=dict(pairs))]
                renamed, from_landing = dict(pairs), True
        if any(self._renames_resolved(rule) for rule in rules):
            rules = [MapKeys(mapping=dict(pairs))]
            renamed, from_landing = dict(pairs), True
        # judge the group with the rule as inferred, before narrowing: a scope must not hide the group's other blocks
        suspicious = self._partial_groups(pairs, cand.rule)
        if suspicious:
            # part of a numbered group lands while other blocks of the same group stay unmatched on both sides:
            # the block numbers may be offset, so the blocks that land could be the wrong ones. The rule is not
            # taken; template alignment weighs the whole group first, and what it leaves is shown with this reading
            doubtful = {n: e for n, e in pairs.items() if self._template(e)[0] in suspicious}
            self.deferred.append((cand, doubtful, suspicious, renamed))
            self.declined.add(cand.identity)
            self.deferred_templates |= suspicious  # no weaker rule may land this group piecemeal meanwhile
            return False
        if (
            self.deferred_templates
            and any(self._template(e)[0] in self.deferred_templates for e in pairs.values())
            and not self._completes_deferred(pairs)
        ):
            self.declined.add(cand.identity)
            return False
        index = len(self.accepted)
        accepted = _Accepted(cand.kind, rules, Applicability.safe, cand)
        # move the renamed keys in bulk (C-level maps): this runs once per rule over up to every key
        if not self.first_rule and len(renamed) == len(self.by_cur):
            # renamed holds open names only, here all of them; while no rule left a key renamed but open, every open
            # key has its own name (by_cur maps each name to itself): the originals are the names, and by_cur
            # empties (the keys renamed without landing are put back below)
            originals = list(renamed)
            self.by_cur = {}
        else:
            originals = list(map(self.by_cur.pop, renamed))
        accepted.touched = originals
        if self.first_rule:
            for original in self.first_rule.keys() & set(originals):  # renamed before: now a chain of rules
                self.chain.setdefault(original, [self.first_rule[original]]).append(index)
        news = list(renamed.values())
        if from_landing and cand.lands_all_open and evaluated is not None and self._open_state() == evaluated:
            # every target was an open expected key when evaluated, and open_e holds what it held then: all land
            lands = [True]
        else:
            lands = list(map(self.open_e.__contains__, news))
        if all(lands):  # the usual case on large inputs: every renamed key lands (C-level, no per-key Python)
            # while no rule left a key renamed but open, every open key has its own name: renamed is the landing
            landed, stays = (dict(zip(originals, news)) if self.first_rule else renamed), {}
        else:
            landed = dict(compress(zip(originals, news), lands))
            stays = dict(compress(zip(originals, news), map(operator.not_, lands)))
        if len(landed) == len(self.cur):
            self.cur = {}  # every open key landed (each landed key was open)
        else:
            deque(map(self.cur.__delitem__, landed), maxlen=0)
        if len(landed) == len(self.open_e):
            self.open_e = set()  # every open expected key landed (each landed target was open)
        else:
            self.open_e.difference_update(landed.values())
        if self.resolved:
            self.resolved.update(landed)
        else:
            self.resolved = dict(landed)
        if self.via:
            self.via.update(dict.fromkeys(landed, index))
        else:
            self.via = dict.fromkeys(landed, index)
        accepted.pairs = landed
        if from_landing and cand.differ is not None:
            # renamed holds pairs of the candidate's landing only (pairs are taken from it), so every landed pair
            # is one _support compared: its differing pairs are this rule's
            accepted.differ = cand.differ
        # a key that lands leaves play (no later rule renames it): only the keys that stay open may start a chain
        for original in stays:
            self.first_rule.setdefault(original, index)
        self.cur.update(stays)
        self.by_cur.update(zip(stays.values(), stays))
        if narrowed_rename:
            accepted.applicability = Applicability.unsafe
            accepted.note = "the rename also matches keys that are already right, so it is applied key by key"
        self.accepted.append(accepted)
        return True

    def _finalize(self) -> None:
        """Settle each rule's applicability on all the keys it helped map, then let no rule be more applicable
        than an earlier rule the same keys depend on (a plan applies them in order)."""
        helped = self._helped(lambda index, chain: True)
        for index, acc in enumerate(self.accepted):
            acc.helped = len(helped[index])
        # a rule is judged on every key it helped map (a key that would meet a tensor of another kind lowers it
        # wherever it lands), then on the keys a plan of its level would land with it: a key reached through several
        # rules counts there only while the others are as applicable (a rule the safe plan leaves out proves nothing
        # for the rules before it). Judging only ever lowers a rule, so this settles
        self._judge(helped)
        while self.chain and self._judge(self._helped(self._as_applicable)):
            pass
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

    def _judge(self, evidence: dict[int, dict[str, str]]) -> bool:
        """Lower each rule not settled by its stage to what ``evidence`` (its pairs, by rule index) supports;
        whether any was lowered."""
        lowered = False
        for index, acc in enumerate(self.accepted):
            if acc.settled:
                continue
            level, note = self._applicability(acc.candidate, evidence[index])
            if level.rank < acc.applicability.rank:
                acc.applicability, acc.note = level, note
                lowered = True
        return lowered

    def _as_applicable(self, index: int, chain: list[int]) -> bool:
        """Every rule of ``chain`` is at least as applicable as rule ``index``."""
        rank = self.accepted[index].applicability.rank
        return all(self.accepted[j].applicability.rank >= rank for j in chain)

    def _helped(self, counts: Callable[[int, list[int]], bool]) -> dict[int, dict[str, str]]:
        """Each accepted rule's pairs, with the keys that reached their target through it and later rules (a
        ``chain``) where ``counts(rule index, chain)``."""
        chained: dict[int, dict[str, str]] = {}
        for original, chain in self.chain.items():
            if original in self.resolved:
                for index in chain[:-1]:
                    if counts(index, chain):
                        chained.setdefault(index, {})[original] = self.resolved[original]
        return {
            index: {**acc.pairs, **chained[index]} if index in chained else acc.pairs
            for index, acc in enumerate(self.accepted)
        }

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
