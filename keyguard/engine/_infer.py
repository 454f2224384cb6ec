"""Inferring rewrite rules from unmatched keys.

Candidate rules are generated from a sample of the unmatched keys (so the cost does not grow with the square of
the key count) and from their templates (numbered blocks collapsed, so a 94,000-key adapter is a few dozen
templates), then each candidate is evaluated on every unmatched key. The caller keeps the rules that explain groups
consistently.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Final

from keyguard._patterns import HOLE, KeyGroup, collapse, template, templates
from keyguard.engine._knowledge import INFIX_WRAPPERS, KNOWN_RENAMES, PEFT_ADAPTER_SEGMENTS, is_known_rename
from keyguard.engine._segments import anywhere_rule, segment_rule
from keyguard.fixes._rules import (
    AddPrefix,
    MapKeys,
    Remap,
    RemoveSegment,
    Rename,
    ReplacePrefix,
    ShiftIndex,
    StripPrefix,
)

RenameRule = StripPrefix | AddPrefix | ReplacePrefix | Rename | ShiftIndex | Remap | RemoveSegment | MapKeys

SAMPLE: Final = 400  # keys per side used to generate candidates
MAX_PREFIX_DEPTH: Final = 4  # segments a prefix may span
MAX_CANDIDATES: Final = 24  # candidates evaluated on every key per round


@dataclass
class Candidate:
    """A candidate rule and the evidence for it."""

    rule: RenameRule
    kind: str
    known: bool = False
    votes: int = 0
    general: bool = False  # a context-free rule: preferred over a contextual one that explains the same keys
    # filled by evaluate(): current checkpoint name -> expected key, for names that land on an open expected key
    landing: dict[str, str] = field(default_factory=dict)
    renamed: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # the new name of each renamed key, in the same order
    # filled by _Rounds._support: original keys of landing pairs that differ in shape or dtype (None: not checked)
    differ: list[str] | None = None
    # set by evaluate(): the targets were every open expected key, in order (each name landed, none looked up)
    lands_all_open: bool = False

    @property
    def identity(self) -> str:
        return repr(self.rule)  # every field, in order: equal rules, equal identities

    @property
    def complexity(self) -> int:
        """Smaller is simpler: fewer characters changed."""
        r = self.rule
        if isinstance(r, StripPrefix):
            return len(r.prefix)
        if isinstance(r, AddPrefix):
            return len(r.prefix)
        if isinstance(r, ReplacePrefix):
            return len(r.old) + len(r.new)
        if isinstance(r, Rename):
            return len(r.old) + len(r.new) + 10
        return 20


def sample(items: Sequence[str], size: int = SAMPLE) -> list[str]:
    """An evenly spread, deterministic sample."""
    if len(items) <= size:
        return list(items)
    step = len(items) / size
    return [items[int(i * step)] for i in range(size)]


def _dots(key: str, limit: int = MAX_PREFIX_DEPTH) -> list[int]:
    found: list[int] = []
    start = 0
    while len(found) < limit:
        pos = key.find(".", start)
        if pos < 0:
            break
        found.append(pos)
        start = pos + 1
    return found


def prefix_candidates(
    names: Sequence[str], open_names: AbstractSet[str], expected: Sequence[str], open_expected: set[str]
) -> list[Candidate]:
    """Strip, add and replace prefix candidates, voted for by sampled keys."""
    votes: Counter[tuple[str, str, str]] = Counter()
    sampled = sample(names)
    suffixes: dict[str, list[str]] = {}
    for name in sampled:
        for dot in _dots(name):
            rest = name[dot + 1 :]
            if rest in open_expected:
                votes["strip", name[: dot + 1], ""] += 1
            if "." in rest:
                suffixes.setdefault(rest, []).append(name[: dot + 1])
    for key in sample(expected):
        for dot in _dots(key):
            rest = key[dot + 1 :]
            if rest in open_names:
                votes["add", key[: dot + 1], ""] += 1
    best = max(votes.values(), default=0)
    if suffixes and best < 0.9 * len(sampled):
        # replace: both sides lose a prefix; scan the open expected keys for the sampled names' suffixes
        # (skipped when stripping or adding a prefix already explains nearly the whole sample)
        pool = expected if len(expected) <= 50_000 else sample(expected, 20_000)
        for key in pool:
            for dot in _dots(key):
                olds = suffixes.get(key[dot + 1 :])
                if olds:
                    new = key[: dot + 1]
                    for old in olds:
                        if old != new:
                            votes["replace", old, new] += 1
    out: list[Candidate] = []
    per_block = _PerBlock(sampled)
    for (op, a, b), count in votes.most_common(MAX_CANDIDATES):
        if (op != "add" and per_block(a)) or per_block(a if op == "add" else b, expected_side=True):
            continue  # a prefix that singles out one numbered block is an index edit, not a prefix
        if op == "strip":
            out.append(Candidate(StripPrefix(prefix=a), "extra_prefix", votes=count))
        elif op == "add":
            out.append(Candidate(AddPrefix(prefix=a), "missing_prefix", votes=count))
        elif a.endswith(b):
            out.append(Candidate(ReplacePrefix(old=a, new=b), "extra_prefix", votes=count))
        elif b.endswith(a):
            out.append(Candidate(ReplacePrefix(old=a, new=b), "missing_prefix", votes=count))
        else:
            out.append(Candidate(ReplacePrefix(old=a, new=b), "replaced_prefix", votes=count))
    return out


class _PerBlock:
    """Tells whether a prefix ends inside a numbered group, naming one block of several."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = names

    def __call__(self, prefix: str, expected_side: bool = False) -> bool:
        shape, numbers = template(prefix.rstrip("."))
        if not numbers:
            return False
        if expected_side:
            return True  # a prefix to add or substitute that names a block number is a guess about the blocks
        head = shape.split(HOLE, 1)[0]
        depth = head.count(".")
        seen = {n.split(".")[depth] for n in self.names if n.startswith(head) and n.count(".") > depth}
        return len(seen) > 1


def near_prefix_candidates(
    names: Sequence[str], expected: Sequence[str], open_expected: set[str], *, limit: int = 200_000
) -> list[Candidate]:
    """Prefix candidates that bring names one segment edit away from expected keys (nothing lands yet).

    Used when no single rule lands any key: e.g. an adapter whose keys have a doubled ``base_model.model.`` *and*
    lack PEFT's adapter name needs a strip and an insertion before anything matches.
    """
    near: set[str] = set()
    for key in expected[:limit]:
        parts = key.split(".")
        for p in range(1, len(parts)):
            near.add(".".join(parts[:p] + parts[p + 1 :]))
    votes: Counter[tuple[str, str]] = Counter()
    for name in sample(names):
        for dot in _dots(name):
            rest = name[dot + 1 :]
            if rest in near:
                votes["strip", name[: dot + 1]] += 1
                continue
            parts = rest.split(".")
            if any(".".join(parts[:p] + parts[p + 1 :]) in open_expected for p in range(1, len(parts))):
                votes["strip", name[: dot + 1]] += 1
    out: list[Candidate] = []
    for (_, prefix), count in votes.most_common(4):
        out.append(Candidate(StripPrefix(prefix=prefix), "extra_prefix", votes=count))
    return out


def segment_candidates(names: Sequence[str], expected: Sequence[str]) -> list[Candidate]:
    """Renamed, inserted and removed segments, found by comparing templates segment by segment."""
    c_templates = Counter(templates(sample(names, 4 * SAMPLE)))
    e_templates = Counter(templates(sample(expected, 4 * SAMPLE)))
    masked: dict[tuple[int, tuple[str, ...]], list[tuple[str, ...]]] = {}
    removed: dict[tuple[str, ...], list[tuple[tuple[str, ...], int]]] = {}
    e_split = {t: tuple(t.split(".")) for t in e_templates}
    e_set = set(e_split.values())
    for parts in e_split.values():
        for p in range(len(parts)):
            rest = parts[:p] + parts[p + 1 :]
            masked.setdefault((p, rest), []).append(parts)
            removed.setdefault(rest, []).append((parts, p))
    votes: Counter[tuple[str | None, str, str, str | None]] = Counter()
    for tc, weight in c_templates.items():
        parts = tuple(tc.split("."))
        for p in range(len(parts)):
            rest = parts[:p] + parts[p + 1 :]
            for te in masked.get((p, rest), ()):  # one segment renamed
                old, new = parts[p], te[p]
                if HOLE in (old, new):
                    continue
                votes[_left(parts, p), old, new, _right(parts, p + 1)] += weight
            if rest in e_set and parts[p] != HOLE:  # one segment removed on the expected side
                votes[_left(parts, p), parts[p], "", _right(parts, p + 1)] += weight
        for te, p in removed.get(parts, ()):  # one segment inserted on the expected side
            if te[p] != HOLE:
                votes[_left(te, p), "", te[p], _right(te, p + 1)] += weight
    out: list[Candidate] = []
    for (left, old, new, right), count in votes.most_common(MAX_CANDIDATES):
        if left is None and right is None:
            continue
        known = is_known_rename(old, new) or (left in PEFT_ADAPTER_SEGMENTS and (old == "" or new == ""))
        out.append(Candidate(segment_rule(left, old, new, right), "renamed", known=known, votes=count))
    for old, new in KNOWN_RENAMES.items():
        for a, b in ((old, new), (new, old)):
            if any(a in t.split(".") for t in c_templates) and any(b in t.split(".") for t in e_templates):
                out.append(Candidate(anywhere_rule(a, b), "renamed", known=True, votes=1, general=True))
    for wrapper in INFIX_WRAPPERS:  # one rule for a wrapper inside every layer, not one per following segment
        inside = any(wrapper in t.split(".")[1:] for t in c_templates)  # only in front: a prefix strip says it
        if inside and not any(wrapper in t.split(".") for t in e_templates):
            out.append(Candidate(RemoveSegment(segment=wrapper), "renamed", known=True, votes=1, general=True))
    return out


def _left(parts: tuple[str, ...], position: int) -> str | None:
    return parts[position - 1] if position > 0 else None


def _right(parts: tuple[str, ...], end: int) -> str | None:
    return parts[end] if end < len(parts) else None


def shift_candidates(names: Sequence[str], expected: Sequence[str]) -> list[Candidate]:
    """Constant offsets of the first block index in templates found on both sides."""
    c_first: dict[str, set[int]] = {}
    e_first: dict[str, set[int]] = {}
    for pool, target in ((sample(names, 4 * SAMPLE), c_first), (sample(expected, 4 * SAMPLE), e_first)):
        if any(HOLE in key for key in pool):  # a NUL inside a key: its template as ``template`` gives it
            for key in pool:
                shape, numbers = template(key)
                if numbers:
                    target.setdefault(shape, set()).add(numbers[0])
        else:  # the same, in bulk
            groups: list[KeyGroup[None]] = collapse(pool)
            target.update((group.template, group.numbers[0]) for group in groups if group.numbers)
    out: list[Candidate] = []
    for shape, c_numbers in c_first.items():
        e_numbers = e_first.get(shape)
        if not e_numbers:
            continue
        # every offset that puts the first checkpoint block on some expected block; when several explain the
        # group equally well (blocks dropped at either end), the caller reports a tie instead of guessing
        low = min(c_numbers)
        offsets = sorted({e - low for e in e_numbers} - {0}, key=abs)[:16]
        prefix = shape.split(HOLE, 1)[0]
        for offset in offsets:
            out.append(Candidate(ShiftIndex(prefix=prefix, offset=offset), "index_shift", votes=len(c_numbers)))
    unique: dict[str, Candidate] = {}
    for cand in out:
        unique.setdefault(cand.identity, cand)
    return list(unique.values())


def _strips_onto(names: Sequence[str], targets: Sequence[str], cut: int) -> bool:
    """Whether each name (each starts with the same ``cut`` characters) is those characters then its target: as
    long as both and ending with it, compared without slicing a name."""
    return (
        len(names) == len(targets)
        and all(map(str.endswith, names, targets))
        and all(map(operator.eq, map(len, names), map(operator.add, map(len, targets), repeat(cut))))
    )


def evaluate(
    cand: Candidate, names: Sequence[str], open_expected: set[str], ordered: Sequence[str] | None = None
) -> None:
    """Apply the candidate to every open checkpoint name; record what it renames and where names land.

    ``ordered``: the open expected keys in the model's order, when the caller has them. A prefix rule renaming the
    names into exactly that sequence (both sides list their keys in one order, as a model saved and its own keys
    do) lands every name without a lookup per name: on millions of keys those lookups miss the cache each time.
    """
    rule = cand.rule
    renamed: list[str] = []
    targets: list[str] = []
    landing: dict[str, str] = {}
    cand.lands_all_open = False
    if isinstance(rule, (StripPrefix, ReplacePrefix)):  # the common case, in bulk with C-level maps
        old = rule.prefix if isinstance(rule, StripPrefix) else rule.old
        prepend = "" if isinstance(rule, StripPrefix) else rule.new
        renamed = list(compress(names, map(str.startswith, names, repeat(old))))
        if not prepend and ordered is not None and _strips_onto(renamed, ordered, len(old)):
            # every name is the prefix then the open expected key in its turn: those keys are the targets (no new
            # string per name: on a large checkpoint, memory first touched costs more than the work on it)
            targets = list(ordered)
            landing = dict(zip(renamed, targets))
            cand.lands_all_open = True
        else:
            tails: list[str] = list(map(operator.getitem, renamed, repeat(slice(len(old), None))))
            targets = list(map(prepend.__add__, tails)) if prepend else tails
            if ordered is not None and len(targets) == len(ordered) and all(map(operator.eq, targets, ordered)):
                landing = dict(zip(renamed, targets))  # the open expected keys, in order: every name lands
                cand.lands_all_open = True
            else:
                landing = dict(compress(zip(renamed, targets), map(open_expected.__contains__, targets)))
    else:
        for k in names:
            target = rule.rename(k)
            if target is not None:
                renamed.append(k)
                targets.append(target)
                if target in open_expected:
                    landing[k] = target
    cand.renamed = renamed
    cand.targets = targets
    cand.landing = landing
