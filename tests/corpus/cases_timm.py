"""Conversions timm publishes in its ``checkpoint_filter_fn``s (original research checkpoints -> timm modules).

timm itself is not installed (it needs torchvision). Each case states both layouts as key -> shape tables written
here from reading timm's model definitions and its filter function (never its code), and the truth is the filter
function's rename, as read. Every tensor is seeded from its expected name (``corpus._case.seeded``). When the
cases were written, each truth was also checked by running the filter function from timm's sources (commit
aa4b5850, outside this repository) on the case's checkpoint: every output key and tensor equal to the expected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from corpus._case import RESHAPE, Case, Link, from_expected, seeded

SOURCE = "published script read (and run on the case, outside this repo): timm"


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


# --------------------------------------------------------------------------------------------------------- ConvNeXt
def _convnext(name: str, *, v2: bool) -> Case:
    """Facebook's ConvNeXt (V1, or V2 with GRN) -> timm (``convnext.checkpoint_filter_fn``): ``downsample_layers.0``
    -> ``stem``, ``downsample_layers.N`` -> ``stages.N.downsample``, ``stages.N.M`` -> ``stages.N.blocks.M``,
    ``dwconv`` -> ``conv_dw``, ``pwconv`` -> ``mlp.fc``, ``norm`` -> ``head.norm``, ``head`` -> ``head.fc``; V2's
    ``grn.gamma/beta`` ``[1, 1, 1, C]`` -> ``mlp.grn.weight/bias`` ``[C]`` (a reshape)."""
    dims, depths, classes = (8, 16, 24), (1, 2, 1), 10
    new: dict[str, tuple[int, ...]] = {"stem.0.weight": (dims[0], 3, 4, 4), "stem.0.bias": (dims[0],)}
    new.update({"stem.1.weight": (dims[0],), "stem.1.bias": (dims[0],)})
    old_order = [f"downsample_layers.0.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        if stage:
            new.update(_norm(f"stages.{stage}.downsample.0", dims[stage - 1]))
            new[f"stages.{stage}.downsample.1.weight"] = (dim, dims[stage - 1], 2, 2)
            new[f"stages.{stage}.downsample.1.bias"] = (dim,)
            old_order += [f"downsample_layers.{stage}.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
        for block in range(depth):
            p = f"stages.{stage}.blocks.{block}"
            old = f"stages.{stage}.{block}"
            if not v2:
                new[f"{p}.gamma"] = (dim,)  # a parameter of the block itself: first in its state dict
            new[f"{p}.conv_dw.weight"] = (dim, 1, 7, 7)
            new[f"{p}.conv_dw.bias"] = (dim,)
            new.update(_norm(f"{p}.norm", dim))
            new[f"{p}.mlp.fc1.weight"] = (4 * dim, dim)
            new[f"{p}.mlp.fc1.bias"] = (4 * dim,)
            if v2:
                new.update(_norm(f"{p}.mlp.grn", 4 * dim))
            new[f"{p}.mlp.fc2.weight"] = (dim, 4 * dim)
            new[f"{p}.mlp.fc2.bias"] = (dim,)
            old_order += [f"{old}.gamma"] if not v2 else []
            old_order += [f"{old}.{m}.{x}" for m in ("dwconv", "norm", "pwconv1") for x in ("weight", "bias")]
            old_order += [f"{old}.grn.{x}" for x in ("gamma", "beta")] if v2 else []
            old_order += [f"{old}.pwconv2.{x}" for x in ("weight", "bias")]
    new.update(_norm("head.norm", dims[-1]))
    new.update({"head.fc.weight": (classes, dims[-1]), "head.fc.bias": (classes,)})
    old_order += ["norm.weight", "norm.bias", "head.weight", "head.bias"]

    def old_name(key: str) -> str:
        key = re.sub(r"^stem\.", "downsample_layers.0.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        key = key.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
        return key.replace("head.fc.", "head.").replace("head.norm.", "norm.")

    links = []
    for key, shape in new.items():
        if ".mlp.grn." in key:
            links.append(Link((old_name(key),), (key,), RESHAPE, shape=(1, 1, 1, *shape)))
        else:
            links.append(Link((old_name(key),), (key,)))
    return from_expected(
        name,
        shapes=("index_move", "in_segment", "sequential", "fused")
        if v2
        else ("index_move", "in_segment", "sequential"),
        source=f"{SOURCE} convnext.py checkpoint_filter_fn (Facebook checkpoints)",
        note="`downsample_layers.0` -> `stem`, `downsample_layers.N` -> `stages.N.downsample`, `stages.N.M` ->"
        " `stages.N.blocks.M`, `pwconv1` -> `mlp.fc1` (one segment becomes two), `norm`/`head` -> `head.norm/fc`"
        + ("; GRN `grn.gamma/beta` [1,1,1,C] -> `mlp.grn.weight/bias` [C]" if v2 else "; block `gamma` stays"),
        expected={k: seeded(k, s) for k, s in new.items()},
        links=links,
        order=_ordered(old_order),
    )


def convnext_fb() -> Case:
    return _convnext("convnext_fb", v2=False)


def convnext_v2_fb() -> Case:
    return _convnext("convnext_v2_fb", v2=True)


# ----------------------------------------------------------------------------------------------------------- PVT v2
def pvt_v2_stages() -> Case:
    """The original PVT v2 -> timm (``pvt_v2.checkpoint_filter_fn``): 1-based compound names ``block1.0`` ->
    ``stages.0.blocks.0``, ``norm1`` -> ``stages.0.norm``, ``patch_embed2`` -> ``stages.1.downsample``,
    ``patch_embed1`` -> ``patch_embed``, ``mlp.dwconv.dwconv`` -> ``mlp.dwconv``."""
    dims, depths, sr, ratio, classes = (8, 16), (1, 2), (2, 1), 2, 10
    new: dict[str, tuple[int, ...]] = {}
    old_order: list[str] = []

    def embed(prefix: str, old: str, dim: int, cin: int, k: int) -> None:
        shapes = {
            f"{prefix}.proj.weight": (dim, cin, k, k),
            f"{prefix}.proj.bias": (dim,),
            **_norm(f"{prefix}.norm", dim),
        }
        new.update(shapes)
        old_order.extend(k.replace(prefix, old, 1) for k in shapes)

    embed("patch_embed", "patch_embed1", dims[0], 3, 7)
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        if stage:
            embed(f"stages.{stage}.downsample", f"patch_embed{stage + 1}", dim, dims[stage - 1], 3)
        for block in range(depth):
            p = f"stages.{stage}.blocks.{block}"
            shapes = {
                **_norm(f"{p}.norm1", dim),
                f"{p}.attn.q.weight": (dim, dim),
                f"{p}.attn.q.bias": (dim,),
                f"{p}.attn.kv.weight": (2 * dim, dim),
                f"{p}.attn.kv.bias": (2 * dim,),
                f"{p}.attn.proj.weight": (dim, dim),
                f"{p}.attn.proj.bias": (dim,),
            }
            if sr[stage] > 1:
                shapes[f"{p}.attn.sr.weight"] = (dim, dim, sr[stage], sr[stage])
                shapes[f"{p}.attn.sr.bias"] = (dim,)
                shapes.update(_norm(f"{p}.attn.norm", dim))
            shapes.update(_norm(f"{p}.norm2", dim))
            shapes.update(
                {
                    f"{p}.mlp.fc1.weight": (ratio * dim, dim),
                    f"{p}.mlp.fc1.bias": (ratio * dim,),
                    f"{p}.mlp.dwconv.weight": (ratio * dim, 1, 3, 3),
                    f"{p}.mlp.dwconv.bias": (ratio * dim,),
                    f"{p}.mlp.fc2.weight": (dim, ratio * dim),
                    f"{p}.mlp.fc2.bias": (dim,),
                }
            )
            new.update(shapes)
            old_order.extend(shapes)
        new.update(_norm(f"stages.{stage}.norm", dim))
        old_order.extend(_norm(f"stages.{stage}.norm", dim))
    new.update({"head.weight": (classes, dims[-1]), "head.bias": (classes,)})
    old_order += ["head.weight", "head.bias"]

    def old_name(key: str) -> str:
        key = key.replace("patch_embed.", "patch_embed1.")
        key = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}.", key)
        key = re.sub(r"^stages\.(\d+)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", key)
        return key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")

    return from_expected(
        "pvt_v2_stages",
        shapes=("in_segment", "index_move", "sequential"),
        source=f"{SOURCE} pvt_v2.py checkpoint_filter_fn (original PVT v2 checkpoints)",
        note="1-based compound indices: `block1.0` -> `stages.0.blocks.0`, `norm2` -> `stages.1.norm`,"
        " `patch_embed2` -> `stages.1.downsample`; `mlp.dwconv.dwconv` -> `mlp.dwconv` (a wrapper removed)",
        expected={k: seeded(k, s) for k, s in new.items()},
        links=[Link((old_name(k),), (k,)) for k in new],
        order=_ordered(old_name(k) for k in old_order),
    )


# ------------------------------------------------------------------------------------------------------- PoolFormer
def poolformer_v1_interleaved() -> Case:
    """PoolFormer v1 (sail-sg) -> timm MetaFormer (``metaformer.checkpoint_filter_fn``): one ``network`` list
    interleaves stages (even indices) and downsampling layers (odd): ``network.2i.j`` -> ``stages.i.blocks.j``,
    ``network.2i+1.proj`` -> ``stages.i+1.downsample.conv``; ``layer_scale_1`` -> ``layer_scale1.scale``,
    ``patch_embed.proj`` -> ``stem.conv``, ``norm``/``head`` -> ``head.norm``/``head.fc``."""
    dims, depths, ratio, classes = (4, 8, 12, 16), (1, 1, 2, 1), 2, 10
    new: dict[str, tuple[int, ...]] = {"stem.conv.weight": (dims[0], 3, 7, 7), "stem.conv.bias": (dims[0],)}
    old_order = ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        if stage:
            new[f"stages.{stage}.downsample.conv.weight"] = (dim, dims[stage - 1], 3, 3)
            new[f"stages.{stage}.downsample.conv.bias"] = (dim,)
            old_order += [f"network.{2 * stage - 1}.proj.{x}" for x in ("weight", "bias")]
        for block in range(depth):
            p = f"stages.{stage}.blocks.{block}"
            new.update(_norm(f"{p}.norm1", dim))
            new[f"{p}.layer_scale1.scale"] = (dim,)
            new.update(_norm(f"{p}.norm2", dim))
            new.update(
                {
                    f"{p}.mlp.fc1.weight": (ratio * dim, dim, 1, 1),
                    f"{p}.mlp.fc1.bias": (ratio * dim,),
                    f"{p}.mlp.fc2.weight": (dim, ratio * dim, 1, 1),
                    f"{p}.mlp.fc2.bias": (dim,),
                }
            )
            new[f"{p}.layer_scale2.scale"] = (dim,)
            old = f"network.{2 * stage}.{block}"
            old_order += [f"{old}.layer_scale_1", f"{old}.layer_scale_2"]  # the block's own parameters first
            old_order += [
                f"{old}.{m}.{x}" for m in ("norm1", "norm2", "mlp.fc1", "mlp.fc2") for x in ("weight", "bias")
            ]
    new.update(_norm("head.norm", dims[-1]))
    new.update({"head.fc.weight": (classes, dims[-1]), "head.fc.bias": (classes,)})
    old_order += ["norm.weight", "norm.bias", "head.weight", "head.bias"]

    def old_name(key: str) -> str:
        key = key.replace("stem.conv.", "patch_embed.proj.")
        key = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", lambda m: f"network.{2 * int(m[1]) - 1}.proj.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"network.{2 * int(m[1])}.{m[2]}.", key)
        key = re.sub(r"layer_scale([12])\.scale", r"layer_scale_\1", key)
        return key.replace("head.fc.", "head.").replace("head.norm.", "norm.")

    return from_expected(
        "poolformer_v1_interleaved",
        shapes=("index_map", "in_segment", "multi_segment"),
        source=f"{SOURCE} metaformer.py checkpoint_filter_fn (PoolFormer v1 checkpoints)",
        note="one `network` list interleaves stages and downsamplings: `network.2i.j` -> `stages.i.blocks.j`,"
        " `network.2i+1.proj` -> `stages.i+1.downsample.conv`; `layer_scale_1` -> `layer_scale1.scale`",
        expected={k: seeded(k, s) for k, s in new.items()},
        links=[Link((old_name(k),), (k,)) for k in new],
        order=_ordered(old_order),
    )


# ------------------------------------------------------------------------------------------------------------ DaViT
def davit_msft() -> Case:
    """Microsoft's DaViT -> timm (``davit.checkpoint_filter_fn``): ``patch_embeds.N`` -> ``stages.N.downsample``
    (``stem`` for 0, ``proj`` -> ``conv``), ``main_blocks.N`` -> ``stages.N.blocks``, ``cpe.0``/``cpe.1`` ->
    ``cpe1``/``cpe2`` (an index merged into its name), ``norms`` -> ``head.norm``, ``head`` -> ``head.fc``. Each
    block is a pair (spatial, channel) with identical key sets and shapes."""
    dims, depths, classes = (8, 16), (1, 1), 10
    new: dict[str, tuple[int, ...]] = {"stem.conv.weight": (dims[0], 3, 7, 7), "stem.conv.bias": (dims[0],)}
    new.update(_norm("stem.norm", dims[0]))
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        if stage:
            new.update(_norm(f"stages.{stage}.downsample.norm", dims[stage - 1]))
            new[f"stages.{stage}.downsample.conv.weight"] = (dim, dims[stage - 1], 2, 2)
            new[f"stages.{stage}.downsample.conv.bias"] = (dim,)
        for block in range(depth):
            for kind in (0, 1):  # spatial (window) attention, then channel attention
                p = f"stages.{stage}.blocks.{block}.{kind}"
                new.update({f"{p}.cpe1.proj.weight": (dim, 1, 3, 3), f"{p}.cpe1.proj.bias": (dim,)})
                new.update(_norm(f"{p}.norm1", dim))
                new.update(
                    {
                        f"{p}.attn.qkv.weight": (3 * dim, dim),
                        f"{p}.attn.qkv.bias": (3 * dim,),
                        f"{p}.attn.proj.weight": (dim, dim),
                        f"{p}.attn.proj.bias": (dim,),
                        f"{p}.cpe2.proj.weight": (dim, 1, 3, 3),
                        f"{p}.cpe2.proj.bias": (dim,),
                    }
                )
                new.update(_norm(f"{p}.norm2", dim))
                new.update(_mlp(f"{p}.mlp", dim, 4 * dim))
    new.update(_norm("head.norm", dims[-1]))
    new.update({"head.fc.weight": (classes, dims[-1]), "head.fc.bias": (classes,)})

    def old_name(key: str) -> str:
        key = key.replace("cpe1.", "cpe.0.").replace("cpe2.", "cpe.1.")
        key = key.replace("head.norm.", "norms.").replace("head.fc.", "head.")
        key = re.sub(r"^stem\.", "patch_embeds.0.", key).replace("patch_embeds.0.conv.", "patch_embeds.0.proj.")
        key = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"patch_embeds.\1.proj.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"patch_embeds.\1.", key)
        return re.sub(r"^stages\.(\d+)\.blocks\.", r"main_blocks.\1.", key)

    return from_expected(
        "davit_msft",
        shapes=("in_segment", "index_move"),
        source=f"{SOURCE} davit.py checkpoint_filter_fn (Microsoft checkpoints)",
        note="`cpe.0`/`cpe.1` -> `cpe1`/`cpe2` (index merged into a name), `main_blocks.N` -> `stages.N.blocks`,"
        " `patch_embeds.0` -> `stem`, `patch_embeds.N` -> `stages.N.downsample`; twin blocks with equal shapes",
        expected={k: seeded(k, s) for k, s in new.items()},
        links=[Link((old_name(k),), (k,)) for k in new],
    )


# ------------------------------------------------------------------------------------------------------- SwiftFormer
def _bn(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (dim,),
        f"{prefix}.bias": (dim,),
        f"{prefix}.running_mean": (dim,),
        f"{prefix}.running_var": (dim,),
        f"{prefix}.num_batches_tracked": (),
    }


def _conv(prefix: str, cout: int, cin: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def swiftformer_network() -> Case:
    """The original SwiftFormer -> timm (``swiftformer.checkpoint_filter_fn``): ``network.2i`` -> ``stages.i.blocks``,
    ``network.2i+1`` -> ``stages.i+1.downsample``; ``layer_scale`` parameters become ``LayerScale2d`` modules
    (``.layer_scale_1`` -> ``.layer_scale_1.gamma``); ``attn.Proj`` -> ``attn.proj`` (only the case changes);
    ``dist_head`` -> ``head_dist``; ``patch_embed`` -> ``stem``."""
    dims, depths, classes = (8, 16), (2, 2), 10
    new: dict[str, tuple[int, ...]] = {}
    old: list[str] = []  # the original's keys, in its registration order (own parameters first)
    stem = {**_conv("stem.0", dims[0] // 2, 3, 3), **_bn("stem.1", dims[0] // 2)}
    stem.update({**_conv("stem.3", dims[0], dims[0] // 2, 3), **_bn("stem.4", dims[0])})
    new.update(stem)
    old += [k.replace("stem.", "patch_embed.") for k in stem]
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        if stage:
            down = {**_conv(f"stages.{stage}.downsample.proj", dim, dims[stage - 1], 3)}
            down.update(_bn(f"stages.{stage}.downsample.norm", dim))
            new.update(down)
            old += [k.replace(f"stages.{stage}.downsample.", f"network.{2 * stage - 1}.") for k in down]
        for block in range(depth):
            p = f"stages.{stage}.blocks.{block}"
            o = f"network.{2 * stage}.{block}"
            if block < depth - 1:  # ConvEncoder
                keys = {
                    **_conv(f"{p}.dwconv", dim, 1, 3),
                    **_bn(f"{p}.norm", dim),
                    **_conv(f"{p}.pwconv1", 4 * dim, dim, 1),
                    **_conv(f"{p}.pwconv2", dim, 4 * dim, 1),
                    f"{p}.layer_scale.gamma": (dim, 1, 1),
                }
                new.update(keys)
                old += [f"{o}.layer_scale"] + [k.replace(p, o, 1) for k in keys if not k.endswith("layer_scale.gamma")]
                continue
            lr = f"{p}.local_representation"
            keys = {
                **_conv(f"{lr}.dwconv", dim, 1, 3),
                **_bn(f"{lr}.norm", dim),
                **_conv(f"{lr}.pwconv1", dim, dim, 1),
                **_conv(f"{lr}.pwconv2", dim, dim, 1),
                f"{lr}.layer_scale.gamma": (dim, 1, 1),
                f"{p}.attn.w_g": (dim, 1),
                f"{p}.attn.to_query.weight": (dim, dim),
                f"{p}.attn.to_query.bias": (dim,),
                f"{p}.attn.to_key.weight": (dim, dim),
                f"{p}.attn.to_key.bias": (dim,),
                f"{p}.attn.proj.weight": (dim, dim),
                f"{p}.attn.proj.bias": (dim,),
                f"{p}.attn.final.weight": (dim, dim),
                f"{p}.attn.final.bias": (dim,),
                **_bn(f"{p}.linear.norm1", dim),
                **_conv(f"{p}.linear.fc1", 4 * dim, dim, 1),
                **_conv(f"{p}.linear.fc2", dim, 4 * dim, 1),
                f"{p}.layer_scale_1.gamma": (dim, 1, 1),
                f"{p}.layer_scale_2.gamma": (dim, 1, 1),
            }
            new.update(keys)
            old += [f"{o}.layer_scale_1", f"{o}.layer_scale_2", f"{o}.local_representation.layer_scale"]
            old += [
                k.replace(p, o, 1).replace("attn.proj.", "attn.Proj.")
                for k in keys
                if not k.endswith("layer_scale.gamma") and ".layer_scale_" not in k
            ]
    new.update(_bn("norm", dims[-1]))
    new.update({"head.weight": (classes, dims[-1]), "head.bias": (classes,)})
    new.update({"head_dist.weight": (classes, dims[-1]), "head_dist.bias": (classes,)})
    old += [*_bn("norm", dims[-1]), "head.weight", "head.bias", "dist_head.weight", "dist_head.bias"]

    def old_name(key: str) -> str:
        key = key.replace("stem.", "patch_embed.").replace("head_dist.", "dist_head.")
        key = key.replace("attn.proj.", "attn.Proj.").replace(".gamma", "")
        key = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"network.{2 * int(m[1]) - 1}.", key)
        return re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"network.{2 * int(m[1])}.", key)

    return from_expected(
        "swiftformer_network",
        shapes=("index_map", "in_segment", "sequential"),
        source=f"{SOURCE} swiftformer.py checkpoint_filter_fn (original SwiftFormer checkpoints)",
        note="`network.2i.j` -> `stages.i.blocks.j`, `network.2i+1` -> `stages.i+1.downsample`; a parameter becomes"
        " a module (`layer_scale_1` -> `layer_scale_1.gamma`); `attn.Proj` -> `attn.proj` (case only);"
        " `dist_head` -> `head_dist`",
        expected={k: seeded(k, s) for k, s in new.items()},
        links=[Link((old_name(k),), (k,)) for k in new],
        order=_ordered(old),
    )


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f
    for f in (
        swin_downsample_offset,
        convnext_fb,
        convnext_v2_fb,
        pvt_v2_stages,
        poolformer_v1_interleaved,
        davit_msft,
        swiftformer_network,
    )
}
