"""Realistic module trees for the restructure properties: a model is a key -> ``TensorInfo`` mapping laid out as
PyTorch lays modules out (numbered block lists, stages of different widths, BatchNorm leaf sets, norms of equal shapes
inside a block, nested ``nn.Sequential`` containers, stems laid out unlike later stages, a token embedding and an LM
head of one shape). Shapes are distinct where real models have them distinct and equal where real models have them
equal: those coincidences are what a shape-forced match must survive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from hypothesis import strategies as st

from keyguard.sources import TensorInfo

F32, I64 = "F32", "I64"

#: Names no published convention uses: renames to these carry no evidence at all.
ARBITRARY = ("zeta", "omega", "kappa", "theta", "sigma", "rho")


def T(*shape: int, dtype: str = F32) -> TensorInfo:
    return TensorInfo(tuple(shape), dtype)


Module = dict[str, TensorInfo]  # leaf -> info, or a relative path -> info


def linear(out: int, inp: int, bias: bool = True) -> Module:
    return {"weight": T(out, inp), **({"bias": T(out)} if bias else {})}


def norm(width: int, bias: bool = True) -> Module:
    return {"weight": T(width), **({"bias": T(width)} if bias else {})}


def batchnorm(width: int) -> Module:
    return {
        "weight": T(width),
        "bias": T(width),
        "running_mean": T(width),
        "running_var": T(width),
        "num_batches_tracked": T(dtype=I64),
    }


def conv(out: int, inp: int, k: int = 3, bias: bool = False) -> Module:
    return {"weight": T(out, inp, k, k), **({"bias": T(out)} if bias else {})}


def nest(**modules: Module) -> Module:
    return {f"{name}.{leaf}": info for name, module in modules.items() for leaf, info in module.items()}


def _llama(w: int) -> Module:
    return nest(
        **{
            "self_attn.q_proj": linear(w, w, False),
            "self_attn.k_proj": linear(w, w, False),
            "self_attn.v_proj": linear(w, w, False),
            "self_attn.o_proj": linear(w, w, False),
            "mlp.gate_proj": linear(2 * w, w, False),
            "mlp.up_proj": linear(2 * w, w, False),
            "mlp.down_proj": linear(w, 2 * w, False),
            "input_layernorm": norm(w, False),
            "post_attention_layernorm": norm(w, False),
        }
    )


def _bert(w: int) -> Module:
    return nest(
        **{
            "attention.self.query": linear(w, w),
            "attention.self.key": linear(w, w),
            "attention.self.value": linear(w, w),
            "attention.output.dense": linear(w, w),
            "attention.output.LayerNorm": norm(w),
            "intermediate.dense": linear(2 * w, w),
            "output.dense": linear(w, 2 * w),
            "output.LayerNorm": norm(w),
        }
    )


def _vit(w: int) -> Module:
    return nest(
        **{
            "norm1": norm(w),
            "attn.qkv": linear(3 * w, w),
            "attn.proj": linear(w, w),
            "norm2": norm(w),
            "mlp.fc1": linear(2 * w, w),
            "mlp.fc2": linear(w, 2 * w),
        }
    )


def _resnet(w: int) -> Module:
    return nest(conv1=conv(w, w), bn1=batchnorm(w), conv2=conv(w, w), bn2=batchnorm(w))


def _convnext(w: int) -> Module:
    block = nest(dwconv=conv(w, 1, 7, True), norm=norm(w), pwconv1=linear(2 * w, w), pwconv2=linear(w, 2 * w))
    block["gamma"] = T(w)  # a layer-scale parameter: the leaf ``gamma`` reads as a norm weight
    return block


BLOCKS: dict[str, Callable[[int], Module]] = {
    "llama": _llama,
    "bert": _bert,
    "vit": _vit,
    "resnet": _resnet,
    "convnext": _convnext,
}
#: Sub-module names of random blocks: conventions' names (with their equivalents in play) and arbitrary ones.
BLOCK_NAMES = ("q_proj", "proj", "fc1", "fc2", "norm1", "norm2", "conv1", "attn", "mlp", "ln", "gate", *ARBITRARY[:2])
#: What a random sub-module holds, at block width w.
PIECES: dict[str, Callable[[int], Module]] = {
    "square": lambda w: linear(w, w),
    "up": lambda w: linear(2 * w, w),
    "down": lambda w: linear(w, 2 * w),
    "norm": norm,
    "bn": batchnorm,
    "conv": lambda w: conv(w, w),
}


@st.composite
def blocks(draw: st.DrawFn) -> Callable[[int], Module]:
    """A block kind: one of the real layouts, or sub-modules with random names and (often equal) shapes."""
    kind = draw(st.sampled_from(["random", *BLOCKS]))
    if kind != "random":
        return BLOCKS[kind]
    names = draw(st.lists(st.sampled_from(BLOCK_NAMES), min_size=2, max_size=4, unique=True))
    pieces = [draw(st.sampled_from(sorted(PIECES))) for _ in names]
    return lambda w: nest(**{name: PIECES[piece](w) for name, piece in zip(names, pieces)})


def _place(keys: dict[str, TensorInfo], prefix: str, module: Mapping[str, TensorInfo]) -> None:
    for leaf, info in module.items():
        keys[f"{prefix}.{leaf}" if prefix else leaf] = info


@st.composite
def models(draw: st.DrawFn, body: str | None = None) -> dict[str, TensorInfo]:
    """A model's state-dict keys, in registration order; ``body`` chooses its main part (``list`` of blocks,
    ``stages`` of blocks, two ``families`` of numbered modules), drawn when ``None``."""
    w = draw(st.sampled_from([4, 8]))
    keys: dict[str, TensorInfo] = {}
    extras = draw(
        st.lists(
            st.sampled_from(
                ["embed", "stem", "patch_embed", "final_norm", "head_norms", "head_fc", "proj_seq", "lm", "classifier"]
            ),
            max_size=3,
            unique=True,
        )
    )
    if "embed" in extras:
        keys["embed_tokens.weight"] = T(16, w)
    if "stem" in extras:  # a stem laid out conv-then-norm, as a named module or a Sequential
        if draw(st.booleans()):
            _place(keys, "stem", nest(conv=conv(w, 3), norm=batchnorm(w)))
        else:
            _place(keys, "stem", nest(**{"0": conv(w, 3), "1": batchnorm(w)}))
    if "patch_embed" in extras:
        _place(keys, "patch_embed", nest(proj=conv(w, 3, 2, True), norm=norm(w)))
    body = body or draw(st.sampled_from(["list", "stages", "families"]))
    block = draw(blocks())
    root = draw(st.sampled_from(["model", "encoder", "backbone", ""]))
    at = f"{root}." if root else ""
    width = w
    if body == "list":
        name = draw(st.sampled_from(["layers", "blocks", "h"]))
        for i in range(draw(st.integers(1, 4))):
            _place(keys, f"{at}{name}.{i}", block(w))
    elif body == "stages":
        stages = draw(st.integers(1, 3))
        widen = draw(st.booleans())  # stages of different widths, or all alike
        for s in range(stages):
            width = w * 2**s if widen else w
            if s and draw(st.booleans()):  # later stages open with a norm-then-conv downsample
                _place(keys, f"{at}stages.{s}.downsample", nest(**{"0": norm(width // 2 if widen else w)}))
                _place(keys, f"{at}stages.{s}.downsample", nest(**{"1": conv(width, width // 2 if widen else w, 2)}))
            for b in range(draw(st.integers(1, 3))):
                _place(keys, f"{at}stages.{s}.blocks.{b}", block(width))
    else:  # two families, as DenseNet's blocks and transitions
        count = draw(st.integers(1, 3))
        for i in range(count):
            _place(keys, f"{at}blocks.{i}", block(w))
            if i < count - 1 or draw(st.booleans()):
                _place(keys, f"{at}transitions.{i}", nest(norm=batchnorm(w), conv=conv(w, w, 1)))
    if "final_norm" in extras:
        _place(keys, "norm", norm(width, draw(st.booleans())))
    if "head_norms" in extras:
        levels = draw(st.integers(1, 3))
        widen = draw(st.booleans())
        for n in range(levels):
            _place(keys, f"head.norms.{n}", norm(w * 2**n if widen else w))
    if "head_fc" in extras:
        _place(keys, "head.fc", linear(10, width))
    if "classifier" in extras:  # a Sequential holding one layer: ``classifier.0``
        _place(keys, "classifier.0", linear(10, width))
    if "proj_seq" in extras:  # nn.Sequential(Linear, GELU, Linear): indices 0 and 2
        _place(keys, "head.proj", nest(**{"0": linear(width, width), "2": linear(10, width)}))
    if "lm" in extras:
        keys["lm_head.weight"] = T(16, width)  # the shape of the token embedding: the classic coincidence
    return keys
