"""Whether a pairing of numbered blocks renumbers them as any renaming could: what each number of a key numbers,
and how the numbers of one name may change between the two sides."""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise, permutations
from typing import Final

from keyguard.engine._groups import HOLE, digit_template
from keyguard.engine._matching import Match

#: Separators between a name and its number (``blocks_0``, ``stage-1``).
_SEPARATORS: Final = "_-"
_TOKEN: Final = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class _Hole:
    name: str | None  # what the number numbers (``conv`` in ``conv1``, ``stages`` in ``stages.0``); None: unknown
    in_name: bool  # written into a name (``conv1``), not a block number (``stages.0``, ``blocks_0``)


def renumbers_consistently(match: Match) -> bool:
    """Each number of the checkpoint's names that numbers the same name on the model's side (``stages`` in
    ``stages.{S}`` and ``stages_{S}``, ``conv`` in ``conv{K}``) changes as a renaming could:

    - never from one value alone where the numbers below it are the same names on both sides (a lone ``norm1``
      does not become ``norm2``, a lone ``blocks.0.norm{N}`` not ``blocks.1.norm{N}``): nothing shows the shift;
    - an index written into a name on both sides maps one to one and in order (``bn1`` and ``bn2`` never trade
      places; renumbering from 1 to 0, or closing a gap, keeps the order);
    - where both sides number the same names in the same order, a block number maps one to one (pairing blocks in
      order across stages of other sizes would move a block into another stage); blocks regrouped (a flat list into
      stages, ``input_blocks.{N}`` into ``down_blocks.{i}.resnets.{j}``) change their numbers by design.

    Indices written into names that number no common name pair among themselves, in order (``blocks0.conv1`` onto
    a grid)."""
    if not match.pairs:
        return True
    # every number of the names, fixed or not in these groups' templates (a split group fixes ``norm1``)
    c_full, e_full = (digit_template(m.name)[0] for m in match.pairs[0])
    holes_c, holes_e = _holes(c_full), _holes(e_full)
    numbers = [(digit_template(cm.name)[1], digit_template(em.name)[1]) for cm, em in match.pairs]
    if any(len(ours) != len(holes_c) or len(theirs) != len(holes_e) for ours, theirs in numbers):
        return True  # the members do not share one spelling: nothing to compare index by index
    # the same names numbered in the same order on both sides: the blocks keep their structure (no regrouping)
    same_structure = [h.name for h in holes_c] == [h.name for h in holes_e] and None not in (h.name for h in holes_c)
    by_c, by_e = _by_name(holes_c), _by_name(holes_e)
    paired_c: set[int] = set()
    paired_e: set[int] = set()
    for name, p in by_c.items():
        q = by_e.get(name)
        if q is None:
            continue
        paired_c.add(p)
        paired_e.add(q)
        values = [(ours[p], theirs[q]) for ours, theirs in numbers]
        below = [h.name for h in holes_c[p + 1 :]] == [h.name for h in holes_e[q + 1 :]]
        if below and len({a for a, _ in values}) == 1 and any(a != b for a, b in values):
            return False  # numbering the same blocks the same way below: one value, changed, shows no shift
        if holes_c[p].in_name and holes_e[q].in_name:
            if not _name_index_kept(values):
                return False
        elif same_structure and not _one_to_one(values):
            return False
    named_c = [p for p, hole in enumerate(holes_c) if hole.in_name and p not in paired_c]
    named_e = [q for q, hole in enumerate(holes_e) if hole.in_name and q not in paired_e]
    if not named_c or not named_e or len(named_c) > 4 or len(named_e) > 4:
        return True

    def fits(p: int, q: int) -> bool:
        return _name_index_kept([(ours[p], theirs[q]) for ours, theirs in numbers])

    if len(named_c) <= len(named_e):
        return any(all(fits(p, q) for p, q in zip(named_c, order)) for order in permutations(named_e, len(named_c)))
    return any(all(fits(p, q) for p, q in zip(order, named_e)) for order in permutations(named_c, len(named_e)))


def _holes(full: str) -> list[_Hole]:
    """What each number of a digit template numbers: the word just before it in its segment (``conv`` in
    ``conv1``; ``blocks`` in ``blocks_0``, a block number written with a separator), else the last word of the
    segment before (``stages`` in ``stages.0``)."""
    out: list[_Hole] = []
    previous = ""
    for segment in full.split("."):
        if segment == HOLE:
            words = _TOKEN.findall(previous.replace(HOLE, " "))
            out.append(_Hole(words[-1].lower() if words else None, in_name=False))
        elif HOLE in segment:
            pieces = segment.split(HOLE)
            for stem in pieces[:-1]:
                words = _TOKEN.findall(stem)
                separated = not stem or stem[-1] in _SEPARATORS
                out.append(_Hole(words[-1].lower() if words else None, in_name=not separated))
        previous = segment
    return out


def _by_name(holes: list[_Hole]) -> dict[str, int]:
    """Hole by the name it numbers, for names that number one hole only."""
    seen: dict[str, int] = {}
    twice: set[str] = set()
    for index, hole in enumerate(holes):
        if hole.name is None:
            continue
        if hole.name in seen:
            twice.add(hole.name)
        seen[hole.name] = index
    return {name: index for name, index in seen.items() if name not in twice}


def _one_to_one(values: list[tuple[int, int]]) -> bool:
    forward: dict[int, int] = {}
    backward: dict[int, int] = {}
    return all(forward.setdefault(a, b) == b and backward.setdefault(b, a) == a for a, b in values)


def _in_order(values: list[tuple[int, int]]) -> bool:
    """One to one, and keeping the order of the indices."""
    if not _one_to_one(values):
        return False
    forward = dict(values)
    ordered = [forward[a] for a in sorted(forward)]
    return all(x < y for x, y in pairwise(ordered))


def _name_index_kept(values: list[tuple[int, int]]) -> bool:
    """One to one and in order, and the same values unless at least two of them show how they changed."""
    if not _in_order(values):
        return False
    return all(a == b for a, b in values) or len({a for a, _ in values}) >= 2
