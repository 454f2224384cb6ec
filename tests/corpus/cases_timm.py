"""Conversions timm publishes in its ``checkpoint_filter_fn``s (original research checkpoints -> timm modules).

timm itself is not installed (it needs torchvision). Each case states both layouts as key -> shape tables written
here from reading timm's model definitions and its filter function (never its code), and the truth is the filter
function's rename, as read. Every tensor is seeded from its expected name (``corpus._case.seeded``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from corpus._case import Case, Link, from_expected, seeded

SOURCE = "published script read: timm"


def _int_buffer(shape: tuple[int, ...]) -> object:
    import torch

    return torch.zeros(shape, dtype=torch.int64)


def _mlp(prefix: str, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.fc1.weight": (hidden, dim),
        f"{prefix}.fc1.bias": (hidden,),
        f"{prefix}.fc2.weight": (dim, hidden),
        f"{prefix}.fc2.bias": (dim,),
    }


def _norm(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}


def _ordered(keys: Iterable[str]) -> Callable[[str], int]:
    index = {k: i for i, k in enumerate(keys)}
    return lambda key: index.get(key, len(index))


# ------------------------------------------------------------------------------------------------------------- Swin
def swin_downsample_offset() -> Case:
    """Microsoft's Swin checkpoints put each PatchMerging at the end of a stage; timm puts it at the start of the
    next (``swin_transformer.checkpoint_filter_fn``, ``old_weights``: ``layers.N.downsample`` ->
    ``layers.N+1.downsample``, ``head.`` -> ``head.fc.``, non-persistent buffers dropped)."""
    dim, depths, heads, window, classes = 8, (1, 2, 1), (1, 2, 4), 2, 10
    table = (2 * window - 1) ** 2
    new: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (dim, 3, 4, 4), "patch_embed.proj.bias": (dim,)}
    new.update(_norm("patch_embed.norm", dim))
    old_order: list[str] = [*new]
    orphans = {}
    for stage, depth in enumerate(depths):
        width = dim * 2**stage
        if stage:
            new.update(_norm(f"layers.{stage}.downsample.norm", 2 * width))
            new[f"layers.{stage}.downsample.reduction.weight"] = (width, 2 * width)
        for block in range(depth):
            p = f"layers.{stage}.blocks.{block}"
            shapes = {
                **_norm(f"{p}.norm1", width),
                f"{p}.attn.relative_position_bias_table": (table, heads[stage]),
                f"{p}.attn.qkv.weight": (3 * width, width),
                f"{p}.attn.qkv.bias": (3 * width,),
                f"{p}.attn.proj.weight": (width, width),
                f"{p}.attn.proj.bias": (width,),
                **_norm(f"{p}.norm2", width),
                **_mlp(f"{p}.mlp", width, 4 * width),
            }
            new.update(shapes)
            old_order.extend(shapes)
            orphans[f"{p}.attn.relative_position_index"] = _int_buffer((window**2, window**2))
            if block % 2:
                orphans[f"{p}.attn_mask"] = seeded(f"{p}.attn_mask", (4, window**2, window**2))
            old_order += [k for k in orphans if k.startswith(f"{p}.") and k not in old_order]
        if stage + 1 < len(depths):  # the original registers the merge at the end of the stage, reduction first
            old_order += [f"layers.{stage}.downsample.{n}" for n in ("reduction.weight", "norm.weight", "norm.bias")]
    new.update(_norm("norm", dim * 2 ** (len(depths) - 1)))
    new["head.fc.weight"] = (classes, dim * 2 ** (len(depths) - 1))
    new["head.fc.bias"] = (classes,)
    old_order += ["norm.weight", "norm.bias", "head.weight", "head.bias"]

    def old_name(key: str) -> str:
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        return key.replace("head.fc.", "head.")

    return from_expected(
        "swin_downsample_offset",
        shapes=("index_map", "exact_match_trap"),
        source=f"{SOURCE} swin_transformer.py checkpoint_filter_fn (old_weights)",
        note="`layers.N.downsample` -> `layers.N+1.downsample` only under `downsample`, where `layers.1.downsample`"
        " exists on both sides with other shapes; `head` -> `head.fc`; index/mask buffers dropped",
        expected={k: seeded(k, s) for k, s in new.items()},
        links=[Link((old_name(k),), (k,)) for k in new],
        orphans=orphans,
        order=_ordered(old_order),
    )


CASES: dict[str, Callable[[], Case]] = {f.__name__: f for f in (swin_downsample_offset,)}
