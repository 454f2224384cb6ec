"""What template alignment decides, as data (matches, ties, the evidence behind them), and the predicates on names
and places in the module tree that its evidence uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from keyguard.engine._groups import HOLE, Group, Member, ancestors, own_name, split_leaf
from keyguard.engine._names import same_name, same_path, segment_similarity
from keyguard.fixes._rules import Applicability
from keyguard.sources._keyset import TensorInfo

STRONG_NAME: Final = 1.0  # the module's own name agrees (equal up to spelling, or a published equivalent)
WEAK_NAME: Final = 0.25  # the module's own name shares a token: enough to offer a candidate, not to choose one


@dataclass(frozen=True)
class Evidence:
    """One reason for (or against) a correspondence, kept as data so reports and docs can show why."""

    kind: str  # shape_unique | module | names | siblings | anchored | tie | hint
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


@dataclass
class Match:
    """Two groups that hold the same tensors, pairing their members in index order."""

    checkpoint: Group
    expected: Group
    applicability: Applicability
    evidence: list[Evidence] = field(default_factory=list)
    forced: bool = False
    transposed: bool = False
    note: str | None = None
    order: list[Member] | None = None  # the expected members in pairing order, when the holes are permuted

    @property
    def pairs(self) -> list[tuple[Member, Member]]:
        return list(zip(self.checkpoint.members, self.order or self.expected.members))


@dataclass
class Tie:
    """Checkpoint keys that could be any of several expected keys: candidates, never applied."""

    options: dict[str, list[str]]  # original checkpoint key -> expected keys, best first
    why: str
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class Alignment:
    matches: list[Match] = field(default_factory=list)
    ties: list[Tie] = field(default_factory=list)


Entry = tuple[str, str, TensorInfo, int]  # name as it stands, original key, info, position in the source


#: Wrapper segments that say nothing of where a module sits (DDP, torch.compile, a loader's ``model.``).
WRAPPERS: Final = frozenset({"module", "_orig_mod", "model", "base_model"})


def named_in_place(c: Group, e: Group) -> bool:
    """The module's own name agrees *and* it sits in the same place: its parent path is the same once wrapper
    segments are set aside (or reads the same up to separators). A match no neighbour confirms needs both:
    ``attn`` under ``transformer.layers`` is not ``attn`` under ``model.layers``."""
    if not c.path or not e.path:
        return False
    if same_path(c.path, e.path):
        return True
    if own_names_agree(c, e) and same_place(c.path[:-1], e.path[:-1]):
        return True
    short, long = (c.path, e.path) if len(c.path) < len(e.path) else (e.path, c.path)
    # wrapped or unwrapped (``head`` -> ``head.fc``); as many indices on both sides, so that the extra segment is
    # a container's, not one standing where the other side has a block number (``blocks.unused`` / ``blocks.0``)
    return (
        c.holes == e.holes
        and c.module.count(".") != e.module.count(".")  # as deep on both sides: another child, not a wrapper
        and len(long) == len(short) + 1
        and same_name(short[-1], long[-2])
        and same_place(short[:-1], long[:-2])
    )


def same_place(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    a = tuple(s for s in a if s not in WRAPPERS)
    b = tuple(s for s in b if s not in WRAPPERS)
    return a == b or (bool(a) and bool(b) and same_path(a, b))


def own_name_agrees(c: Group, e: Group) -> bool:
    """The module's own name (its last segment) is the same up to spelling, or a published equivalent."""
    if not c.path or not e.path:
        return False
    if own_names_agree(c, e) or same_path(c.path, e.path):
        return True
    # wrapped or unwrapped: the module became a container of the layer (``head`` -> ``head.fc``), or the reverse;
    # the tensor keeps its leaf name (a block's ``norm.weight`` is not the block's own ``gamma``)
    if split_leaf(c.template)[1] != split_leaf(e.template)[1]:
        return False
    if c.module.count(".") == e.module.count("."):
        return False  # as deep on both sides: another child (``proj.spare`` is not ``proj.0``), not a wrapper
    short, long = (c.path, e.path) if len(c.path) < len(e.path) else (e.path, c.path)
    return c.holes == e.holes and len(long) == len(short) + 1 and same_name(short[-1], long[-2])


def permuted(c: Group, e: Group) -> list[Member] | None:
    """The expected members re-ordered when the two templates number their blocks in another order of holes:
    ``conv{K}s.{N}`` against ``h.{N}.conv{K}``. An index written into a name (``conv2``) pairs with an index
    written into a name, a block number standing alone (``.0.``) with a block number standing alone, each kind in
    its order; ``None`` to pair in index order (the kinds already line up, or they cannot)."""
    k = c.holes
    if k < 2 or e.holes != k:
        return None
    named = _anchored_order(c.template, e.template)
    if named is not None:
        order = named  # each index follows the name it numbers (``blocks0.norm.2`` / ``blocks.0.norm2``)
    else:
        ours, theirs = hole_kinds(c.template), hole_kinds(e.template)
        if ours == theirs or sorted(ours) != sorted(theirs):
            return None
        order = []
        for kind in ours:  # the n-th hole of a kind here is the n-th hole of that kind there
            seen = sum(1 for o in order if theirs[o] == kind)
            order.append([j for j, t in enumerate(theirs) if t == kind][seen])
    if order == list(range(k)):
        return None
    ordered = sorted(e.members, key=lambda m: tuple(m.index[j] for j in order))
    for cm, em in zip(c.members, ordered):
        if cm.info.shape is not None and em.info.shape is not None and cm.info.shape != em.info.shape:
            return None
    return ordered


def _anchored_order(ours: str, theirs: str) -> list[int] | None:
    """For each hole of ``ours``, the hole of ``theirs`` numbering a module of the same name (the name the index
    follows: ``blocks`` in ``blocks0`` and in ``blocks.0``); None unless the names pair every hole one to one (one
    hole may be left to pair with the one left over)."""
    a, b = hole_anchors(ours), hole_anchors(theirs)
    order: list[int | None] = []
    for name in a:
        hits = [j for j, other in enumerate(b) if name and other and same_name(name, other)]
        order.append(hits[0] if len(hits) == 1 and b.count(b[hits[0]]) == 1 and a.count(name) == 1 else None)
    missing = [i for i, o in enumerate(order) if o is None]
    taken = {o for o in order if o is not None}
    if len(taken) != len(order) - len(missing) or len(missing) > 1 or len(missing) == len(order):
        return None
    if missing:
        left = [j for j in range(len(b)) if j not in taken]
        order[missing[0]] = left[0]
    return [o for o in order if o is not None]


def hole_anchors(template: str) -> list[str]:
    """For each hole, the name it numbers: the letters before it in its segment (``conv`` in ``conv{N}s``), or the
    segment before it when it stands alone (``h`` in ``h.{N}``)."""
    out: list[str] = []
    previous = ""
    for segment in template.split("."):
        pieces = segment.split(HOLE)
        for piece in pieces[:-1]:
            name = piece.strip("_-")
            out.append(name if name and not name.isdigit() else previous)
        bare = segment.replace(HOLE, "").strip("_-")
        if bare and not bare.isdigit():
            previous = bare
    return out


def hole_kinds(template: str) -> list[bool]:
    """For each hole, whether it is written into a name (``conv{N}``) rather than standing alone (``h.{N}``)."""
    out: list[bool] = []
    for segment in template.split("."):
        if segment == HOLE:
            out.append(False)
        else:
            out.extend([True] * segment.count(HOLE))
    return out


def same_holes(c: Group, e: Group) -> bool:
    """Split at the same holes where both keys have as many (see ``Group.remaining``)."""
    return c.root_holes != e.root_holes or c.origins == e.origins


def own_names_agree(c: Group, e: Group) -> bool:
    return segment_similarity(own_name(c), own_name(e)) >= STRONG_NAME


def leaves_by_module(entries: Sequence[Entry]) -> dict[str, dict[str, tuple[int, ...] | None]]:
    out: dict[str, dict[str, tuple[int, ...] | None]] = {}
    for name, _, info, _ in entries:
        module, leaf = split_leaf(name)
        out.setdefault(module, {})[leaf] = info.shape
    return out


def learn(mapping: dict[str, str | None], key: str, value: str) -> None:
    if key not in mapping:
        mapping[key] = value
    elif mapping[key] != value:
        mapping[key] = None


def ancestor_pairs(c_name: str, e_name: str) -> list[tuple[str, str]]:
    """Pairs of the nearest ancestors (parent and grandparent) of the two keys' modules: the places two sibling
    modules share. Farther ancestors (a wrapper prefix every key has) say nothing about siblings."""
    c_up = parents(c_name)
    e_up = parents(e_name)
    return [(a, b) for a in c_up for b in e_up]


def parents(name: str) -> list[str]:
    """The nearest ancestors of a key's module (up to three levels), wrapper-only prefixes left out."""
    module = split_leaf(name)[0]
    if not module:
        return []
    return [a for a in ancestors(module + ".x")[1:4] if not set(a.split(".")) <= WRAPPERS]


def root_of(name: str) -> str:
    """The first segment of a key that is not a wrapper's (``model.decoder.layers.0...`` -> ``decoder``)."""
    for segment in name.split("."):
        if segment not in WRAPPERS and not segment.isdigit():
            return segment
    return ""
