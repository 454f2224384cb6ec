"""Numbered groups a rule lands only partly while other blocks stay open on both sides (an offset cannot be ruled
out): the suspicion, the deferral until alignment has weighed the group, and the ambiguous findings that show
every reading; and offsets contested by blocks that match as they stand."""

from __future__ import annotations

import re
from bisect import bisect_left
from itertools import filterfalse
from typing import Final

from keyguard._patterns import HOLE
from keyguard.engine._infer import Candidate
from keyguard.engine._state import EngineState, _Ambiguity
from keyguard.fixes._rules import Rule, ShiftIndex


class _Offsets(EngineState):
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

    def _ambiguous_group(
        self, cand: Candidate, doubtful: dict[str, str], templates: set[str], renamed: dict[str, str]
    ) -> None:
        """Declare a whole numbered group ambiguous: the blocks that land and those left on both sides."""
        options: dict[str, list[str]] = {}
        targets = set(doubtful.values())
        leftover_e = [e for e in self.open_e if e not in targets and self._template(e)[0] in templates]
        # the blocks left open, by template and in block order: each key is offered the nearest of them
        blocks: dict[str, list[tuple[tuple[int, ...], str]]] = {}
        for e in leftover_e:
            shape, numbers = self._template(e)
            blocks.setdefault(shape, []).append((numbers, e))
        for listed in blocks.values():
            listed.sort()
        for name in list(self.by_cur):
            new = renamed.get(name, name)
            if name in doubtful or self._template(new)[0] in templates:
                original = self.by_cur.pop(name)
                del self.cur[original]
                self.frozen.append(name)
                reading = doubtful.get(name)
                options[original] = [
                    *([reading] if reading is not None else []),
                    *_nearest(blocks, self._template(reading if reading is not None else new)),
                ]
        for choices in options.values():  # blocks offered to no key stay open: reported as missing
            self.open_e.difference_update(choices)
        self.open_e.difference_update(targets)
        self._ambiguous(
            _Ambiguity(options, [cand.rule], "other blocks of the same numbered group stay unmatched (offset?)")
        )

    def _partial_groups(self, pairs: dict[str, str], rule: Rule) -> set[str]:
        """Templates of numbered groups the rule lands partly, while other blocks of the group stay open on both
        sides (the keys it leaves judged under the rule as inferred)."""
        if len(self.open_e) <= len(pairs):
            return set()  # every open expected key lands: nothing of any group is left over
        # the keys the rule leaves, picked at C level (a keys-view difference would first copy every key)
        renamed = {n: rule.rename(n) or n for n in filterfalse(pairs.__contains__, self.by_cur)}
        landed = {self._template(e)[0] for e in pairs.values()}
        numbered = {t for t in landed if HOLE in t}
        if not numbered:
            return set()
        targets = set(pairs.values())
        left_c = {self._template(renamed.get(n, n))[0] for n in renamed} & numbered
        open_first: dict[str, set[int]] = {}
        for e in self.open_e:
            if e not in targets:
                shape, numbers = self._template(e)
                if shape in numbered:
                    open_first.setdefault(shape, set()).add(numbers[0])
        landed_first: dict[str, set[int]] = {}
        for e in targets:
            shape, numbers = self._template(e)
            if shape in numbered:
                landed_first.setdefault(shape, set()).add(numbers[0])
        suspicious = set(open_first) & left_c
        # blocks missing *before* the ones that land also suggest an offset (trailing ones: a smaller model)
        suspicious |= {t for t, low in open_first.items() if min(low) < min(landed_first.get(t, {0}))}
        return suspicious

    def _completes_deferred(self, pairs: dict[str, str]) -> bool:
        """A rule landing blocks of a group set aside as partly landing may land them after all, when with the
        set-aside rule's blocks they fill every open block of the group, one key per block and each block under its
        own numbers (``trunk.layers.1`` -> ``layers.1`` set aside while ``layers.0.attention`` -> ``layers.0.attn``
        lands the rest): no block is left for an offset to explain. The set-aside rule is then offered again."""
        touched = {self._template(t)[0] for t in pairs.values()} & self.deferred_templates
        entries = [entry for entry in self.deferred if entry[2] & touched]
        if not entries:
            return False
        targets = set(pairs.values())
        for _cand, doubtful, suspicious, _renamed in entries:
            theirs = set(doubtful.values())
            if not theirs.isdisjoint(targets):
                return False
            mine = {n: t for n, t in pairs.items() if self._template(t)[0] in suspicious}
            both = {**doubtful, **mine}
            if any(n not in self.by_cur for n in doubtful) or not theirs <= self.open_e:
                return False  # the set-aside reading changed meanwhile
            if any(self._template(n)[1] != self._template(t)[1] for n, t in both.items()):
                return False  # a block that changes its numbers: an offset is a reading
            left = {e for e in self.open_e if self._template(e)[0] in suspicious} - theirs - targets
            if left:
                return False
        for entry in entries:
            self.deferred.remove(entry)
            self.declined.discard(entry[0].identity)
        self.deferred_templates = set().union(*(entry[2] for entry in self.deferred))
        return True

    def _group_partly_resolved(self, rule: ShiftIndex) -> bool:
        """Some blocks of the group already match, or were declared ambiguous: an offset for the rest cannot be
        told from a coincidence."""
        block = re.compile(re.escape(rule.prefix) + r"[0-9]+(?:\.|$)")
        return any(
            block.match(name) for name in (*self.resolved.values(), *self.frozen) if name.startswith(rule.prefix)
        )


#: Open blocks of a doubtful numbered group offered to each of its keys: the nearest by block number. Offering
#: every open block to every key made the report (and its making) grow with the square of the group.
_NEAREST: Final = 4


def _nearest(blocks: dict[str, list[tuple[tuple[int, ...], str]]], split: tuple[str, tuple[int, ...]]) -> list[str]:
    """The open blocks of ``split``'s template nearest to its block numbers (at most ``_NEAREST``, in block order)."""
    listed = blocks.get(split[0])
    if not listed:
        return []
    at = bisect_left(listed, (split[1], ""))
    low = max(0, min(at - _NEAREST // 2, len(listed) - _NEAREST))
    return [e for _, e in listed[low : low + _NEAREST]]
