"""Planning a fixed checkpoint: every output tensor, where its bytes come from, and what happens to each key.

Renames first, then the data rules (split, fuse, transpose), then drops; any collision or misfit refuses the plan
before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from keyguard._dtypes import DTYPE_BITS
from keyguard._exceptions import PlanError, SourceError
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import Drop, Fuse, Split, Transpose
from keyguard.sources._keyset import KeySet, TensorInfo


@dataclass
class Change:
    """What happened to one source key."""

    source: str
    action: str  # "renamed", "kept", "dropped", "transposed", "split", "fused"
    targets: list[str] = field(default_factory=list)


@dataclass
class OutputItem:
    """One output tensor: where its bytes come from and how they are made."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sources: list[str]  # source keys whose data make it
    op: str = "copy"  # "copy", "transpose", "split", "fuse"
    rule: Any = None
    part: int = 0


def plan_output(keys: KeySet, plan: Plan, *, drop: Sequence[str] = ()) -> tuple[list[OutputItem], list[Change]]:
    """Decide every output tensor from the source keys and the plan (renames, then data rules, then drops)."""
    mapping = plan.mapping(keys)  # raises PlanError on any collision
    dropped = set(drop)
    for rule in plan.rules:
        if isinstance(rule, Drop):
            dropped.update(rule.keys)
    by_new = {new: old for old, new in mapping.items()}
    consumed: set[str] = set()
    items: list[OutputItem] = []
    changes: list[Change] = []
    for rule in plan.rules:
        if isinstance(rule, Split):
            old = by_new.get(rule.source)
            if old is None:
                raise PlanError(f"plan refused: split of {rule.source!r}, which the checkpoint does not hold")
            info = keys[old]
            if len(rule.targets) != len(rule.sizes) or any(size < 0 for size in rule.sizes):
                raise PlanError(
                    f"plan refused: split of {rule.source!r} names {len(rule.targets)} target(s)"
                    f" for {len(rule.sizes)} size(s)"
                )
            if (
                info.shape is None
                or info.dtype is None
                or not 0 <= rule.dim < len(info.shape)
                or sum(rule.sizes) != info.shape[rule.dim]
            ):
                raise PlanError(
                    f"plan refused: {rule.source!r} (shape {list(info.shape or ())}) cannot be split into sizes"
                    f" {rule.sizes} along dim {rule.dim}"
                )
            for part, (target, size) in enumerate(zip(rule.targets, rule.sizes)):
                dims = list(info.shape)
                dims[rule.dim] = size
                items.append(OutputItem(target, info.dtype, tuple(dims), [old], "split", rule, part))
            consumed.add(old)
            changes.append(Change(old, "split", list(rule.targets)))
        elif isinstance(rule, Fuse):
            olds = [by_new.get(s) for s in rule.sources]
            if any(o is None for o in olds):
                raise PlanError(f"plan refused: fusing {rule.target!r} needs keys the checkpoint does not hold")
            infos = [keys[o] for o in olds if o is not None]
            shape = _fused_shape(rule, infos)
            dtypes = {i.dtype for i in infos}
            if len(dtypes) != 1 or None in dtypes:
                raise PlanError(
                    f"plan refused: fusing {rule.target!r} needs parts of one dtype, not {sorted(map(str, dtypes))}"
                )
            items.append(OutputItem(rule.target, infos[0].dtype or "F32", shape, [o for o in olds if o], "fuse", rule))
            consumed.update(o for o in olds if o)
            for o in olds:
                if o:
                    changes.append(Change(o, "fused", [rule.target]))
    transposed = {k for rule in plan.rules if isinstance(rule, Transpose) for k in rule.keys}
    for old, info in keys.items():
        if old in consumed:
            continue
        new = mapping[old]
        if old in dropped or new in dropped:
            changes.append(Change(old, "dropped"))
            continue
        if info.shape is None or info.dtype is None:
            raise SourceError(keys.location, "unknown-shape", f"tensor {old!r} has no known shape or dtype")
        if info.dtype not in DTYPE_BITS:  # complex128, complex32, quantized...: the format has no name for them
            raise SourceError(
                keys.location,
                "unsupported-dtype",
                f"tensor {old!r} has dtype {info.dtype.lower()}, which the safetensors format cannot store"
                " (keyguard fix writes safetensors only); convert it first where you trust the file",
                key=old,
                dtype=info.dtype,
            )
        if new in transposed:
            if len(info.shape) != 2:
                raise PlanError(f"plan refused: {new!r} is not 2-D, it cannot be transposed")
            items.append(OutputItem(new, info.dtype, info.shape[::-1], [old], "transpose"))
            changes.append(Change(old, "transposed", [new]))
        else:
            items.append(OutputItem(new, info.dtype, info.shape, [old]))
            changes.append(Change(old, "renamed" if new != old else "kept", [new]))
    owner: dict[str, OutputItem] = {}
    for item in items:
        other = owner.setdefault(item.name, item)
        if other is not item:
            first, second = other.sources[0], item.sources[0]
            raise PlanError(
                f"plan refused: {first!r} and {second!r} would both be written as {item.name!r}"
                " (applying it would silently lose a tensor)"
            )
    return items, changes


def _fused_shape(rule: Fuse, infos: list[TensorInfo]) -> tuple[int, ...]:
    """The shape of a fused tensor; refuses parts that torch could not concatenate (or stack) as planned."""
    shapes = [i.shape for i in infos]
    known = [s for s in shapes if s is not None]
    if len(known) != len(shapes) or not known or any(len(s) <= rule.dim or rule.dim < 0 for s in known):
        raise PlanError(f"plan refused: fusing {rule.target!r} needs every part's shape, with a dim {rule.dim}")
    if any(s[: rule.dim] + s[rule.dim + 1 :] != known[0][: rule.dim] + known[0][rule.dim + 1 :] for s in known):
        raise PlanError(
            f"plan refused: the parts of {rule.target!r} differ outside dim {rule.dim}: {sorted(set(known))}"
        )
    groups = [known]
    if rule.stack:
        if rule.parts < 1 or len(known) % rule.parts:
            raise PlanError(
                f"plan refused: stacking {len(known)} tensors into {rule.target!r} in groups of {rule.parts}"
            )
        groups = [known[i : i + rule.parts] for i in range(0, len(known), rule.parts)]
    sizes = {sum(s[rule.dim] for s in group) for group in groups}
    if len(sizes) != 1:
        raise PlanError(f"plan refused: the groups stacked into {rule.target!r} have different sizes {sorted(sizes)}")
    first = list(known[0])
    first[rule.dim] = sizes.pop()
    return (len(groups), *first) if rule.stack else tuple(first)


def item_nbytes(item: OutputItem) -> int:
    numel = 1
    for d in item.shape:
        numel *= d
    return (numel * DTYPE_BITS.get(item.dtype, 8) + 7) // 8


def source_path(keys: KeySet, file: str | None) -> str:
    location = keys.location or ""
    if keys.format == "safetensors":
        return location
    folder = os.path.dirname(location) if os.path.isfile(location) else location
    return os.path.join(folder, file or "")
