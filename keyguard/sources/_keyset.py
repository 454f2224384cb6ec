"""The one result type every source produces: keys with shape, dtype and location, plus source-level facts."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from keyguard._dtypes import nbytes_of

SourceFormat = Literal[
    "safetensors",
    "safetensors-sharded",
    "torch-pickle",
    "torch-pickle-sharded",
    "torch-dcp",
    "peft-adapter",
    "module",
    "config",
    "state-dict",
    "shapes",
    "keys",
    "manifest",
]


class TensorInfo(NamedTuple):
    """What is known of one tensor without reading its data.

    Attributes:
        shape: dimensions, or ``None`` when the source gives keys only.
        dtype: safetensors dtype name (``"F32"``, ``"BF16"``, ...), or ``None`` when unknown.
        file: the file holding the data, relative to the source (a shard name), when known.
        offsets: the ``[start, end)`` byte range of the data inside ``file``, counted from the file's start.
    """

    shape: tuple[int, ...] | None
    dtype: str | None
    file: str | None = None
    offsets: tuple[int, int] | None = None

    @property
    def numel(self) -> int | None:
        """Number of elements, or ``None`` when the shape is unknown."""
        return None if self.shape is None else math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        """Bytes of data, or ``None`` when shape or dtype is unknown."""
        if self.offsets is not None:
            return self.offsets[1] - self.offsets[0]
        numel = self.numel
        return None if numel is None else nbytes_of(numel, self.dtype)


@dataclass(frozen=True, eq=False, repr=False)
class KeySet(Mapping[str, TensorInfo]):
    """Keys of a checkpoint or model, in source order, with what is known of each tensor.

    A ``KeySet`` is an immutable ``Mapping[str, TensorInfo]``; the other attributes are facts about the source.

    Attributes:
        format: what kind of source this came from (``"safetensors"``, ``"module"``, ...).
        location: the path (or a short description for in-memory sources).
        metadata: string metadata stored with the checkpoint (safetensors ``__metadata__``, index metadata).
        unwrapped: the container the state dict was found in (``"state_dict"``, ``"model_ema"``...), if any.
        tied: groups of keys that share one storage (tied or shared weights), where known.
        non_persistent: buffers a module registers with ``persistent=False`` (never in a state dict).
        architecture: the model class, when the source says (``config.json``'s ``architectures[0]``).
        adapter: the parsed ``adapter_config.json`` for PEFT adapter folders.
        files: the files that were read, relative to ``location``.
        notes: things worth knowing that are not errors (ignored non-tensor entries, ...).
    """

    tensors: Mapping[str, TensorInfo]
    format: SourceFormat
    location: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    unwrapped: str | None = None
    tied: tuple[tuple[str, ...], ...] = ()
    non_persistent: frozenset[str] = frozenset()
    architecture: str | None = None
    adapter: Any = None
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    # -- Mapping ---------------------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> TensorInfo:
        return self.tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def __repr__(self) -> str:
        where = f" {self.location!r}" if self.location else ""
        return f"<KeySet {self.format}{where}: {len(self):,} tensor{'' if len(self) == 1 else 's'}>"

    # -- summaries -------------------------------------------------------------------------------------------
    @property
    def shapes_known(self) -> bool:
        """True when every tensor has a known shape."""
        return all(info.shape is not None for info in self.tensors.values())

    @property
    def num_parameters(self) -> int:
        """Total number of elements over tensors with a known shape (tied tensors counted once)."""
        skip = {key for group in self.tied for key in group[1:]}
        return sum(info.numel or 0 for key, info in self.tensors.items() if key not in skip)

    @property
    def total_bytes(self) -> int:
        """Bytes of tensor data over tensors with known shape and dtype (tied tensors counted once)."""
        skip = {key for group in self.tied for key in group[1:]}
        return sum(info.nbytes or 0 for key, info in self.tensors.items() if key not in skip)

    def dtype_counts(self) -> Counter[str | None]:
        """How many tensors of each dtype (``None`` for unknown)."""
        return Counter(info.dtype for info in self.tensors.values())

    def tied_to(self) -> dict[str, str]:
        """Map every tied key but the first of its group to the first one."""
        return {key: group[0] for group in self.tied for key in group[1:]}

    def evolve(self, **changes: Any) -> KeySet:
        """Return a copy with some attributes replaced (``KeySet`` itself is immutable)."""
        return replace(self, **changes)
