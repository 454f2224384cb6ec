"""Template groups: keys whose names differ only in their numbers, the unit the aligner matches.

A key's *digit template* replaces every run of digits that reads as an index (``0``, ``17``; not ``01``) by a hole,
wherever it sits: ``layers.3.attention.wq.weight``, ``down_blocks_0_attn.weight``, ``stage1-2.conv.weight`` and
``norm1.weight`` all have holes. A group holds the keys of one template, sorted by their indices, so that two
groups can be compared index by index (the n-th block of one with the n-th block of the other) whatever the
numbering: 0- or 1-based, offset, regrouped into stages, or spread over two families.

When a group mixes modules that the other side names apart (``in_layers.0`` is a norm and ``in_layers.2`` a
convolution; ``w1``/``w2``/``w3`` are three projections), it is *split* at one index position into one group per
value there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from keyguard.sources._keyset import TensorInfo

HOLE: Final = "\x00"
_INDEX: Final = re.compile(r"(?<![0-9])(0|[1-9][0-9]{0,17})(?![0-9])")

#: Leaf names that say what a tensor is; others (``cls_token``, ``A_log``) are free-form parameters.
_LEAVES: Final[dict[str, str]] = {
    "weight": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "running_mean": "running_mean",
    "running_var": "running_var",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "num_batches_tracked": "num_batches_tracked",
    "in_proj_weight": "in_proj_weight",
    "in_proj_bias": "in_proj_bias",
    "weight_g": "weight_g",
    "weight_v": "weight_v",
    "original0": "weight_g",
    "original1": "weight_v",
    "inv_freq": "inv_freq",
}
_INTEGER_DTYPES: Final = frozenset({"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL"})

Side = Literal["checkpoint", "expected"]


def digit_template(key: str) -> tuple[str, tuple[int, ...]]:
    """The key with every index replaced by ``HOLE``, and the indices.

    >>> digit_template("down_blocks_0_attn.weight")
    ('down_blocks_\\x00_attn.weight', (0,))
    """
    parts = _INDEX.split(key)
    if len(parts) == 1:
        return key, ()
    return HOLE.join(parts[0::2]), tuple(map(int, parts[1::2]))


#: Segments that PEFT puts between a module and its tensor: part of the leaf, not of the module's name.
_ADAPTER_SEGMENTS: Final = frozenset(
    {
        "lora_A",
        "lora_B",
        "lora_embedding_A",
        "lora_embedding_B",
        "lora_magnitude_vector",
        "base_layer",
        "lora_down",  # kohya / sd-scripts names for lora_A and lora_B
        "lora_up",
    }
)
#: Adapter leaves that name the same tensor in different tools.
_ADAPTER_LEAVES: Final = {"lora_down": "lora_A", "lora_up": "lora_B"}


def split_leaf(template: str) -> tuple[str, str]:
    """``(module, leaf)``: the leaf is the last segment, with PEFT's adapter segments that precede it
    (``q_proj`` / ``lora_A.weight``, ``q_proj`` / ``lora_A.default.weight``)."""
    segments = template.split(".")
    cut = len(segments) - 1
    for back in (2, 3):
        if len(segments) > back and segments[-back] in _ADAPTER_SEGMENTS:
            cut = len(segments) - back
            break
    return ".".join(segments[:cut]), ".".join(segments[cut:])


def leaf_class(template: str) -> str:
    """What the leaf says the tensor is (``gamma`` is a ``weight``); free-form names are ``param``; a PEFT
    adapter leaf (``lora_A.weight``) is its own kind."""
    leaf = split_leaf(template)[1]
    if "." in leaf:
        head, _, rest = leaf.partition(".")
        rest = rest.rsplit(".", 1)[-1]  # PEFT's adapter name in the middle (lora_A.default.weight) says nothing
        return f"{_ADAPTER_LEAVES.get(head, head)}.{_LEAVES.get(rest, rest)}"
    return _LEAVES.get(leaf, "param")


def module_path(template: str) -> tuple[str, ...]:
    """The segments naming the module (the leaf dropped), indices left out: for names, not for matching."""
    module = split_leaf(template)[0]
    segments = module.split(".") if module else []
    out: list[str] = []
    for segment in segments:
        stripped = segment.replace(HOLE, "").strip("_-")
        if stripped and not stripped.isdigit():  # a block number written in by a split is no name
            out.append(stripped)
    return tuple(out)


def own_name(group: Group) -> str:
    """The module's own name (the last segment of its path), with an index written into it kept when every key
    of the group has the same one: ``ln1`` is not ``ln``, while ``w1``/``w2``/``w3`` together read ``w``."""
    module = split_leaf(group.template)[0]
    if not module:
        return ""
    segments = module.split(".")
    before = sum(s.count(HOLE) for s in segments[:-1])
    last = segments[-1]
    if last == HOLE or not last.replace(HOLE, "").strip("_-"):
        return group.path[-1] if group.path else ""
    pieces = last.split(HOLE)
    text = pieces[0]
    for i, piece in enumerate(pieces[1:]):
        taken = {m.index[before + i] for m in group.members}
        text += (str(next(iter(taken))) if len(taken) == 1 else "") + piece
    return text.strip("_-")


def dtype_class(dtype: str | None) -> str:
    if dtype is None:
        return "?"
    return "int" if dtype in _INTEGER_DTYPES else "float"


@dataclass(frozen=True)
class Member:
    """One key of a group."""

    name: str  # the key as it stands now (after earlier rules), on its side
    key: str  # the original key
    index: tuple[int, ...]
    info: TensorInfo
    order: int  # position in its source


@dataclass(eq=False)
class Group:
    """Keys of one template, sorted by index."""

    side: Side
    template: str
    members: list[Member]
    parent: Group | None = None
    # which holes of the key's own template remain here (a split writes one in): two groups split at different
    # holes of templates with as many holes hold different dimensions, however alike their sizes and shapes
    remaining: tuple[int, ...] | None = None
    _signature: tuple[object, ...] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def holes(self) -> int:
        return self.template.count(HOLE)

    @property
    def leaf(self) -> str:
        return leaf_class(self.template)

    @property
    def path(self) -> tuple[str, ...]:
        """The module's path for names; a free-form parameter (``rel_pos_h``, ``cls_token``) is named like a module,
        so its own name ends the path."""
        path = module_path(self.template)
        if self.leaf == "param":
            name = split_leaf(self.template)[1].replace(HOLE, "").strip("_-")
            if name:
                return (*path, name)
        return path

    @property
    def module(self) -> str:
        """The template without its leaf: groups of one module (weight, bias) share it."""
        return split_leaf(self.template)[0]

    @property
    def shapes_known(self) -> bool:
        return all(m.info.shape is not None for m in self.members)

    @property
    def signature(self) -> tuple[object, ...]:
        """What must agree for two groups to be the same tensors: leaf kind, count, shapes and dtype kinds in
        index order. Unknown shapes make a wildcard signature (compared one by one)."""
        if self._signature is None:
            shapes = tuple(m.info.shape for m in self.members)
            kinds = tuple(dtype_class(m.info.dtype) for m in self.members)
            self._signature = (self.leaf, self.size, shapes, kinds)
        return self._signature

    def pattern(self) -> str:
        """The template for people: holes as ``{N}`` with the values they take."""
        from keyguard._patterns import render_numbers

        if not self.holes:
            return self.template
        pieces = self.template.split(HOLE)
        out = [pieces[0]]
        for position, piece in enumerate(pieces[1:]):
            out.append(render_numbers({m.index[position] for m in self.members}))
            out.append(piece)
        return "".join(out)

    def values(self, position: int) -> list[int]:
        return sorted({m.index[position] for m in self.members})

    def split(self, position: int) -> list[Group]:
        """One group per value at index ``position``, the value written into the template."""
        by_value: dict[int, list[Member]] = {}
        for member in self.members:
            by_value.setdefault(member.index[position], []).append(member)
        pieces = self.template.split(HOLE)
        out: list[Group] = []
        for value, members in sorted(by_value.items()):
            template = HOLE.join(pieces[: position + 1]) + str(value) + HOLE.join(pieces[position + 1 :])
            moved = [
                Member(m.name, m.key, m.index[:position] + m.index[position + 1 :], m.info, m.order) for m in members
            ]
            remaining = self.origins[:position] + self.origins[position + 1 :]
            out.append(Group(self.side, template, moved, parent=self, remaining=remaining))
        return out

    @property
    def origins(self) -> tuple[int, ...]:
        return self.remaining if self.remaining is not None else tuple(range(self.holes))

    @property
    def root_holes(self) -> int:
        group = self
        while group.parent is not None:
            group = group.parent
        return group.holes


def build_groups(side: Side, entries: Iterable[tuple[str, str, TensorInfo, int]]) -> list[Group]:
    """Groups of ``(name, original key, info, order)`` entries, in order of first appearance."""
    by_template: dict[str, list[Member]] = {}
    for name, key, info, order in entries:
        template, index = digit_template(name)
        by_template.setdefault(template, []).append(Member(name, key, index, info, order))
    groups = []
    for template, members in by_template.items():
        members.sort(key=lambda m: m.index)
        groups.append(Group(side, template, members))
    return groups


def compatible(a: Group, b: Group) -> bool:
    """Same leaf kind and count, shapes and dtype kinds equal index by index (unknown on a side: not refuted), and
    split at the same holes where both keys have as many."""
    if a.size != b.size or a.leaf != b.leaf:
        return False
    if a.root_holes == b.root_holes and a.origins != b.origins:
        return False
    if a.signature == b.signature:
        return True
    for x, y in zip(a.members, b.members):
        if x.info.shape is not None and y.info.shape is not None and x.info.shape != y.info.shape:
            return False
        cx, cy = dtype_class(x.info.dtype), dtype_class(y.info.dtype)
        if "?" not in (cx, cy) and cx != cy:
            return False
    return True


def transposed(a: Group, b: Group) -> bool:
    """Same tensors, every 2-D one stored transposed (``Conv1D`` against ``nn.Linear``)."""
    if a.size != b.size or a.leaf != b.leaf or not a.shapes_known or not b.shapes_known:
        return False
    flipped = False
    for x, y in zip(a.members, b.members):
        sx, sy = x.info.shape, y.info.shape
        assert sx is not None and sy is not None
        if sx == sy:
            if len(sx) == 2 and sx[0] != sx[1]:
                return False  # a non-square matrix stored as the model stores it: not this group
            continue  # vectors, and square matrices (which read the same either way)
        if len(sx) != 2 or sx[::-1] != sy:
            return False
        flipped = True
    return flipped


def split_positions(group: Group, limit: int = 64) -> list[int]:
    """Index positions worth splitting at: several values, and not one group per key at every position."""
    out = []
    for position in range(group.holes):
        count = len(group.values(position))
        if 2 <= count <= limit:
            out.append(position)
    return out


def ancestors(name: str) -> list[str]:
    """Every proper module prefix of a key, nearest first (``a.b.c`` -> ``a.b``, ``a``)."""
    out = []
    cut = name.rfind(".")
    while cut > 0:
        name = name[:cut]
        out.append(name)
        cut = name.rfind(".")
    return out


def signature_index(groups: Sequence[Group]) -> dict[tuple[object, ...], list[Group]]:
    index: dict[tuple[object, ...], list[Group]] = {}
    for group in groups:
        index.setdefault(group.signature, []).append(group)
    return index


def structural_splits(groups: list[Group]) -> list[Group]:
    """Split groups at index positions where the blocks differ in kind.

    A position counts blocks when every value there holds the same kinds of tensors in the same places
    (``layers.{N}``). Where values differ (``in_layers.0`` is a norm and ``in_layers.2`` a convolution; the first
    ``downsample_layers`` entry is a stem laid out conv-then-norm, the others norm-then-conv), the values are
    partitioned by kind and every leaf group of the module follows the same partition, so a norm's bias is never
    paired with a convolution's bias of the same size. Outer positions are settled first.
    """
    families: dict[str, list[Group]] = {}
    for group in groups:
        families.setdefault(split_leaf(group.template)[0], []).append(group)
    work = list(families.values())
    out: list[Group] = []
    while work:
        family = work.pop()
        holes = split_leaf(family[0].template)[0].count(HOLE)
        for position in range(holes):
            parts = _partition(family, position, holes)
            if parts is not None:
                work.extend(parts)
                break
        else:
            out.extend(family)
    order = {id(g): i for i, g in enumerate(groups)}
    out.sort(key=lambda g: order.get(id(_root(g)), 0))
    return out


def _root(group: Group) -> Group:
    while group.parent is not None:
        group = group.parent
    return group


def _partition(family: list[Group], position: int, holes: int) -> list[list[Group]] | None:
    """The family split by the kind of block at ``position``, or ``None`` when every value holds the same kinds.

    Two values differ in kind when one tensor slot (leaf and inner indices) holds tensors of different ranks
    under them (a norm where the other has a convolution). What is present under one value and absent under
    another is no difference: a dropped bias is not another kind of block, and with keys missing on one side the
    sub-modules present say little (``_align`` splits further where groups still find nothing).
    """
    slots: dict[int, dict[tuple[str, tuple[int, ...]], int]] = {}
    for group in family:
        tail = group.template[len(split_leaf(group.template)[0]) :]
        for member in group.members:
            rank = -1 if member.info.shape is None else len(member.info.shape)
            slots.setdefault(member.index[position], {})[tail, member.index[position + 1 : holes]] = rank
    clusters: list[tuple[list[int], dict[tuple[str, tuple[int, ...]], int]]] = []
    for value in sorted(slots):
        kind = slots[value]
        for values, merged in clusters:
            if all(merged.get(slot, rank) == rank for slot, rank in kind.items()):
                values.append(value)
                merged.update(kind)
                break
        else:
            clusters.append(([value], dict(kind)))
    if len(clusters) < 2:
        return None
    parts: list[list[Group]] = []
    for values, _ in clusters:
        chosen = set(values)
        part: list[Group] = []
        for group in family:
            if len(values) == 1:
                part.extend(g for g in group.split(position) if _value_of(g, group, position) in chosen)
            else:
                members = [m for m in group.members if m.index[position] in chosen]
                if members:
                    part.append(Group(group.side, group.template, members, parent=group, remaining=group.remaining))
        if part:
            parts.append(part)
    return parts


def _value_of(piece: Group, whole: Group, position: int) -> int:
    """The value a literal split wrote at ``position`` (the first member's, read from the group it came from)."""
    key = piece.members[0].key
    return next(m.index[position] for m in whole.members if m.key == key)
