"""Noise real checkpoints carry besides their conversion, truth kept: dropped keys, extra keys shaped like dropped
ones (the coincidence that makes a shape-forced match wrong), wrapper prefixes, stale copies, partial conversions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from _restructure_case import Case, rename
from hypothesis import strategies as st

PREFIXES = ("module.", "_orig_mod.", "model.")
#: Tensors that sit in real checkpoints and in no model.
STRAYS = ("rotary_emb.inv_freq", "aux.weight", "ema.decay")
#: Names of extra modules: used by no model (an extra key never takes a real key's name by accident).
SPARE = ("spare", "unused", "orphan")


def n_prefix(draw: st.DrawFn, case: Case) -> Case | None:
    prefix = draw(st.sampled_from(PREFIXES))
    return rename(case, lambda k: prefix + k, f"prefix {prefix}", None)


def n_drop(draw: st.DrawFn, case: Case) -> Case | None:
    if len(case.checkpoint) < 3:
        return None
    victims = draw(st.lists(st.sampled_from(sorted(case.checkpoint)), min_size=1, max_size=3, unique=True))
    dropped = dict(case.dropped)
    for v in victims:
        target = case.truth[v]
        if target is not None and not any(t == target and k not in victims for k, t in case.truth.items()):
            dropped[target] = v  # nothing else in the checkpoint holds it now
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
            "sibling": f"{parent + '.' if parent else ''}{draw(st.sampled_from(SPARE))}.{leaf}",
            "top": f"{draw(st.sampled_from(SPARE))}.{leaf}",
            "same_module": f"{module + '.' if module else ''}{draw(st.sampled_from(SPARE))}",
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
    """A stale copy under the model's own name beside a key that only carries a wrapper prefix (``norm.weight``
    beside ``module.norm.weight``). Both hold that tensor (the copy's truth is its own name), so either may load;
    but the copy must not be kept silently while the report offers that name to the real key
    (``_restructure_checks``)."""
    options = sorted(
        k for k, t in case.truth.items() if t is not None and k.endswith("." + t) and t not in case.checkpoint
    )
    if not options:
        return None
    key = draw(st.sampled_from(options))
    target = case.truth[key]
    assert target is not None
    return replace(
        case,
        checkpoint={**case.checkpoint, target: case.checkpoint[key]},
        truth={**case.truth, target: target},
        steps=[*case.steps, f"stale copy {target}"],
    )


def n_partial(draw: st.DrawFn, case: Case) -> Case | None:
    """A partial conversion: a few keys keep (or were already given) the model's own name, so they match as they
    stand while the rest of their group is renamed: the open groups on both sides lose members."""
    options = sorted(k for k, t in case.truth.items() if t is not None and t != k and t not in case.checkpoint)
    if not options:
        return None
    chosen = set(draw(st.lists(st.sampled_from(options), min_size=1, max_size=3, unique=True)))
    return rename(case, lambda k: case.truth[k] or k if k in chosen else k, f"partial {sorted(chosen)}", None)


NOISE: dict[str, Callable[[st.DrawFn, Case], Case | None]] = {
    "prefix": n_prefix,
    "drop": n_drop,
    "extra": n_extra,
    "stale": n_stale,
    "partial": n_partial,
}
