"""The plan audit: a rule narrowed around some keys renames every other key exactly as before, and those keys only
through its other part; and the engine's plans never land a key the report leaves open."""

from __future__ import annotations

import pytest
import torch

from keyguard import diagnose
from keyguard.engine._audit import MAX_PIECES, _split
from keyguard.fixes._plan import Plan
from keyguard.fixes._rules import AddPrefix, MapKeys, Rename, ReplacePrefix, Rule, StripPrefix

KEYS = [
    "module.model.layers.0.attn.weight",
    "module.model.layers.0.attn.bias",
    "module.model.layers.1.attn.weight",
    "module.model.layers.1.mlp.weight",
    "module.model.norm.weight",
    "module.head.weight",
    "module.head",
    "other.weight",
]


def _renames(rules: list[Rule], names: list[str]) -> dict[str, str]:
    return {n: new for n, new in Plan(rules=rules).mapping(names).items() if new != n}


@pytest.mark.parametrize(
    ("rule", "excluded"),
    [
        (StripPrefix(prefix="module."), {"module.model.layers.1.attn.weight"}),
        (StripPrefix(prefix="module."), {"module.model.layers.0.attn.weight", "module.model.layers.0.attn.bias"}),
        (StripPrefix(prefix="module."), {"module.head"}),
        (ReplacePrefix(old="module.model.", new="backbone."), {"module.model.norm.weight"}),
        (AddPrefix(prefix="x."), {"other.weight"}),
        (AddPrefix(prefix="x."), {"module.head"}),  # shares its first segment with kept keys: explicit maps
        (Rename(pattern=r"(.*)\.attn\.(.*)", replacement=r"\1.attention.\2"), {"module.model.layers.1.attn.weight"}),
    ],
)
def test_a_split_rule_renames_the_others_as_before_and_the_excluded_only_through_its_other_part(
    rule: Rule, excluded: set[str]
) -> None:
    whole = _renames([rule], KEYS)
    moved = list(whole)
    assert excluded <= set(moved)
    kept, out = _split(rule, moved, set(moved) - excluded, excluded)
    assert _renames(kept, KEYS) == {k: v for k, v in whole.items() if k not in excluded}
    assert _renames(out, KEYS) == {k: v for k, v in whole.items() if k in excluded}
    assert len(kept) <= MAX_PIECES + 1 and len(out) <= MAX_PIECES + 1


def test_a_prefix_split_into_too_many_pieces_becomes_one_explicit_map() -> None:
    keys = [f"module.layers.{i}.{leaf}" for i in range(40) for leaf in ("a.weight", "b.weight")]
    excluded = {k for k in keys if k.endswith("a.weight")}
    kept, out = _split(StripPrefix(prefix="module."), keys, set(keys) - excluded, excluded)
    assert [type(r) for r in kept] == [MapKeys] and [type(r) for r in out] == [MapKeys]
    assert _renames(kept, keys) == {k: k[len("module.") :] for k in keys if k not in excluded}


def test_names_neither_kept_nor_left_go_with_the_piece_that_keeps_the_rules_few() -> None:
    keep = {"module.model.layers.0.attn.weight"}
    leave = {"module.model.layers.1.attn.weight"}
    kept, out = _split(StripPrefix(prefix="module."), KEYS[:-1], keep, leave)
    assert [r.describe() for r in out] == ["replace prefix 'module.model.layers.1.' with 'model.layers.1.'"]
    renamed = _renames([*kept, *out], KEYS)
    assert renamed == _renames([StripPrefix(prefix="module.")], KEYS)


def _state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def test_a_wrapper_on_a_one_based_list_lands_no_block_on_its_namesake() -> None:
    """DDP's ``module.`` on every key, a 1-based list, gamma/beta norms: stripping the prefix puts blocks 1 and 2 on
    blocks 1 and 2, while block 1 holds a norm only block 0 has. The safe plan keeps the strip where it is right
    and lands no block on its namesake, nor does the unsafe plan; block 1's lone norm is offered block 0's."""
    expected = {
        "patch_embed.proj.bias": (8,),
        "patch_embed.norm.bias": (8,),
        "model.layers.0.attention.output.LayerNorm.bias": (8,),
        "model.layers.0.intermediate.dense.weight": (16, 8),
        "model.layers.1.intermediate.dense.weight": (16, 8),
        "model.layers.1.output.LayerNorm.bias": (8,),
        "model.layers.2.intermediate.dense.weight": (16, 8),
        "norm.weight": (8,),
    }
    checkpoint = {
        "module.patch_embed.proj.bias": (8,),
        "module.patch_embed.norm.beta": (8,),
        "module.model.layers.1.attention.output.LayerNorm.beta": (8,),
        "module.model.layers.1.intermediate.dense.weight": (16, 8),
        "module.model.layers.2.intermediate.dense.weight": (16, 8),
        "module.norm.gamma": (8,),
    }
    report = diagnose(_state(checkpoint), _state(expected))
    safe = report.plan.mapping(checkpoint)
    assert safe["module.patch_embed.proj.bias"] == "patch_embed.proj.bias"
    assert safe["module.norm.gamma"] == "norm.weight"
    for i in (1, 2):
        assert safe[f"module.model.layers.{i}.intermediate.dense.weight"] not in expected
    unsafe = report.unsafe_plan.mapping(checkpoint)
    for key, target in unsafe.items():
        if key.startswith("module.model.layers.") and target in expected:
            assert target.split(".")[2] == str(int(key.split(".")[3]) - 1), (key, target)
    layer_norm = "module.model.layers.1.attention.output.LayerNorm.beta"
    offered = [f for f in report.findings if layer_norm in f.checkpoint_keys]
    assert offered and "model.layers.0.attention.output.LayerNorm.bias" in offered[0].expected_keys
    assert all(rule.applicability.value != "display_only" for rule in report.unsafe_plan.rules)
