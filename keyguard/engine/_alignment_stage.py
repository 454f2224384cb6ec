"""The alignment stage: what the rule rounds left open is aligned template by template (``_align``), and every
correspondence becomes one ``remap`` rule of the plan, proven to rename exactly the keys it explains."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable
from typing import Literal

from keyguard._patterns import template as list_template
from keyguard._patterns import templates as list_templates
from keyguard.engine._align import Match, Tie, align
from keyguard.engine._groups import HOLE, Group, digit_template, split_leaf
from keyguard.engine._infer import Candidate
from keyguard.engine._state import EngineState, _Accepted, _Ambiguity, _rename_all
from keyguard.fixes._rules import Applicability, MapKeys, Remap, Rule

_OFFSET_WHY = (
    "blocks of this numbered group match as they stand while others are open: paired in order, they read otherwise"
)


class _AlignmentStage(EngineState):
    def _align(self) -> None:
        held = self._side_ordered(self.held, self.C)
        for key in held:
            self.cur[key] = key
            self.by_cur[key] = key
        self._reopen(held)
        try:
            self._contest_offsets()
            self._contest_list_heads()
            self._align_open()
        finally:
            self._match_held_by_name()

    def _contest_offsets(self) -> None:
        """A numbered family whose blocks partly match by name while others are open on both sides, at any index
        (a 1-based list, an offset of inner blocks): paired in order, the whole family may read otherwise. Where it
        does, the family is shown with both readings (KG405), the in-order one first, and neither is applied. Only
        block numbers standing alone number the list: ``pwconv1`` and ``pwconv2`` are two families."""
        if not self.by_cur or not self.open_e:
            return  # nothing open on one side: no list can read otherwise
        modules: dict[str, str] = {}  # checkpoint module contested -> the model module it reads in order
        exact_by = _by_template([key for key in self._side_ordered(self.exact, self.C) if key not in self.held])
        if not exact_by:
            return
        open_c = _by_template([name for name, original in self.by_cur.items() if name == original])
        open_e = _by_template(self._side_ordered(self.open_e, self.E))
        for shape, matched in exact_by.items():
            ours, theirs = open_c.get(shape), open_e.get(shape)
            if not ours or not theirs or HOLE not in shape:
                continue
            if not self._contest_in_order(ours, matched, theirs, modules) and shape.count(HOLE) > 1:
                # the family as a whole cannot be paired in order (another stage lost a block): its innermost
                # lists, block by block within one outer block (``stages.2.blocks.{N}``), may still
                for head in {_outer(k) for k in matched}:
                    inner_ours = [k for k in ours if _outer(k) == head]
                    inner_theirs = [k for k in theirs if _outer(k) == head]
                    if inner_ours and inner_theirs:
                        inner = [k for k in matched if _outer(k) == head]
                        self._contest_in_order(inner_ours, inner, inner_theirs, modules)
        if modules:
            self._contest_module_leaves(modules)

    def _contest_in_order(
        self, ours: list[str], matched: list[str], theirs: list[str], modules: dict[str, str]
    ) -> bool:
        """Contest one numbered list paired in order, when that reading moves a block that matches as it stands;
        ``False`` when the list cannot be paired in order (other lengths or shapes)."""
        c_keys = sorted([*ours, *matched], key=lambda k: list_template(k)[1])
        e_keys = sorted([*theirs, *matched], key=lambda k: list_template(k)[1])
        if len(c_keys) != len(e_keys):
            return False
        in_order = dict(zip(c_keys, e_keys))
        if any(self.C[c].shape != self.E[e].shape for c, e in in_order.items()):
            return False
        if all(in_order[k] == k for k in matched):
            return True  # the in-order reading keeps the matches: nothing contested
        options: dict[str, list[str]] = {}
        for key in c_keys:
            readings = [in_order[key]]
            if key in matched and key not in readings:
                readings.append(key)
            options[key] = readings
            modules[split_leaf(key)[0]] = split_leaf(in_order[key])[0]
        self._contest(ours, matched, theirs, options, _OFFSET_WHY)
        return True

    def _contest_module_leaves(self, modules: dict[str, str]) -> None:
        """The other leaves of modules whose blocks were contested (a bias whose list lost a block, so that it
        cannot be paired in order by itself) are no more certain than their weight: contested with it, the
        module's in-order reading first."""
        matched = [
            k for k in self._side_ordered(self.exact, self.C) if k not in self.held and split_leaf(k)[0] in modules
        ]
        if not matched:
            return
        ours = [n for n, o in self.by_cur.items() if n == o and split_leaf(n)[0] in modules]
        freed = set(matched)
        options: dict[str, list[str]] = {}
        for key in [*ours, *matched]:
            module, leaf = split_leaf(key)
            moved = f"{modules[module]}.{leaf}"
            readings = [moved] if moved in self.open_e or moved in freed else []
            if key in freed and key not in readings:
                readings.append(key)
            options[key] = readings
        theirs = sorted({r for rs in options.values() for r in rs if r in self.open_e})
        self._contest(ours, matched, theirs, options, _OFFSET_WHY)

    def _contest_list_heads(self) -> None:
        """A numbered list that partly matches by name while its other elements are unexpected, and the module
        holding the list misses named children of the very shapes those elements have: the list may have become
        named modules around a shorter list (``layers.0/1/2`` -> ``proj_in``, ``layers.0``, ``proj_out``), so the
        element that matches as it stands may not be the right tensor. Shown with every reading (KG405)."""
        open_c: dict[tuple[str, str, str], list[str]] = {}
        for name, original in self.by_cur.items():
            place = _list_place(name) if name == original else None
            if place is not None:
                open_c.setdefault(place, []).append(name)
        if not open_c:
            return
        lists: dict[tuple[str, str, str], list[str]] = {}
        for key in self._side_ordered(self.exact, self.C):  # in key order: a set's order follows string hashes
            place = _list_place(key) if key not in self.held else None
            if place is not None and place in open_c:
                lists.setdefault(place, []).append(key)
        if not lists:
            return
        wanted = {(parent, rest) for parent, _, rest in lists}
        sizes = {rest.count(".") + 1 for _, rest in wanted}
        named: dict[tuple[str, str], list[str]] = {}
        listed: set[tuple[str, str, str]] = set()
        for key in self._side_ordered(self.open_e, self.E):
            place = _list_place(key)
            if place is not None:
                listed.add(place)
            parts = key.split(".")
            for size in sizes:
                if len(parts) < size + 2 or parts[-size - 1].isdigit():
                    continue
                where = (".".join(parts[: -size - 1]), ".".join(parts[-size:]))
                if where in wanted:
                    named.setdefault(where, []).append(key)
        for place, matched in lists.items():
            ours = open_c[place]
            parent, _, rest = place
            theirs = named.get((parent, rest), [])
            if not theirs or place in listed:
                continue
            c_keys = sorted([*matched, *ours], key=lambda k: digit_template(k)[1])
            e_keys = [*matched, *theirs]
            if sorted(map(str, (self.C[k].shape for k in c_keys))) != sorted(
                map(str, (self.E[k].shape for k in e_keys))
            ):
                continue
            options = {
                k: [e for e in sorted(e_keys, key=lambda e: e != k) if self.E[e].shape == self.C[k].shape]
                for k in c_keys
            }
            self._contest(
                ours,
                matched,
                theirs,
                options,
                "an element of this list matches as it stands while the others are unexpected and the module"
                " misses named children of their shapes: the list may have become named modules",
            )

    def _contest(
        self, ours: list[str], matched: list[str], theirs: list[str], options: dict[str, list[str]], why: str
    ) -> None:
        """Take open checkpoint keys ``ours``, exact matches ``matched`` and open model keys ``theirs`` out of play
        and show them as one contested reading (KG405): nothing of them is applied."""
        for key in ours:
            del self.by_cur[key]
            del self.cur[key]
            self.frozen.append(key)
        for key in matched:
            del self.resolved[key]
            self.exact.discard(key)
            self.frozen.append(key)
        self.open_e.difference_update(theirs)
        self._ambiguous(_Ambiguity(options, [], why, contested=True))

    def _match_held_by_name(self) -> None:
        """Keys held out for a shape mismatch that alignment did not explain match by name again."""
        for key in self._side_ordered(self.held, self.C):
            if self.cur.get(key) == key and key in self.open_e:
                del self.cur[key]
                del self.by_cur[key]
                self.open_e.discard(key)
                self.resolved[key] = key
                self.exact.add(key)

    def _align_open(self) -> None:
        if not self.cur or not self.open_e:
            return
        position_c = {k: i for i, k in enumerate(self.C)}
        position_e = {k: i for i, k in enumerate(self.E)}
        entries_c = [(name, key, self.C[key], position_c[key]) for name, key in self.by_cur.items()]
        entries_e = [(k, k, self.E[k], position_e[k]) for k in self.E if k in self.open_e]
        contested = [*self.frozen, *(t for amb in self.ambiguities for ts in amb.keys.values() for t in ts)]
        alignment = align(
            entries_c,
            entries_e,
            anchored=self.resolved.values(),
            contested=contested,
            hints=self.hints,
            resolved={k: t for k, t in self.resolved.items() if k != t},
            shape_counts=(Counter(i.shape for i in self.C.values()), Counter(i.shape for i in self.E.values())),
        )
        by_template: dict[str, list[str]] = {}
        for name in (*self.by_cur, *self.resolved.values(), *self.frozen):
            by_template.setdefault(digit_template(name)[0], []).append(name)
        for match in sorted(alignment.matches, key=_match_order):
            self._take_match(match, by_template)
        for tie in alignment.ties:
            self._take_tie(tie)

    # ---------------------------------------------------------------------------------------------- matches
    def _take_match(self, match: Match, by_template: dict[str, list[str]]) -> None:
        names = {c.name: e.name for c, e in match.pairs}
        if any(n not in self.by_cur for n in names) or any(e not in self.open_e for e in names.values()):
            return  # an earlier match of this stage took part of it
        rule = self._remap(match, names, by_template)
        taken = set(names)
        if not set(names.values()).isdisjoint(n for n in self.by_cur if n not in taken):
            # a new name that another open key still holds: renaming in two steps would collide
            self._take_tie(Tie({self.by_cur[n]: [e] for n, e in names.items()}, "the names are swapped with others"))
            return
        index = len(self.accepted)
        kind = "renumbered" if _renumbers(rule) else "restructured"
        accepted = _Accepted(
            kind,
            [rule],
            match.applicability,
            Candidate(rule, kind),
            settled=True,
            note=match.note,
            evidence=[e.as_dict() for e in match.evidence],
            change=_change(match.checkpoint, match.expected),
        )
        originals = [self.by_cur.pop(n) for n in names]
        accepted.touched = originals
        for original in self.first_rule.keys() & set(originals):
            self.chain.setdefault(original, [self.first_rule[original]]).append(index)
        for original in originals:
            self.first_rule.setdefault(original, index)
        for original, target in zip(originals, names.values()):
            del self.cur[original]
            self.resolved[original] = target
            self.via[original] = index
            accepted.pairs[original] = target
        self.open_e.difference_update(names.values())
        for old, new in names.items():
            bucket = by_template.get(digit_template(old)[0])
            if bucket is not None and old in bucket:
                bucket.remove(old)
            by_template.setdefault(digit_template(new)[0], []).append(new)
        self.accepted.append(accepted)

    def _remap(self, match: Match, names: dict[str, str], by_template: dict[str, list[str]]) -> Remap | MapKeys:
        """The shortest rule that renames exactly ``names``: a template map taking the indices as they are (in any
        order), else one listing the index tuples it renames; a key-by-key map when neither is exact."""
        c, e = match.checkpoint, match.expected
        old = _placeholders(c.template)
        pairs = match.pairs
        sources: list[int | str] = []
        for position in range(e.holes):
            values = [em.index[position] for _, em in pairs]
            # the same position first: with one block, every index reads 0 and any position would do
            order = [position, *(i for i in range(c.holes) if i != position)] if position < c.holes else range(c.holes)
            found = next((i for i in order if all(cm.index[i] == v for (cm, _), v in zip(pairs, values))), None)
            if found is None and len(set(values)) == 1:
                sources.append(str(values[0]))  # a constant index (``fc`` -> ``fc.0``): written as it is
                continue
            if found is None:
                break
            sources.append(found)
        candidates: list[Remap] = []
        if len(sources) == e.holes:
            new = _placeholders(e.template, sources)
            candidates.append(Remap(old=old, new=new))
            listed = {",".join(map(str, cm.index)): list(cm.index) for cm, _ in pairs}
            candidates.append(Remap(old=old, new=new, indices=listed))
        explicit = {",".join(map(str, cm.index)): list(em.index) for cm, em in pairs}
        candidates.append(Remap(old=old, new=_placeholders(e.template), indices=explicit))
        pool = by_template.get(digit_template(c.members[0].name)[0], [])
        origin: Literal["inferred", "hint"] = "hint" if any(e.kind == "hint" for e in match.evidence) else "inferred"
        for rule in candidates:
            if _exact(rule, names, pool):
                return rule.model_copy(update={"applicability": match.applicability, "origin": origin})
        return MapKeys(mapping=dict(names), applicability=match.applicability, origin=origin)

    # ------------------------------------------------------------------------------------------------ values
    def _settle_by_values(self) -> None:
        """With fingerprints of both sides (``match_values``): ambiguous keys go where exactly one candidate holds
        the same bytes, and matches chosen by names become safe when every tensor is the reference's."""
        if self.values is None:
            return
        ours, theirs = self.values
        for acc in self.accepted:
            if (
                acc.settled
                and acc.applicability is Applicability.unsafe
                and acc.pairs
                and all(_same_bytes(ours(o), theirs(t)) for o, t in acc.pairs.items())
            ):
                acc.applicability = Applicability.safe
                acc.note = None
                acc.evidence.append({"kind": "values", "detail": "every tensor holds the reference's bytes"})
        for amb in list(self.ambiguities):
            decided: dict[str, str] = {}
            for original, targets in amb.keys.items():
                digest = ours(original)
                same = [
                    t for t in targets if _same_bytes(digest, theirs(t)) and self.C[original].shape == self.E[t].shape
                ]
                if len(same) == 1:
                    decided[original] = same[0]
            taken = Counter(decided.values())
            decided = {o: t for o, t in decided.items() if taken[t] == 1}
            # a key that keeps its name there (a stale copy, left unexpected) would collide with the decided one:
            # the report says whose bytes they are, the choice stays the user's
            staying = {o for o in amb.keys if o not in decided} | set(self.by_cur)
            collide = {o: t for o, t in decided.items() if o != t and t in staying}
            if collide:
                owners = ", ".join(f"{t} holds the bytes of {o}" for o, t in list(collide.items())[:3])
                amb.why += f"; by the reference's values, {owners}"
                decided = {o: t for o, t in decided.items() if o not in collide}
            if decided:
                self._take_by_values(amb, decided)

    def _take_by_values(self, amb: _Ambiguity, decided: dict[str, str]) -> None:
        rules = [r for acc in self.accepted for r in acc.rules]
        released = {t for ts in amb.keys.values() for t in ts} - set(decided.values())
        moved: dict[str, str] = {}
        for original, target in decided.items():
            name = _rename_all(rules, [original]).get(original, original)
            if name in self.frozen:
                self.frozen.remove(name)
            self.exact.discard(target)
            self.resolved[original] = target
            self.claimed.discard(target)
            if original == target:
                self.exact.add(original)  # the match as it stands holds the reference's bytes
            else:
                moved[name] = target
                self.via[original] = len(self.accepted)
        for original in [o for o in amb.keys if o not in decided]:
            name = _rename_all(rules, [original]).get(original, original)
            if name in self.frozen:
                self.frozen.remove(name)
            self.cur[original] = name  # no candidate holds its bytes: unexpected, reported as such
            self.by_cur[name] = original
        for target in released:
            self.claimed.discard(target)
        self._reopen(target for target in released if target not in self.resolved.values())
        self.ambiguities.remove(amb)
        if moved:
            rule = MapKeys(mapping=moved, applicability=Applicability.safe)
            accepted = _Accepted(
                "restructured",
                [rule],
                Applicability.safe,
                Candidate(rule, "restructured"),
                settled=True,
                evidence=[{"kind": "values", "detail": "the only candidate holding the same bytes"}],
                change=("ambiguous keys", "the candidates holding their bytes", "decided by the reference's bytes"),
            )
            accepted.pairs = {o: t for o, t in decided.items() if o != t}
            accepted.touched = list(accepted.pairs)
            self.accepted.append(accepted)

    # ------------------------------------------------------------------------------------------------- ties
    def _take_tie(self, tie: Tie) -> None:
        options: dict[str, list[str]] = {}
        for original, targets in tie.options.items():
            name = self.cur.get(original)
            if name is None or name not in self.by_cur:
                continue
            open_targets = [t for t in targets if t in self.open_e]
            if not open_targets:
                continue
            options[original] = open_targets
        if not options:
            return
        for original in options:
            name = self.cur.pop(original)
            del self.by_cur[name]
            self.frozen.append(name)
        for targets in options.values():
            self.open_e.difference_update(targets)
        self._ambiguous(_Ambiguity(options, [], tie.why))


def _list_place(key: str) -> tuple[str, str, str] | None:
    """Where a key sits in its innermost numbered list: (the module holding the list, the list's name, what follows
    the index), e.g. ``('head.mlp', 'layers', 'weight')`` for ``head.mlp.layers.2.weight``."""
    parts = key.split(".")
    for position in range(len(parts) - 2, 0, -1):
        if parts[position].isdigit():
            return ".".join(parts[: position - 1]), parts[position - 1], ".".join(parts[position + 1 :])
    return None


def _exact(rule: Remap, names: dict[str, str], pool: Iterable[str]) -> bool:
    """The rule renames every key of ``names`` to its target and nothing else among ``pool``."""
    for name, target in names.items():
        if rule.rename(name) != target:
            return False
    return all(rule.rename(other) is None for other in pool if other not in names)


def _placeholders(template: str, sources: list[int | str] | None = None) -> str:
    """A digit template written for ``Remap``: braces doubled, the i-th hole as ``{i}``, or as the old position
    ``{sources[i]}``, or as a literal number where ``sources[i]`` is one (a constant index)."""
    pieces = template.replace("{", "{{").replace("}", "}}").split(HOLE)
    out = [pieces[0]]
    for position, piece in enumerate(pieces[1:]):
        source = sources[position] if sources is not None else position
        out.append(source if isinstance(source, str) else "{" + str(source) + "}")
        out.append(piece)
    return "".join(out)


def _readable(template: str) -> list[str]:
    return template.replace(HOLE, "{N}").split(".")


def _change(c: Group, e: Group) -> tuple[str, str, str]:
    """What changed, as people say it: ``(old, new, text)``, the module paths without a shared leaf, and a phrase
    naming each edit (``in 12 blocks `attention.wq` became `self_attn.q_proj`, `model.` added in front``)."""
    a, b = _readable(c.template), _readable(e.template)
    if len(a) > 1 and len(b) > 1 and a[-1] == b[-1]:
        a, b = a[:-1], b[:-1]
    edits: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        old, new = ".".join(a[i1:i2]), ".".join(b[j1:j2])
        if op == "replace":
            edits.append(f"`{old}` became `{new}`")
        elif op == "delete":
            edits.append(f"`{old}` removed")
        elif op == "insert":
            edits.append(f"`{new}.` added in front" if i1 == 0 else f"`{new}` inserted")
    blocks = c.size if c.holes and c.size > 1 else 0
    text = (f"in {blocks} blocks " if blocks else "") + ", ".join(edits or ["renamed"])
    return ".".join(a), ".".join(b), text


def _match_order(match: Match) -> int:
    return match.checkpoint.members[0].order


def _renumbers(rule: Rule) -> bool:
    """True when the rule gives keys other indices than they have (not just other names)."""
    if not isinstance(rule, Remap) or rule.indices is None:
        return False
    return any(old != ",".join(map(str, new)) for old, new in rule.indices.items())


def _same_bytes(a: bytes | None, b: bytes | None) -> bool:
    return a is not None and a == b


def _outer(key: str) -> tuple[int, ...]:
    """The block numbers of a key but its innermost one: which outer block its list belongs to."""
    return list_template(key)[1][:-1]


def _by_template(keys: list[str]) -> dict[str, list[str]]:
    """Keys grouped by their list template (standalone block numbers), templates found in bulk."""
    out: dict[str, list[str]] = {}
    for key, shape in zip(keys, list_templates(keys)):
        out.setdefault(shape, []).append(key)
    return out
