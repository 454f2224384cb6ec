"""A corpus case: a checkpoint in one layout, the state dict a model expects in another, and the ground truth.

The truth is a list of ``Link``s: which checkpoint key(s) become which expected key(s), and what happens to the
data on the way (nothing, a transpose, a split, a fuse...). ``Link.forward`` turns checkpoint tensors into expected
tensors, so every case can prove its own truth by value (``Case.verify``); ``Link.backward`` is its inverse, used
to write a checkpoint in the old layout from a model's state dict when no library does it for us.

Every tensor holds data derived from the name of the expected key it belongs to (``seeded``), so a tensor that
lands under the wrong name shows.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import torch

#: What a link does to the data, checkpoint -> expected.
RENAME: Final = "rename"  # one key to one key, data unchanged
TRANSPOSE: Final = "transpose"  # one 2-D tensor, transposed (GPT-2 Conv1D -> nn.Linear)
PERMUTE_ROPE: Final = "permute_rope"  # Meta's interleaved rotary layout -> Hugging Face's halves (same shape)
RESHAPE: Final = "reshape"  # same data, another shape (a 1x1 conv kernel -> a linear weight)
SPLIT: Final = "split"  # one tensor -> several, along ``dim`` (a fused qkv)
FUSE: Final = "fuse"  # several tensors -> one, concatenated along ``dim``
STACK: Final = "stack"  # per-expert tensors -> one stacked tensor: each run of ``parts`` is concatenated, then stacked
OPS: Final = (RENAME, TRANSPOSE, PERMUTE_ROPE, RESHAPE, SPLIT, FUSE, STACK)

#: The rename shapes issue 9 lists, as tags a case declares.
SHAPES: Final = {
    "multi_segment": "several segments change at once, none landing on its own",
    "index_move": "an index moves across segments, or a flat list is regrouped",
    "in_segment": "segments merged/split, separators changed, 1-based or compound indices",
    "index_map": "a non-uniform index map (interleaved families, an offset under one sub-module)",
    "sequential": "a numeric segment inserted or removed (nn.Sequential wrap/unwrap)",
    "single_key": "a rename of a single key",
    "fused": "fused / split / stacked / transposed tensors",
    "prefix": "wrapper prefixes (with a twist: stale copies, a prefix under one sub-module)",
    "exact_match_trap": "keys that match as they stand, but are not the right tensors",
}


@dataclass(frozen=True)
class Link:
    """Checkpoint key(s) ``old`` become expected key(s) ``new`` by ``op``.

    ``old`` and ``new`` are in the order ``op`` takes them (the parts of a fused tensor in order along ``dim``;
    stacked experts expert-major: ``e0.w1, e0.w3, e1.w1, ...``).
    """

    old: tuple[str, ...]
    new: tuple[str, ...]
    op: str = RENAME
    dim: int = 0
    heads: int = 0  # PERMUTE_ROPE: number of heads of the projection
    inverse: bool = False  # PERMUTE_ROPE: Hugging Face's halves -> Meta's interleaved pairs
    parts: int = 1  # STACK: tensors concatenated per stacked entry
    shape: tuple[int, ...] = ()  # RESHAPE: the checkpoint's shape (for backward)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}")
        one_to_one = (RENAME, TRANSPOSE, PERMUTE_ROPE, RESHAPE)
        if self.op in one_to_one and (len(self.old), len(self.new)) != (1, 1):
            raise ValueError(f"{self.op} links one key to one key: {self}")
        if self.op == SPLIT and (len(self.old) != 1 or len(self.new) < 2):
            raise ValueError(f"split links one key to several: {self}")
        if self.op in (FUSE, STACK) and (len(self.new) != 1 or len(self.old) < 2):
            raise ValueError(f"{self.op} links several keys to one: {self}")

    @property
    def moves(self) -> bool:
        """True when the key needs something done: renamed, or its data changed."""
        return self.op != RENAME or self.old != self.new

    def forward(self, tensors: Sequence[torch.Tensor], expected_shapes: Sequence[tuple[int, ...]]) -> list[Any]:
        """Checkpoint tensors (in ``old`` order) -> expected tensors (in ``new`` order)."""
        import torch

        if self.op == RENAME:
            return [tensors[0]]
        if self.op == TRANSPOSE:
            return [tensors[0].t()]
        if self.op == PERMUTE_ROPE:
            return [permute_rope(tensors[0], self.heads, inverse=self.inverse)]
        if self.op == RESHAPE:
            return [tensors[0].reshape(expected_shapes[0])]
        if self.op == SPLIT:
            sizes = [shape[self.dim] for shape in expected_shapes]
            return list(torch.split(tensors[0], sizes, dim=self.dim))
        if self.op == FUSE:
            return [torch.cat(list(tensors), dim=self.dim)]
        runs = [torch.cat(list(tensors[i : i + self.parts]), dim=0) for i in range(0, len(tensors), self.parts)]
        return [torch.stack(runs)]

    def backward(self, tensors: Sequence[torch.Tensor], sizes: Sequence[int] = ()) -> list[Any]:
        """Expected tensors (in ``new`` order) -> checkpoint tensors (in ``old`` order).

        ``sizes``: for FUSE and STACK, the size of each old tensor along the concatenated dim (default: equal parts).
        """
        import torch

        if self.op == RENAME:
            return [tensors[0].clone()]
        if self.op == TRANSPOSE:
            return [tensors[0].t().contiguous()]
        if self.op == PERMUTE_ROPE:
            return [permute_rope(tensors[0], self.heads, inverse=not self.inverse)]
        if self.op == RESHAPE:
            return [tensors[0].reshape(self.shape).clone()]
        if self.op == SPLIT:
            return [torch.cat(list(tensors), dim=self.dim)]
        if self.op == FUSE:
            whole = tensors[0]
            cut = list(sizes) or [whole.shape[self.dim] // len(self.old)] * len(self.old)
            return [t.clone() for t in torch.split(whole, cut, dim=self.dim)]
        whole = tensors[0]
        out: list[Any] = []
        for entry in whole.unbind(0):
            cut = list(sizes) or [entry.shape[0] // self.parts] * self.parts
            out.extend(t.clone() for t in torch.split(entry, cut, dim=0))
        return out


def permute_rope(tensor: torch.Tensor, heads: int, *, inverse: bool = False) -> torch.Tensor:
    """Meta's rotary layout (pairs interleaved per head) -> Hugging Face's (two halves per head), or back.

    The published Llama conversion script views each head's rows as ``(rows/2, 2)`` and swaps the two axes.
    """
    rows = tensor.shape[0]
    half = rows // heads // 2
    inner = (2, half) if inverse else (half, 2)
    rest = tuple(tensor.shape[1:])
    return tensor.reshape(heads, *inner, *rest).transpose(1, 2).reshape(rows, *rest).contiguous()


def seeded(name: str, shape: Sequence[int], dtype: Any = None) -> torch.Tensor:
    """Data derived from ``name`` alone: the same name always gives the same tensor, two names never agree."""
    import torch

    seed = zlib.crc32(name.encode())
    if name.endswith("num_batches_tracked"):  # a BatchNorm counter: an integer, still told apart by its value
        return torch.full(tuple(shape), seed % 100_000, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(tuple(shape), generator=generator)
    return values if dtype is None or dtype == torch.float32 else values.to(dtype)


def seeded_state(shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """A state dict with ``seeded`` data for every key of a key -> shape table."""
    return {key: seeded(key, shape) for key, shape in shapes.items()}


@dataclass
class Case:
    """One conversion: ``checkpoint`` (old layout) is to be loaded into a model expecting ``expected``.

    Every checkpoint key is in exactly one link's ``old`` or in ``orphans`` (no counterpart in the model); every
    expected key is in at most one link's ``new`` (the rest are missing from the checkpoint by nature).
    """

    name: str
    shapes: tuple[str, ...]
    source: str  # where the truth comes from: "transformers round trip: ...", "published script read: ..."
    note: str  # the rename in one line
    checkpoint: dict[str, Any]
    expected: dict[str, Any]
    links: list[Link]
    orphans: tuple[str, ...] = ()
    tags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"{self.name}: unknown rename shapes {unknown}")
        seen: dict[str, Link | None] = {}
        for link in self.links:
            for key in link.old:
                if key in seen:
                    raise ValueError(f"{self.name}: checkpoint key {key!r} is in two links")
                seen[key] = link
        for key in self.orphans:
            if key in seen:
                raise ValueError(f"{self.name}: orphan {key!r} is also linked")
            seen[key] = None
        if seen.keys() != self.checkpoint.keys():
            extra = sorted(self.checkpoint.keys() - seen.keys())[:5]
            stray = sorted(seen.keys() - self.checkpoint.keys())[:5]
            raise ValueError(f"{self.name}: truth does not cover the checkpoint (unlinked {extra}, unknown {stray})")
        targets = [key for link in self.links for key in link.new]
        if len(set(targets)) != len(targets) or not set(targets) <= self.expected.keys():
            raise ValueError(f"{self.name}: link targets repeat or are not expected keys")
        self._truth = seen

    @property
    def truth(self) -> dict[str, Link | None]:
        """Every checkpoint key -> its link (``None``: no counterpart in the model)."""
        return self._truth

    def needs(self) -> list[str]:
        """Checkpoint keys that need a rename or a data change to load."""
        return [key for key, link in self._truth.items() if link is not None and link.moves]

    def verify(self) -> list[str]:
        """Problems with the truth, checked by value: each link's forward transform must give the expected data."""
        import torch

        problems = []
        for link in self.links:
            shapes = [tuple(self.expected[k].shape) for k in link.new]
            try:
                produced = link.forward([self.checkpoint[k] for k in link.old], shapes)
            except RuntimeError as exc:
                problems.append(f"{link.old[0]}: {exc}")
                continue
            for key, tensor in zip(link.new, produced):
                want = self.expected[key]
                if tuple(tensor.shape) != tuple(want.shape) or not torch.equal(tensor, want):
                    problems.append(f"{link.old} -> {key}: data differs")
        return problems


def from_expected(
    name: str,
    *,
    shapes: tuple[str, ...],
    source: str,
    note: str,
    expected: dict[str, Any],
    links: Iterable[Link],
    orphans: Mapping[str, Any] | None = None,
    sizes: Mapping[str, Sequence[int]] | None = None,
    order: Callable[[str], Any] | None = None,
) -> Case:
    """A case whose checkpoint is written from ``expected`` by running every link backward.

    ``orphans``: checkpoint keys with no counterpart, and their tensors. ``sizes``: per FUSE/STACK target, the
    sizes of its parts when they are not equal. ``order``: a sort key for the checkpoint's keys (default: the
    order of the links, i.e. of the expected keys; a real file's order matters to an engine that reads it).
    """
    links = list(links)
    checkpoint: dict[str, Any] = {}
    for link in links:
        made = link.backward([expected[k] for k in link.new], (sizes or {}).get(link.new[0], ()))
        checkpoint.update(zip(link.old, made))
    checkpoint.update(orphans or {})
    if order is not None:
        checkpoint = dict(sorted(checkpoint.items(), key=lambda item: order(item[0])))
    return Case(name, shapes, source, note, checkpoint, expected, links, tuple(orphans or ()))


def reversed_case(case: Case, name: str, *, source: str, note: str) -> Case:
    """The same conversion run the other way: ``case.expected`` becomes the checkpoint, ``case.checkpoint`` (without
    its orphans) the expected state dict, every link inverted. Stacking has no inverse link here."""
    inverse = {
        RENAME: RENAME,
        TRANSPOSE: TRANSPOSE,
        PERMUTE_ROPE: PERMUTE_ROPE,
        RESHAPE: RESHAPE,
        SPLIT: FUSE,
        FUSE: SPLIT,
    }
    links = []
    for link in case.links:
        if link.op not in inverse:
            raise ValueError(f"{case.name}: a {link.op} link cannot be reversed")
        shape = tuple(case.expected[link.new[0]].shape) if link.op == RESHAPE else ()
        links.append(
            Link(link.new, link.old, inverse[link.op], link.dim, link.heads, not link.inverse, link.parts, shape)
            if link.op == PERMUTE_ROPE
            else Link(link.new, link.old, inverse[link.op], link.dim, shape=shape)
        )
    orphans = set(case.orphans)
    expected = {k: v for k, v in case.checkpoint.items() if k not in orphans}
    return Case(name, case.shapes, source, note, dict(case.expected), expected, links)


def renames(expected: Iterable[str], old_name: Callable[[str], str | None]) -> list[Link]:
    """RENAME links for every expected key ``old_name`` gives an old name for (``None``: not in the checkpoint)."""
    links = []
    for key in expected:
        old = old_name(key)
        if old is not None:
            links.append(Link((old,), (key,)))
    return links
