"""Conversions real checkpoints apply to a model's keys, and the noise they carry, with the truth tracked through
every step (checkpoint key -> the expected key it really is, or ``None``): the cases behind
``test_properties_restructure.py``, its explicit regressions (``explicit``) and ``explore_restructure.py``.

A *conversion* renames keys as a legacy layout or a published conversion script does; *noise* adds what real
checkpoints carry besides (dropped keys, extra keys whose shape equals a dropped one's, wrapper prefixes, stale
copies, partial conversions; ``_restructure_noise``). Models come from ``_restructure_trees``, the case and its one
operation (``rename``) from ``_restructure_case``, the invariants and coverage from ``_restructure_checks``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from _restructure_case import Case, explicit, rename
from _restructure_noise import NOISE
from _restructure_trees import ARBITRARY, models
from hypothesis import assume
from hypothesis import strategies as st

from keyguard.engine._names import EQUIVALENT_NAMES

__all__ = ["CONVERSIONS", "Case", "cases", "explicit", "rename"]

#: Names for a new container segment (an index moved under it, blocks regrouped under it).
CONTAINERS = ("levels", "stages", "branches", "groups")
#: Names for a flat list that interleaves two families.
FLAT_LISTS = ("features", "layers", "seq")

_DIGITS = re.compile(r"^[0-9]+$")
_NUMBERED_NAME = re.compile(r"^([a-z_]+?)([0-9]+)$")


def equivalents(name: str) -> list[str]:
    """Other names published conventions give the module ``name`` (``EQUIVALENT_NAMES``), sorted."""
    out: set[str] = set()
    for group in EQUIVALENT_NAMES:
        if name in group:
            out.update(group)
    out.discard(name)
    return sorted(out)


def _segments(case: Case) -> list[list[str]]:
    return [k.split(".") for k in case.checkpoint]


def _listed(case: Case) -> list[str]:
    """Segments followed by an index (``layers`` in ``layers.3``): the numbered lists."""
    found = {
        p[i] for p in _segments(case) for i in range(len(p) - 1) if _DIGITS.match(p[i + 1]) and not _DIGITS.match(p[i])
    }
    return sorted(found)


def _new_name(draw: st.DrawFn, old: str, case: Case) -> str:
    """A published equivalent of ``old`` when there is one, else (or by choice) an arbitrary name; never a name the
    model or the checkpoint already uses (that would make another module's name, not a new one)."""
    used = {s for key in (*case.expected, *case.checkpoint) for s in key.split(".")}
    options = [name for name in equivalents(old) if name not in used]
    if options and draw(st.booleans()):
        return draw(st.sampled_from(options))
    return draw(st.sampled_from([name for name in ARBITRARY if name not in used] or [f"{old}_renamed"]))


# Every conversion takes (draw, case) and returns the converted case, or None when it does not apply.


def c_rename(draw: st.DrawFn, case: Case) -> Case | None:
    """Several module segments renamed at once, wherever they occur (``attention.wq`` <- ``self_attn.q_proj``)."""
    names = sorted({s for p in _segments(case) for s in p[:-1] if not _DIGITS.match(s)})
    if not names:
        return None
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=min(3, len(names)), unique=True))
    table = {old: _new_name(draw, old, case) for old in chosen}
    if len(set(table.values())) < len(table) or set(table.values()) & set(names):
        return None  # two modules under one name, or a name another module has: a merge, not a rename

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
    new = f"{head}.{_new_name(draw, last, case)}" if head else _new_name(draw, last, case)
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
    deep: set[tuple[tuple[str, ...], str]] = set()  # lists of blocks (modules with sub-modules)
    for p in _segments(case):
        for i in range(len(p) - 1):
            if _DIGITS.match(p[i + 1]) and not _DIGITS.match(p[i]):
                families.setdefault(tuple(p[:i]), {}).setdefault(p[i], set()).add(int(p[i + 1]))
                if i + 3 < len(p):
                    deep.add((tuple(p[:i]), p[i]))
                break
    options = []
    for parent, lists in families.items():
        for a in sorted(lists):
            for b in sorted(lists):
                na, nb = len(lists[a]), len(lists[b])
                if (parent, a) not in deep or (parent, b) not in deep:
                    continue  # families of blocks, not a Sequential's layers
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

    for key, info in case.checkpoint.items():
        moved = fn(key)
        if moved != key and moved in case.checkpoint and case.checkpoint[moved].shape == info.shape:
            return None  # the offset is visible only where same-named keys hold other shapes (else: no evidence)
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
    shapes: dict[int, set[object]] = {}
    for p, info in zip(_segments(case), case.checkpoint.values()):
        if (i := _first(p, name)) is not None:
            shapes.setdefault(int(p[i + 1]), set()).add(info.shape)
    if any(shapes[v] & shapes.get(top - v, set()) for v in values if 2 * v != top):
        return None  # a tensor shaped alike in mirrored blocks: a reversed order is invisible without the data
    new = _new_name(draw, name, case)

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


#: The model body a conversion kind needs to apply at all (others apply to any model).
BODIES: dict[str, str] = {"interleave": "families", "reverse": "stages"}


@st.composite
def cases(
    draw: st.DrawFn, kinds: Sequence[str] = tuple(CONVERSIONS), max_conversions: int = 3, noise: bool = True
) -> Case:
    """A model and a checkpoint of it converted by 1..``max_conversions`` conversions of ``kinds`` (at least one
    applies), then noise."""
    body = BODIES.get(kinds[0]) if len(kinds) == 1 else None
    case = Case.of(draw(models(body)), ordered=draw(st.booleans()))
    wanted = draw(st.integers(1, max_conversions))
    applied = 0
    for _ in range(wanted + 4):  # a drawn conversion may not apply to this model: draw another
        kind = draw(st.sampled_from(list(kinds)))
        converted = CONVERSIONS[kind](draw, case)
        if converted is not None:
            case = converted
            applied += 1
            if applied == wanted:
                break
    assume(applied)
    if noise:
        for kind in draw(
            st.lists(st.sampled_from(["drop", "extra", "drop", "extra", "stale", "partial", "prefix"]), max_size=3)
        ):
            noisy = NOISE[kind](draw, case)
            if noisy is not None:
                case = noisy
    return case
