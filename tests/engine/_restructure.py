"""Realistic module trees, the conversions real checkpoints apply to them, and the invariants keyguard must keep.

The generators behind ``test_properties_restructure.py``, its explicit regressions and the exploration script
(``explore_restructure.py``). A *model* is a key -> ``TensorInfo`` mapping laid out as PyTorch lays modules out
(numbered block lists, stages of different widths, BatchNorm leaf sets, norms of equal shapes inside a block, nested
``nn.Sequential`` containers, stems laid out unlike later stages). A *conversion* renames the model's keys the way a
legacy layout or a published conversion script does (every step keeps the truth: checkpoint key -> the expected key
it really is, or ``None``), and *noise* adds what real checkpoints carry besides (dropped keys, extra keys whose shape
equals a dropped one's, wrapper prefixes, stale copies).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st

import keyguard
from keyguard.engine._names import EQUIVALENT_NAMES
from keyguard.report import Report
from keyguard.sources import KeySet, TensorInfo

F32, I64 = "F32", "I64"

#: Names no published convention uses: renames to these carry no evidence at all.
ARBITRARY = ("zeta", "omega", "kappa", "theta", "sigma", "rho")
#: Names for a new container segment (an index moved under it, blocks regrouped under it).
CONTAINERS = ("levels", "stages", "branches", "groups")
#: Names for a flat list that interleaves two families.
FLAT_LISTS = ("features", "layers", "seq")
PREFIXES = ("module.", "_orig_mod.", "model.")
#: Tensors that sit in real checkpoints and in no model.
STRAYS = ("rotary_emb.inv_freq", "aux.weight", "ema.decay")

_DIGITS = re.compile(r"^[0-9]+$")
_NUMBERED_NAME = re.compile(r"^([a-z_]+?)([0-9]+)$")


def T(*shape: int, dtype: str = F32) -> TensorInfo:
    return TensorInfo(tuple(shape), dtype)


def equivalents(name: str) -> list[str]:
    """Other names published conventions give the module ``name`` (``EQUIVALENT_NAMES``), sorted."""
    out: set[str] = set()
    for group in EQUIVALENT_NAMES:
        if name in group:
            out.update(group)
    out.discard(name)
    return sorted(out)


# -- models ------------------------------------------------------------------------------------------------------

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
def models(draw: st.DrawFn) -> dict[str, TensorInfo]:
    """A model's state-dict keys, in registration order."""
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
    body = draw(st.sampled_from(["list", "stages", "families"]))
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


# -- cases -------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A model, a checkpoint made from it by the steps, and the truth."""

    expected: dict[str, TensorInfo]
    checkpoint: dict[str, TensorInfo]
    truth: dict[str, str | None]  # checkpoint key -> the expected key it really is (None: no expected key)
    steps: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # the conversion kinds applied (noise excluded)
    dropped: dict[str, str] = field(default_factory=dict)  # dropped expected key -> the name it had in the checkpoint
    ordered: bool = False  # both sources keep registration order (pickles, live modules)

    @staticmethod
    def of(expected: Mapping[str, TensorInfo], ordered: bool = False) -> Case:
        return Case(dict(expected), dict(expected), {k: k for k in expected}, ordered=ordered)

    def sources(self) -> tuple[KeySet | dict[str, TensorInfo], KeySet | dict[str, TensorInfo]]:
        """What to diagnose: plain mappings (order unknown), or key sets that say their order is registration
        order."""
        if not self.ordered:
            return self.checkpoint, self.expected
        return KeySet(self.checkpoint, "torch-pickle"), KeySet(self.expected, "module")

    def need(self) -> list[str]:
        """Checkpoint keys that must be renamed to load."""
        return [k for k, t in self.truth.items() if t is not None and t != k]


def rename(case: Case, fn: Callable[[str], str], step: str, kind: str | None) -> Case | None:
    """Apply ``fn`` to every checkpoint key; ``None`` when it changes nothing or is not one-to-one."""
    mapping = {k: fn(k) for k in case.checkpoint}
    if all(k == v for k, v in mapping.items()) or len(set(mapping.values())) != len(mapping):
        return None
    return replace(
        case,
        checkpoint={mapping[k]: info for k, info in case.checkpoint.items()},
        truth={mapping[k]: t for k, t in case.truth.items()},
        steps=[*case.steps, step],
        kinds=[*case.kinds, kind] if kind else case.kinds,
        dropped={e: fn(c) for e, c in case.dropped.items()},
    )


def _segments(case: Case) -> list[list[str]]:
    return [k.split(".") for k in case.checkpoint]


def _listed(case: Case) -> list[str]:
    """Segments followed by an index (``layers`` in ``layers.3``): the numbered lists."""
    found = {
        p[i] for p in _segments(case) for i in range(len(p) - 1) if _DIGITS.match(p[i + 1]) and not _DIGITS.match(p[i])
    }
    return sorted(found)


def _new_name(draw: st.DrawFn, old: str) -> str:
    """A published equivalent of ``old`` when there is one, else (or by choice) an arbitrary name."""
    options = equivalents(old)
    if options and draw(st.booleans()):
        return draw(st.sampled_from(options))
    return draw(st.sampled_from(ARBITRARY))


# Every conversion takes (draw, case) and returns the converted case, or None when it does not apply.


def c_rename(draw: st.DrawFn, case: Case) -> Case | None:
    """Several module segments renamed at once, wherever they occur (``attention.wq`` <- ``self_attn.q_proj``)."""
    names = sorted({s for p in _segments(case) for s in p[:-1] if not _DIGITS.match(s)})
    if not names:
        return None
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=min(3, len(names)), unique=True))
    table = {old: _new_name(draw, old) for old in chosen}

    def fn(key: str) -> str:
        parts = key.split(".")
        return ".".join([*(table.get(s, s) for s in parts[:-1]), parts[-1]])

    return rename(case, fn, "rename " + ", ".join(f"{a}->{b}" for a, b in table.items()), "rename")


def c_single(draw: st.DrawFn, case: Case) -> Case | None:
    """One module without numbers renamed (``embed_out`` <- ``lm_head``): a single-key (or single-module) rename."""
    modules = sorted({k.rsplit(".", 1)[0] for k in case.checkpoint if "." in k and not re.search(r"[0-9]", k)})
    if not modules:
        return None
    module = draw(st.sampled_from(modules))
    head, _, last = module.rpartition(".")
    new = f"{head}.{_new_name(draw, last)}" if head else _new_name(draw, last)
    return rename(
        case,
        lambda k: new + k[len(module) :] if k.rsplit(".", 1)[0] == module else k,
        f"single {module}->{new}",
        "single",
    )


def c_index_out(draw: st.DrawFn, case: Case) -> Case | None:
    """An index moves across segments: ``head.norms.N.weight`` <- ``head.levels.N.norm.weight``."""
    found = sorted(
        {
            p[i]
            for p in _segments(case)
            for i in range(len(p) - 3)
            if _DIGITS.match(p[i + 1]) and not _DIGITS.match(p[i]) and not _DIGITS.match(p[i + 2])
        }
    )
    if not found:
        return None
    outer = draw(st.sampled_from(found))

    def fn(key: str) -> str:
        p = key.split(".")
        for i in range(len(p) - 3):
            if p[i] == outer and _DIGITS.match(p[i + 1]) and not _DIGITS.match(p[i + 2]):
                return ".".join([*p[:i], p[i + 2] + "s", p[i + 1], *p[i + 3 :]])
        return key

    return rename(case, fn, f"index out of {outer}", "index_move")


def c_index_in(draw: st.DrawFn, case: Case) -> Case | None:
    """The other way: ``head.levels.N.norm.weight`` <- ``head.norms.N.weight``."""
    lists = _listed(case)
    if not lists:
        return None
    inner = draw(st.sampled_from(lists))
    outer = draw(st.sampled_from(CONTAINERS))
    single = inner[:-1] if inner.endswith("s") and len(inner) > 3 else inner

    def fn(key: str) -> str:
        p = key.split(".")
        for i in range(len(p) - 1):
            if p[i] == inner and _DIGITS.match(p[i + 1]):
                return ".".join([*p[:i], outer, p[i + 1], single, *p[i + 2 :]])
        return key

    return rename(case, fn, f"index into {outer}.N.{single}", "index_move")


def _first(p: list[str], name: str) -> int | None:
    for i in range(len(p) - 1):
        if p[i] == name and _DIGITS.match(p[i + 1]):
            return i
    return None


def c_regroup(draw: st.DrawFn, case: Case) -> Case | None:
    """A flat list regrouped into stages: ``stages.S.blocks.B`` <- ``blocks.K`` (or flattened, the other way)."""
    if draw(st.booleans()):  # flatten: A.X.S.Y.B -> A.Y.K
        pairs = sorted(
            {
                (p[i], p[i + 2])
                for p in _segments(case)
                for i in range(len(p) - 4)
                if _DIGITS.match(p[i + 1]) and _DIGITS.match(p[i + 3]) and not _DIGITS.match(p[i + 2])
            }
        )
        if not pairs:
            return None
        outer, inner = draw(st.sampled_from(pairs))
        seen = sorted(
            {
                (int(p[i + 1]), int(p[i + 3]))
                for p in _segments(case)
                for i in range(len(p) - 4)
                if p[i] == outer and p[i + 2] == inner and _DIGITS.match(p[i + 1]) and _DIGITS.match(p[i + 3])
            }
        )
        flat = {sb: k for k, sb in enumerate(seen)}

        def fn(key: str) -> str:
            p = key.split(".")
            for i in range(len(p) - 4):
                if p[i] == outer and p[i + 2] == inner and _DIGITS.match(p[i + 1]) and _DIGITS.match(p[i + 3]):
                    return ".".join([*p[:i], inner, str(flat[int(p[i + 1]), int(p[i + 3])]), *p[i + 4 :]])
            return key

        return rename(case, fn, f"flatten {outer}.S.{inner}.B", "regroup")
    lists = _listed(case)
    if not lists:
        return None
    name = draw(st.sampled_from(lists))
    values = sorted({int(p[i + 1]) for p in _segments(case) if (i := _first(p, name)) is not None})
    if len(values) < 2:
        return None
    cuts = sorted(draw(st.sets(st.integers(1, len(values) - 1), min_size=1, max_size=len(values) - 1)))
    where: dict[int, tuple[int, int]] = {}
    bounds = [0, *cuts, len(values)]
    for s in range(len(bounds) - 1):
        for b, v in enumerate(values[bounds[s] : bounds[s + 1]]):
            where[v] = (s, b)
    outer = draw(st.sampled_from(CONTAINERS))

    def fn2(key: str) -> str:
        p = key.split(".")
        i = _first(p, name)
        if i is None:
            return key
        s, b = where[int(p[i + 1])]
        return ".".join([*p[:i], outer, str(s), name, str(b), *p[i + 2 :]])

    return rename(case, fn2, f"regroup {name}.K into {outer}.S.{name}.B (cuts {cuts})", "regroup")


def c_merge(draw: st.DrawFn, case: Case) -> Case | None:
    """Segments merged or split: ``proj0`` <- ``proj.0``; ``norm.1`` <- ``norm1``."""
    if draw(st.booleans()):
        lists = _listed(case)
        if not lists:
            return None
        name = draw(st.sampled_from(lists))
        glue = draw(st.sampled_from(["", "_"]))

        def fn(key: str) -> str:
            p = key.split(".")
            i = _first(p, name)
            return key if i is None else ".".join([*p[:i], f"{name}{glue}{p[i + 1]}", *p[i + 2 :]])

        return rename(case, fn, f"merge {name}.N -> {name}{glue}N", "merge_split")
    numbered = sorted({m.group(1) for p in _segments(case) for s in p[:-1] if (m := _NUMBERED_NAME.match(s))})
    if not numbered:
        return None
    stem = draw(st.sampled_from(numbered))

    def split(key: str) -> str:
        p = key.split(".")
        out: list[str] = []
        for s in p[:-1]:
            m = _NUMBERED_NAME.match(s)
            out.extend([stem, m.group(2)] if m and m.group(1) == stem else [s])
        return ".".join([*out, p[-1]])

    return rename(case, split, f"split {stem}N -> {stem}.N", "merge_split")


def c_separator(draw: st.DrawFn, case: Case) -> Case | None:
    """Separators changed: ``down_blocks_0_attn`` <- ``down_blocks.0.attn``."""
    lists = _listed(case)
    if not lists:
        return None
    name = draw(st.sampled_from(lists))
    sep = draw(st.sampled_from(["_", "-"]))

    def fn(key: str) -> str:
        p = key.split(".")
        i = _first(p, name)
        if i is None:
            return key
        end = i + 3 if i + 3 < len(p) else i + 2  # the list, its index and the module below, when there is one
        return ".".join([*p[:i], sep.join(p[i:end]), *p[end:]])

    return rename(case, fn, f"separator {name}.N.x -> {name}{sep}N{sep}x", "separator")


def c_index_base(draw: st.DrawFn, case: Case) -> Case | None:
    """Indices 1-based (``layers.1`` <- ``layers.0``) or compound (``stage1-2`` <- ``stages.0.blocks.1``)."""
    base = draw(st.integers(0, 1))
    pairs = sorted(
        {
            (p[i], p[i + 2])
            for p in _segments(case)
            for i in range(len(p) - 4)
            if _DIGITS.match(p[i + 1]) and _DIGITS.match(p[i + 3]) and not _DIGITS.match(p[i + 2])
        }
    )
    if pairs and draw(st.booleans()):
        outer, inner = draw(st.sampled_from(pairs))
        single = outer[:-1] if outer.endswith("s") and len(outer) > 3 else outer

        def fn(key: str) -> str:
            p = key.split(".")
            for i in range(len(p) - 4):
                if p[i] == outer and p[i + 2] == inner and _DIGITS.match(p[i + 1]) and _DIGITS.match(p[i + 3]):
                    return ".".join([*p[:i], f"{single}{int(p[i + 1]) + base}-{int(p[i + 3]) + base}", *p[i + 4 :]])
            return key

        return rename(case, fn, f"compound {outer}.S.{inner}.B -> {single}S-B (+{base})", "index_base")
    lists = _listed(case)
    if not lists:
        return None
    name = draw(st.sampled_from(lists))

    def one(key: str) -> str:
        p = key.split(".")
        i = _first(p, name)
        return key if i is None else ".".join([*p[: i + 1], str(int(p[i + 1]) + 1), *p[i + 2 :]])

    return rename(case, one, f"1-based {name}", "index_base")


def c_interleave(draw: st.DrawFn, case: Case) -> Case | None:
    """One flat list interleaving two families: ``features.{0,2,4}`` / ``features.{1,3}`` <- ``blocks.N`` /
    ``transitions.N``."""
    families: dict[tuple[str, ...], dict[str, set[int]]] = {}
    for p in _segments(case):
        for i in range(len(p) - 1):
            if _DIGITS.match(p[i + 1]) and not _DIGITS.match(p[i]):
                families.setdefault(tuple(p[:i]), {}).setdefault(p[i], set()).add(int(p[i + 1]))
                break
    options = []
    for parent, lists in families.items():
        for a in sorted(lists):
            for b in sorted(lists):
                na, nb = len(lists[a]), len(lists[b])
                if a != b and lists[a] == set(range(na)) and lists[b] == set(range(nb)) and na - nb in (0, 1):
                    options.append((parent, a, b))
    if not options:
        return None
    parent, a, b = draw(st.sampled_from(options))
    flat = draw(st.sampled_from(FLAT_LISTS))
    depth = len(parent)

    def fn(key: str) -> str:
        p = key.split(".")
        if (
            tuple(p[:depth]) != parent
            or len(p) < depth + 2
            or p[depth] not in (a, b)
            or not _DIGITS.match(p[depth + 1])
        ):
            return key
        n = int(p[depth + 1])
        return ".".join([*p[:depth], flat, str(2 * n + (p[depth] == b)), *p[depth + 2 :]])

    return rename(case, fn, f"interleave {a}/{b} into {flat}", "interleave")


def c_sub_offset(draw: st.DrawFn, case: Case) -> Case | None:
    """An offset under one sub-module only: ``stages.{N+1}.downsample`` <- ``stages.N.downsample``."""
    found = sorted(
        {
            (p[i], p[i + 2])
            for p in _segments(case)
            for i in range(len(p) - 3)
            if _DIGITS.match(p[i + 1]) and not _DIGITS.match(p[i]) and not _DIGITS.match(p[i + 2])
        }
    )
    if not found:
        return None
    outer, sub = draw(st.sampled_from(found))
    offset = draw(st.sampled_from([1, -1, 2]))

    def fn(key: str) -> str:
        p = key.split(".")
        for i in range(len(p) - 3):
            if p[i] == outer and p[i + 2] == sub and _DIGITS.match(p[i + 1]):
                n = int(p[i + 1]) + offset
                return key if n < 0 else ".".join([*p[: i + 1], str(n), *p[i + 2 :]])
        return key

    return rename(case, fn, f"offset {offset:+} under {outer}.N.{sub}", "sub_offset")


def c_wrap(draw: st.DrawFn, case: Case) -> Case | None:
    """A layer wrapped in or unwrapped from an ``nn.Sequential``: ``fc.0.weight`` <-> ``fc.weight``."""
    modules = sorted({tuple(p[:-1]) for p in _segments(case) if len(p) > 1})
    if draw(st.booleans()):
        plain = sorted({re.sub(r"\.[0-9]+(?=\.|$)", ".N", ".".join(m)) for m in modules if not _DIGITS.match(m[-1])})
        if not plain:
            return None
        shape = draw(st.sampled_from(plain))
        pattern = re.compile("^" + re.escape(shape).replace(r"\.N", r"\.[0-9]+") + r"\.([^.]+)$")
        return rename(
            case,
            lambda k: k[: k.rfind(".")] + ".0" + k[k.rfind(".") :] if pattern.match(k) else k,
            f"wrap {shape}",
            "wrap",
        )
    lonely = []
    for m in modules:
        if _DIGITS.match(m[-1]) and m[-1] == "0":
            siblings = {n[len(m) - 1] for n in modules if len(n) >= len(m) and n[: len(m) - 1] == m[:-1]}
            if siblings == {"0"}:
                lonely.append(".".join(m))
    if not lonely:
        return None
    module = draw(st.sampled_from(lonely))
    return rename(
        case,
        lambda k: k[: len(module) - 2] + k[len(module) :] if k.startswith(module + ".") else k,
        f"unwrap {module}",
        "wrap",
    )


def c_reverse(draw: st.DrawFn, case: Case) -> Case | None:
    """A numbered list stored in reverse order under another name (``up.{3-i}`` <- ``up_blocks.i``)."""
    lists = _listed(case)
    if not lists:
        return None
    name = draw(st.sampled_from(lists))
    values = sorted({int(p[i + 1]) for p in _segments(case) if (i := _first(p, name)) is not None})
    if len(values) < 2:
        return None
    top = values[-1] + values[0]
    content: dict[int, set[tuple[str, object]]] = {}
    for p, info in zip(_segments(case), case.checkpoint.values()):
        if (i := _first(p, name)) is not None:
            content.setdefault(int(p[i + 1]), set()).add((".".join(p[: i + 1] + p[i + 2 :]), info.shape))
    if any(content[v] == content.get(top - v) for v in values if 2 * v != top):
        return None  # blocks alike index by index: a reversed order is invisible without the data
    new = _new_name(draw, name)

    def fn(key: str) -> str:
        p = key.split(".")
        i = _first(p, name)
        return key if i is None else ".".join([*p[:i], new, str(top - int(p[i + 1])), *p[i + 2 :]])

    return rename(case, fn, f"reverse {name} as {new}", "reverse")


def c_leaf_names(draw: st.DrawFn, case: Case) -> Case | None:
    """Norm leaves under their old names: ``LayerNorm.gamma`` / ``beta`` <- ``weight`` / ``bias``."""
    norms = sorted(
        {
            k.rsplit(".", 1)[0]
            for k, info in case.checkpoint.items()
            if k.endswith(".weight") and info.shape is not None and len(info.shape) == 1
        }
    )
    if not norms:
        return None
    chosen = set(draw(st.lists(st.sampled_from(norms), min_size=1, unique=True)))
    table = {"weight": "gamma", "bias": "beta"}

    def fn(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        return f"{module}.{table[leaf]}" if module in chosen and leaf in table else key

    return rename(case, fn, f"gamma/beta in {len(chosen)} norm(s)", "leaf_names")


CONVERSIONS: dict[str, Callable[[st.DrawFn, Case], Case | None]] = {
    "rename": c_rename,
    "single": c_single,
    "index_move": lambda d, c: (c_index_out if d(st.booleans()) else c_index_in)(d, c),
    "regroup": c_regroup,
    "merge_split": c_merge,
    "separator": c_separator,
    "index_base": c_index_base,
    "interleave": c_interleave,
    "sub_offset": c_sub_offset,
    "wrap": c_wrap,
    "reverse": c_reverse,
    "leaf_names": c_leaf_names,
}


# -- noise -------------------------------------------------------------------------------------------------------


def n_prefix(draw: st.DrawFn, case: Case) -> Case | None:
    prefix = draw(st.sampled_from(PREFIXES))
    return rename(case, lambda k: prefix + k, f"prefix {prefix}", None)


def n_drop(draw: st.DrawFn, case: Case) -> Case | None:
    if len(case.checkpoint) < 3:
        return None
    victims = draw(st.lists(st.sampled_from(sorted(case.checkpoint)), min_size=1, max_size=3, unique=True))
    dropped = dict(case.dropped)
    for v in victims:
        if case.truth[v] is not None:
            dropped[case.truth[v]] = v  # type: ignore[index]
    return replace(
        case,
        checkpoint={k: i for k, i in case.checkpoint.items() if k not in victims},
        truth={k: t for k, t in case.truth.items() if k not in victims},
        steps=[*case.steps, f"drop {victims}"],
        dropped=dropped,
    )


def n_extra(draw: st.DrawFn, case: Case) -> Case | None:
    """Extra checkpoint keys, each with the shape of a dropped key when there is one (the coincidence that
    makes a shape-forced match wrong): next to where the dropped key sat, at the top, or a stray buffer."""
    if case.dropped and draw(st.booleans()):
        expected, old = draw(st.sampled_from(sorted(case.dropped.items())))
        info = case.expected[expected]
        module, _, leaf = old.rpartition(".")
        parent = module.rpartition(".")[0]
        where = draw(st.sampled_from(["sibling", "top", "same_module"]))
        name = {
            "sibling": f"{parent + '.' if parent else ''}{draw(st.sampled_from(ARBITRARY))}.{leaf}",
            "top": f"{draw(st.sampled_from(ARBITRARY))}.{leaf}",
            "same_module": f"{module + '.' if module else ''}{draw(st.sampled_from(ARBITRARY))}",
        }[where]
    else:
        name = draw(st.sampled_from(STRAYS))
        info = draw(st.sampled_from(sorted(set(case.expected.values()), key=str)))
    if name in case.checkpoint:
        return None
    checkpoint = dict(case.checkpoint)
    keys = list(checkpoint)
    at = draw(st.integers(0, len(keys)))
    checkpoint = {k: checkpoint[k] for k in keys[:at]} | {name: info} | {k: checkpoint[k] for k in keys[at:]}
    return replace(case, checkpoint=checkpoint, truth={**case.truth, name: None}, steps=[*case.steps, f"extra {name}"])


def n_stale(draw: st.DrawFn, case: Case) -> Case | None:
    """A stale copy under the model's own name beside the renamed key (``norm.weight`` beside
    ``module.norm.weight``): the renamed key is the real one."""
    options = sorted(k for k, t in case.truth.items() if t is not None and t != k and t not in case.checkpoint)
    if not options:
        return None
    key = draw(st.sampled_from(options))
    target = case.truth[key]
    assert target is not None
    return replace(
        case,
        checkpoint={**case.checkpoint, target: case.checkpoint[key]},
        truth={**case.truth, target: None},
        steps=[*case.steps, f"stale copy {target}"],
    )


NOISE: dict[str, Callable[[st.DrawFn, Case], Case | None]] = {
    "prefix": n_prefix,
    "drop": n_drop,
    "extra": n_extra,
    "stale": n_stale,
}


@st.composite
def cases(
    draw: st.DrawFn, kinds: Sequence[str] = tuple(CONVERSIONS), max_conversions: int = 3, noise: bool = True
) -> Case:
    """A model and a checkpoint of it converted by 1..``max_conversions`` conversions of ``kinds``, then noise."""
    case = Case.of(draw(models()), ordered=draw(st.booleans()))
    for _ in range(draw(st.integers(1, max_conversions))):
        kind = draw(st.sampled_from(list(kinds)))
        converted = CONVERSIONS[kind](draw, case)
        if converted is not None:
            case = converted
    if noise:
        for kind in draw(st.lists(st.sampled_from(["drop", "extra", "drop", "extra", "stale", "prefix"]), max_size=3)):
            noisy = NOISE[kind](draw, case)
            if noisy is not None:
                case = noisy
    return case


# -- invariants --------------------------------------------------------------------------------------------------

#: Finding kinds whose fix renames keys by a rule inferred from the keys.
RULE_KINDS = frozenset(
    {"extra_prefix", "missing_prefix", "replaced_prefix", "renamed", "index_shift", "restructured", "renumbered"}
)
#: Finding kinds that may name keys that match as they stand.
EXACT_KINDS = frozenset({"shape_mismatch", "transposed", "dtype_mismatch", "contested_match"})


@dataclass(frozen=True)
class Violation:
    """One broken invariant: ``check`` (a..e), the keys, and what in the report did it (``by``)."""

    check: str
    message: str
    by: str = ""  # the finding kind / applicability / evidence behind it, for grouping counterexamples

    @property
    def signature(self) -> tuple[str, str]:
        return self.check, self.by


def diagnose(case: Case) -> Report:
    checkpoint, expected = case.sources()
    return keyguard.diagnose(checkpoint, expected)


def _finding_of(report: Report, key: str) -> Any:
    return next((f for f in report.findings if key in f.checkpoint_keys), None)


def _by(finding: Any) -> str:
    if finding is None:
        return "no finding"
    level = finding.fix.applicability.value if finding.fix is not None else "-"
    evidence: list[str] = []
    for change in finding.ctx.get("changes") or []:
        for item in change.get("evidence", []):
            if item["kind"] not in evidence:
                evidence.append(item["kind"])
    rules = sorted({type(r).__name__ for r in finding.fix.rules}) if finding.fix is not None else []
    return f"{finding.kind}/{level}/{'+'.join(rules)}/{'+'.join(sorted(evidence))}"


def numbers_out(key: str) -> str:
    """The key with its numbers collapsed: keys of one numbered group agree."""
    return re.sub(r"[0-9]+", "#", key)


def violations(case: Case, report: Report) -> list[Violation]:
    """Every invariant ``report`` breaks on ``case`` (empty when it keeps them all)."""
    out: list[Violation] = []
    ck, ex = case.checkpoint, case.expected
    exact = ck.keys() & ex.keys()
    # (a) no key goes under a wrong expected key, by either plan
    wrong_safe: set[str] = set()  # a key the safe plan maps wrong is not reported again for the unsafe plan
    for label, plan in (("safe", report.plan), ("unsafe", report.unsafe_plan)):
        try:
            final = plan.mapping(ck)
        except keyguard.PlanError as exc:
            out.append(Violation("a", f"the {label} plan collides: {exc}", "plan error"))
            continue
        for original, new in final.items():
            if new != original and new in ex and case.truth.get(original) != new and original not in wrong_safe:
                wrong_safe.add(original)
                out.append(
                    Violation(
                        "a",
                        f"{label} plan maps {original!r} onto {new!r}, but it is {case.truth.get(original)!r}",
                        f"{label}:{_by(_finding_of(report, original))}",
                    )
                )
    # (b) every key in at most one finding, none lost
    seen_c: list[str] = []
    seen_e: list[str] = []
    for finding in report.findings:
        seen_c.extend(finding.checkpoint_keys)
        seen_e.extend(finding.expected_keys)
    twice_c = sorted({k for k in seen_c if seen_c.count(k) > 1})
    twice_e = sorted({k for k in seen_e if seen_e.count(k) > 1})
    if twice_c:
        out.append(Violation("b", f"checkpoint keys in two findings: {twice_c}", "twice:checkpoint"))
    if twice_e:
        out.append(Violation("b", f"expected keys in two findings: {twice_e}", "twice:expected"))
    lost_c = sorted(set(ck) - set(seen_c) - exact)
    lost_e = sorted(set(ex) - set(seen_e) - exact)
    if lost_c:
        out.append(Violation("b", f"checkpoint keys missing from the report: {lost_c}", "lost:checkpoint"))
    if lost_e:
        out.append(Violation("b", f"expected keys missing from the report: {lost_e}", "lost:expected"))
    for finding in report.findings:
        if finding.kind not in EXACT_KINDS and set(finding.checkpoint_keys) & exact:
            out.append(Violation("b", f"a {finding.kind} finding names exact matches", f"exact in {finding.kind}"))
    # (c) a rule finding's examples are what the unsafe plan does
    for finding in report.findings:
        if finding.kind in RULE_KINDS and finding.fix is not None and finding.fix.applicability.value != "display_only":
            for example in finding.examples:
                if example.checkpoint is None:
                    continue
                got = report.unsafe_plan.rename_key(example.checkpoint)
                if got != example.expected:
                    out.append(
                        Violation(
                            "c",
                            f"{finding.kind} example {example.checkpoint!r} -> {example.expected!r}, plan: {got!r}",
                            _by(finding),
                        )
                    )
    # (d) candidates always have the checkpoint key's shape
    for finding in report.findings:
        for key, targets in (finding.ctx.get("candidates") or {}).items():
            info = ck.get(key)
            for target in targets:
                other = ex.get(target)
                if info is None or other is None or info.shape != other.shape:
                    out.append(
                        Violation(
                            "d",
                            f"{finding.kind} offers {target!r} {other and other.shape}"
                            f" for {key!r} {info and info.shape}",
                            finding.kind,
                        )
                    )
    # (e) no exact match kept silently when the truth says it is another tensor, where the report has the evidence
    # in hand: the key that really is that name is in the checkpoint, and either sits in the same numbered group
    # (an offset) or is offered that name somewhere in the report (a stale copy beside the renamed real key)
    mentioned = set(seen_c)
    offers = offered(case, report)
    owners = {t: k for k, t in case.truth.items() if t is not None and t != k}
    for key in sorted(exact - mentioned):
        owner = owners.get(key)
        if case.truth.get(key) == key or owner is None:
            continue
        if key not in offers.get(owner, ()) and numbers_out(owner) != numbers_out(key):
            continue
        try:
            kept = report.unsafe_plan.mapping(ck).get(key) == key
        except keyguard.PlanError:
            kept = True
        if kept:
            out.append(
                Violation(
                    "e",
                    f"{key!r} kept as it stands, but it is {case.truth.get(key)!r} ({owner!r} is {key!r})",
                    "kept silently",
                )
            )
    return out


def check(case: Case) -> None:
    """Assert every invariant on ``case``; the message names the steps that made it."""
    found = violations(case, diagnose(case))
    assert not found, "\n".join([*(f"({v.check}) {v.message}" for v in found), f"steps: {case.steps}"])


# -- coverage ----------------------------------------------------------------------------------------------------


@dataclass
class Coverage:
    need: int = 0
    safe: int = 0
    unsafe: int = 0
    explained: int = 0
    wrong: int = 0

    def add(self, other: Coverage) -> None:
        self.need += other.need
        self.safe += other.safe
        self.unsafe += other.unsafe
        self.explained += other.explained
        self.wrong += other.wrong


def offered(case: Case, report: Report) -> dict[str, set[str]]:
    """Checkpoint key -> every expected key the report offers it: by either plan, among a finding's candidates,
    in a finding's examples."""
    out: dict[str, set[str]] = {}
    for plan in (report.plan, report.unsafe_plan):
        for key in case.checkpoint:
            new = plan.rename_key(key)
            if new != key and new in case.expected:
                out.setdefault(key, set()).add(new)
    for finding in report.findings:
        for key, targets in (finding.ctx.get("candidates") or {}).items():
            out.setdefault(key, set()).update(targets)
        for example in finding.examples:
            if example.checkpoint and example.expected:
                out.setdefault(example.checkpoint, set()).update(example.expected.split(" | "))
    return out


def coverage(case: Case, report: Report) -> Coverage:
    """Of the keys that need a rename: mapped right by the safe plan, by the unsafe plan, and explained (the right
    target in a plan or among a finding's candidates or examples)."""
    need = case.need()
    result = Coverage(need=len(need))
    maps = []
    for plan in (report.plan, report.unsafe_plan):
        try:
            maps.append(plan.mapping(case.checkpoint))
        except keyguard.PlanError:
            maps.append({k: plan.rename_key(k) for k in case.checkpoint})
    offers = offered(case, report)
    for key in need:
        truth = case.truth[key]
        safe, unsafe = maps[0].get(key) == truth, maps[1].get(key) == truth
        result.safe += safe
        result.unsafe += unsafe
        result.explained += safe or unsafe or truth in offers.get(key, ())
        result.wrong += any(m.get(key) not in (key, truth) and m.get(key) in case.expected for m in maps)
    return result


# -- explicit cases ----------------------------------------------------------------------------------------------


def explicit(
    expected: Mapping[str, Iterable[int] | TensorInfo],
    checkpoint: Mapping[str, Iterable[int] | TensorInfo],
    truth: Mapping[str, str | None],
    *,
    ordered: bool = False,
) -> Case:
    """A case written out by hand: shapes as tuples (``()`` is a scalar int64 counter), truth for renamed keys
    (keys not listed are their own truth when the model has them, else extra)."""

    def info(value: Iterable[int] | TensorInfo) -> TensorInfo:
        if isinstance(value, TensorInfo):
            return value
        shape = tuple(value)
        return TensorInfo(shape, F32 if shape else I64)

    e = {k: info(v) for k, v in expected.items()}
    c = {k: info(v) for k, v in checkpoint.items()}
    t = {k: truth.get(k, k if k in e else None) for k in c}
    return Case(e, c, t, ordered=ordered)
