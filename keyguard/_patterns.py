"""Collapse numbered blocks: ``model.layers.{0..31}.mlp.up_proj.weight`` instead of 32 lines."""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import compress, repeat
from typing import Any, Final, Generic, TypeVar

# A dotted segment that is a decimal index: a position in a ModuleList / Sequential. Segments with a leading zero
# ("01") are names, not indices: turning them into numbers would render them as a different key.
# It is matched with its leading dot on the key prefixed by "." (cheaper than a look-behind alternation).
_NUMBERED: Final = re.compile(r"\.(0|[1-9][0-9]*+)(?=\.|$)")
HOLE: Final = "\x00"  # stands for a numbered segment inside a template
# A key that itself holds a NUL is grouped alone, under LITERAL + key: no template of a key without one starts
# with two holes (numbered segments are dot-separated), so these never collide with the others.
LITERAL: Final = HOLE * 2

T = TypeVar("T", bound=Hashable)


def template(key: str) -> tuple[str, tuple[int, ...]]:
    """Split a key into its template (numbered segments replaced by ``HOLE``) and the numbers.

    >>> template("model.layers.3.mlp.experts.17.w1")
    ('model.layers.\\x00.mlp.experts.\\x00.w1', (3, 17))
    """
    parts = _NUMBERED.split("." + key)
    if len(parts) == 1:
        return key, ()
    return ("." + HOLE).join(parts[0::2])[1:], tuple(map(int, parts[1::2]))


def templates(keys: Sequence[str], *, chunk: int = 1 << 15) -> list[str]:
    """``template(key)[0]`` of every key, in bulk: a few C-level passes per ``chunk`` keys (see ``_Columns``; the
    pieces of a chunk are held for that chunk only)."""
    out: list[str] = []
    for begin in range(0, len(keys), chunk):
        out += _Columns(list(keys[begin : begin + chunk]), literal=False).templates
    return out


def render_numbers(values: Iterable[int], *, limit: int = 24) -> str:
    """Render a set of indices compactly: ``{0..31}``, ``{0,2,5..9}``; long lists are summarised."""
    ordered = sorted(set(values))
    if not ordered:
        return "{}"
    if len(ordered) == 1:
        return str(ordered[0])
    runs: list[str] = []
    start = previous = ordered[0]
    for value in [*ordered[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        runs.append(
            str(start)
            if start == previous
            else (f"{start},{previous}" if previous == start + 1 else f"{start}..{previous}")
        )
        if value is not None:
            start = previous = value
    text = ",".join(runs)
    if len(text) > limit:
        text = f"{ordered[0]}..{ordered[-1]}: {len(ordered)} of {ordered[-1] - ordered[0] + 1}"
    return "{" + text + "}"


@dataclass
class KeyGroup(Generic[T]):
    """Keys sharing one template (and one extra grouping value, such as shape and dtype)."""

    template: str
    extra: T
    keys: list[str] = field(default_factory=list)
    numbers: list[set[int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.keys)

    @property
    def complete(self) -> bool:
        """True when the keys are every combination of the numbers shown (a full grid of blocks)."""
        total = 1
        for values in self.numbers:
            total *= len(values)
        return total == len(self.keys)

    @property
    def pattern(self) -> str:
        """The template with each numbered position rendered as its set of values."""
        if not self.numbers:
            return self.template
        pieces = self.template.split(HOLE)
        out = [pieces[0]]
        for values, piece in zip(self.numbers, pieces[1:]):
            out.append(render_numbers(values))
            out.append(piece)
        return "".join(out)


def collapse(keys: Iterable[str], extra: Callable[[str], T] | None = None) -> list[KeyGroup[T]]:
    """Group keys by template (and by ``extra(key)`` when given), in order of first appearance.

    Works column-wise (C-level maps over all keys) since findings and ``inspect`` collapse up to millions of keys.
    """
    keys = list(keys)
    columns = _Columns(keys)
    shapes = columns.templates
    labels = list(map(extra, keys)) if extra is not None else None
    group_keys: list[Any] = list(zip(shapes, labels)) if labels is not None else shapes
    # number the groups by first appearance, then a stable sort on that number gathers each group's indices in
    # order (all C-level; the group values need not be orderable)
    ids: dict[Any, int] = dict.fromkeys(group_keys, 0)
    if len(ids) == 1:
        runs = [list(range(len(keys)))]
    else:
        for number, group_key in enumerate(ids):
            ids[group_key] = number
        group_of = list(map(ids.__getitem__, group_keys))
        order = sorted(range(len(keys)), key=group_of.__getitem__)
        runs = [list(run) for _, run in itertools.groupby(order, key=group_of.__getitem__)]
    groups: list[KeyGroup[T]] = []
    for indices in runs:
        shape = shapes[indices[0]]
        value = labels[indices[0]] if labels is not None else None
        members = keys if len(indices) == len(keys) else list(map(keys.__getitem__, indices))
        numbers = columns.numbers(indices, shape)
        groups.append(KeyGroup(shape.removeprefix(LITERAL), value, members, numbers))  # type: ignore[arg-type]
    return groups


def summarize_patterns(keys: Sequence[str], limit: int, *, chunk: int = 1 << 15) -> tuple[list[str], int]:
    """The patterns of the first ``limit`` groups of ``collapse(keys)`` and how many groups there are.

    What a finding shows, without building every group: numbers are gathered for the groups shown only. Keys are
    read ``chunk`` at a time, so the pieces of one split are held for a chunk only (a finding over a million keys
    would otherwise hold every key's pieces at once), and groups are ordered by first appearance across chunks.
    """
    order: dict[str, None] = {}  # every template, in order of first appearance
    shown: dict[str, list[set[int]]] = {}  # the first ``limit`` templates -> their numbers so far
    for start in range(0, len(keys), chunk):
        columns = _Columns(list(keys[start : start + chunk]))
        distinct = columns.distinct
        fresh = [t for t in distinct if t not in order]
        order.update(dict.fromkeys(fresh))
        for shape in fresh[: max(0, limit - len(shown))]:
            shown[shape] = []
        for shape, numbers in columns.numbers_of([shape for shape in shown if shape in distinct]).items():
            known = shown[shape]
            if not known:
                shown[shape] = numbers
            else:
                for values, more in zip(known, numbers):
                    values |= more
    patterns = []
    for shape, numbers in shown.items():
        group: KeyGroup[None] = KeyGroup(shape.removeprefix(LITERAL), None, numbers=numbers)
        patterns.append(group.pattern)
    return patterns, len(order)


class _Columns:
    """The templates of many keys and the numbers of their groups, by one of two methods.

    Digit classes (the common case, about three times faster): every ASCII digit of a key becomes a mark ("0" its
    own, the others one more), so keys differing only in their digits share one class, and a handful of classes
    stand for thousands of keys. A class whose every run of marks is a whole dotted segment that reads as an index
    ("0", or no leading zero) has one template, the class with each run a hole, whatever the digits; the numbers
    of such keys are then the runs of digits in their bytes. A class with digits inside a name ("fc1", "w2") or a
    zero-padded segment ("01") keeps digits in its template: its keys take the regex split.

    The regex split (``_split_joined``): one split of all keys joined gives templates and numbers at once. Keys
    with a newline, a NUL or a mark take it, and so do keys whose names mostly hold digits (``layer1.0.conv1``),
    where classes would only add a pass. Keys holding a newline or a NUL fall back to ``template`` one by one.
    """

    def __init__(self, keys: list[str], *, literal: bool = True) -> None:
        self.keys = keys
        self._flat: list[str] | None = None  # every key's numbers in key order (regex split only)
        self._counts: list[int] | None = None  # numbers per key, when the templates cannot tell
        self._starts: list[int] | None = None
        joined = "\n".join(keys)
        if (
            keys
            and joined.count("\n") == len(keys) - 1
            and not ("\x00" in joined or "\x01" in joined or "\x02" in joined)
            and not _mostly_digits_in_names(keys)
        ):
            self.templates = _by_classes(keys, joined.translate(_MARKS).split("\n"))
            return
        del joined
        split = _split_joined(keys)
        if split is not None:
            self.templates, self._flat = split
        else:
            pairs = [(LITERAL + k, ()) if literal and HOLE in k else template(k) for k in keys]
            self.templates = [shape for shape, _ in pairs]
            self._flat = [str(n) for _, numbers in pairs for n in numbers]
            self._counts = [len(numbers) for _, numbers in pairs]

    def numbers(self, indices: Sequence[int], shape: str) -> list[set[int]]:
        """The set of numbers at each numbered position of ``shape`` over the keys at ``indices`` (keys whose
        template is ``shape``)."""
        holes = 0 if shape.startswith(LITERAL) else shape.count(HOLE)
        if not holes:
            return []
        whole = len(indices) == len(self.keys)
        if self._flat is None:  # digit classes
            return _class_numbers(self.keys if whole else list(map(self.keys.__getitem__, indices)), shape, holes)
        if whole and len(self._flat) == holes * len(indices):
            # one template for all the keys: their numbers come in order, ``holes`` per key
            return [set(map(int, set(self._flat[position::holes]))) for position in range(holes)]
        if self._starts is None:
            counts = self._counts if self._counts is not None else map(str.count, self.templates, repeat(HOLE))
            self._starts = list(itertools.accumulate(counts, initial=0))
        firsts = list(map(self._starts.__getitem__, indices))
        get = self._flat.__getitem__
        return [set(map(int, set(map(get, map(operator.add, firsts, repeat(p)))))) for p in range(holes)]

    @cached_property
    def distinct(self) -> dict[str, None]:
        """The templates, each once, in order of first appearance."""
        return dict.fromkeys(self.templates)

    def numbers_of(self, shapes: list[str]) -> dict[str, list[set[int]]]:
        """``numbers`` of the keys of each of a few templates."""
        templates = self.templates
        if len(shapes) == 1 and len(self.distinct) == 1:
            return {shapes[0]: self.numbers(range(len(templates)), shapes[0])}
        if self._flat is None:  # one C-level pass per template picks its keys (cheaper than visiting each key)
            return {
                shape: _class_numbers(list(compress(self.keys, map(operator.eq, templates, repeat(shape)))), shape)
                for shape in shapes
            }
        members: dict[str, list[int]] = {shape: [] for shape in shapes}
        for index in compress(range(len(templates)), map(members.__contains__, templates)):
            members[templates[index]].append(index)
        return {shape: self.numbers(indices, shape) for shape, indices in members.items()}


_MARKS: Final = str.maketrans({"0": "\x02", **dict.fromkeys("123456789", "\x01")})
_MARKED_INDEX: Final = re.compile(r"(?:(?<=\.)|^)(?:\x02|\x01[\x01\x02]*+)(?=\.|$)")
_ASCII_DIGIT: Final = re.compile(r"[0-9]")
# every byte but an ASCII digit becomes a space: a key's digit runs are then the words of its bytes
_DIGITS_ONLY: Final = bytes(byte if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))


def _class_template(marked: str) -> str | None:
    """The template of every key of a digit class, or ``None`` when its keys hold digits in names."""
    shape = _MARKED_INDEX.sub(HOLE, marked)
    return None if "\x01" in shape or "\x02" in shape else shape


def _class_numbers(members: list[str], shape: str, holes: int | None = None) -> list[set[int]]:
    """``_Columns.numbers`` of ``members``, keys of digit classes whose template is ``shape``."""
    holes = shape.count(HOLE) if holes is None else holes
    if not holes:
        return []
    flat: Sequence[str | bytes] | None = _digit_runs(members, holes) if not _ASCII_DIGIT.search(shape) else None
    if flat is None:
        split = _split_joined(members)
        assert split is not None  # no newline, no NUL
        flat = split[1]
    return [set(map(int, set(flat[position::holes]))) for position in range(holes)]


def _by_classes(keys: list[str], classes: list[str]) -> list[str]:
    """The templates of ``keys`` from their digit classes; keys of classes with digits in names by the regex."""
    shapes = {marked: _class_template(marked) for marked in dict.fromkeys(classes)}
    out = list(map(shapes.__getitem__, classes))
    if None in shapes.values():  # split those by the regex, then put them back in place
        rest = list(compress(range(len(keys)), map(operator.is_, out, repeat(None))))
        split = _split_joined(list(map(keys.__getitem__, rest)))
        assert split is not None  # no newline, no NUL
        for index, shape in zip(rest, split[0]):
            out[index] = shape
    return out  # type: ignore[return-value]


def _mostly_digits_in_names(keys: list[str], probes: int = 256) -> bool:
    """Whether most of ``probes`` keys spread over ``keys`` have digits in names (a choice of method only: both
    give every key's exact template)."""
    sample = keys[:: max(1, len(keys) // probes)]
    counts: dict[str, int] = {}
    for marked in "\n".join(sample).translate(_MARKS).split("\n"):
        counts[marked] = counts.get(marked, 0) + 1
    return 2 * sum(n for marked, n in counts.items() if _class_template(marked) is None) > len(sample)


def _digit_runs(members: list[str], holes: int) -> list[bytes] | None:
    """The numbers of keys whose every ASCII digit belongs to a numbered segment (their template holds none),
    ``holes`` per key, in key order: the words of their UTF-8 bytes with every other byte a space. ``None`` when
    the count is not ``holes`` per key (the caller then splits by the regex)."""
    words = "\n".join(members).encode("utf-8", "surrogatepass").translate(_DIGITS_ONLY).split()
    return words if len(words) == holes * len(members) else None


_NUMBERED_LINES: Final = re.compile(r"\.(0|[1-9][0-9]*+)(?=[.\n])")  # possessive: no backtracking into the digits


def _split_joined(keys: list[str]) -> tuple[list[str], list[str]] | None:
    """The templates of ``keys`` and their numbers (in key order, flat) from one split of the keys joined; ``None``
    when a key holds a newline or a NUL, which the joined text cannot tell from a separator or a hole."""
    joined = "." + "\n.".join(keys) + "\n"
    if joined.count("\n") != len(keys) or HOLE in joined:
        return None
    parts = _NUMBERED_LINES.split(joined)
    return ("." + HOLE).join(parts[0::2])[1:-1].split("\n."), parts[1::2]


def pattern_of(keys: Sequence[str]) -> str:
    """One pattern summarising ``keys`` (the first group's pattern, with ``+N more`` when they do not share one)."""
    groups: list[KeyGroup[None]] = collapse(keys)
    if not groups:
        return ""
    head = groups[0].pattern
    return head if len(groups) == 1 else f"{head} (+{len(groups) - 1} more patterns)"
