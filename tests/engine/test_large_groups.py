"""Numbered groups a rule lands only partly: two rules that fill a group between them land it, and a group left
doubtful stays proportional to the keys in the report (each key is offered a bounded number of readings) with every
expected key accounted for."""

from __future__ import annotations

import re
from pathlib import Path

from keyguard import diagnose
from keyguard.engine._offsets import _NEAREST
from keyguard.fixes._plan import Plan
from keyguard.sources import TensorInfo


def _group(blocks: int) -> dict[str, TensorInfo]:
    return {f"model.layers.{i // 10}.block.{i % 10}.attn.weight": TensorInfo((4, 4), "F32") for i in range(blocks)}


def test_two_rules_that_fill_a_group_between_them_land_it() -> None:
    """Odd layers under an unknown prefix, even layers with a segment renamed, all of one shape: the prefix alone
    lands half of a numbered group while the other half stays open (an offset?), but the rename lands exactly that
    half, every block under its own numbers."""
    expected = _group(200)
    truth = {
        ("trunk." + key) if (i // 10) % 2 else key.replace(".attn.", ".attention."): key
        for i, key in enumerate(expected)
    }
    report = diagnose(dict(zip(truth, expected.values())), expected)
    assert Plan(rules=report.plan.rules).mapping(list(truth)) == truth
    assert report.summary.coverage_after == 1.0
    assert {f.code for f in report.findings} == {"KG404", "KG101", "KG201"}


def test_a_doubtful_group_offers_each_key_the_nearest_blocks_only() -> None:
    """Odd layers under an unknown prefix, even layers under names no rule can read: the prefix lands half of the
    group while the other half stays open on both sides, so the group is shown with every reading."""
    expected = _group(1000)
    checkpoint = {
        ("trunk." + key) if (i // 10) % 2 else f"legacy_{i}.w": info for i, (key, info) in enumerate(expected.items())
    }
    report = diagnose(checkpoint, expected)
    offered = [
        readings for f in report.findings if f.code == "KG403" for readings in f.ctx.get("candidates", {}).values()
    ]
    assert offered, [f.code for f in report.findings]
    # the rule's own reading and the nearest open blocks: every open block offered to every key grew with the
    # square of the group (1,000 keys: 500 readings each)
    assert max(map(len, offered)) <= 1 + _NEAREST
    in_report = {k for f in report.findings for k in f.expected_keys} | {k for r in offered for k in r}
    assert in_report == set(expected)  # blocks offered to no key are reported, as missing


def _prefixed_pair(blocks: int) -> tuple[dict[str, TensorInfo], dict[str, TensorInfo]]:
    """A model's keys and a checkpoint of them under ``module.``, in the same order; a few pairs differ in shape or
    dtype (reported), the rest agree."""
    expected = {
        f"model.layers.{i}.mlp.w{j}.weight": TensorInfo((4, 4), "BF16") for i in range(blocks) for j in range(3)
    }
    checkpoint = {"module." + key: info for key, info in expected.items()}
    checkpoint["module.model.layers.3.mlp.w1.weight"] = TensorInfo((4, 5), "BF16")
    checkpoint["module.model.layers.7.mlp.w2.weight"] = TensorInfo((4, 4), "F32")
    return checkpoint, expected


def test_sides_in_one_order_are_read_in_order_with_the_same_report() -> None:
    """When both sides list their keys in one order, a prefix rule's landing and the shapes of its pairs are read
    in order instead of looked up key by key (on millions of keys every lookup misses the cache). The report is the
    one the lookups give: the model's keys in another order take them."""
    checkpoint, expected = _prefixed_pair(200)
    in_order = diagnose(checkpoint, expected)
    shuffled = diagnose(checkpoint, dict(reversed(list(expected.items()))))
    assert in_order.model_dump() == shuffled.model_dump()
    codes = {f.code: f for f in in_order.findings}
    assert codes["KG101"].count == len(checkpoint) - 1  # all but the pair of another shape
    assert codes["KG101"].ctx["dtype_casts"] == 1
    assert codes["KG301"].checkpoint_keys == ["module.model.layers.3.mlp.w1.weight"]


def test_every_addition_to_the_open_expected_keys_goes_through_reopen() -> None:
    """The rounds skip looking up each target of a rule that landed every open expected key, in order, when the
    open set is the one the rule was evaluated against: same object, same size, nothing put back since (keys only
    leave it otherwise). That holds only while every addition goes through ``_reopen``, which counts them."""
    import keyguard.engine

    engine = Path(keyguard.engine.__file__).parent
    adding = re.compile(r"open_e\.(add|update|symmetric_difference_update)\(|open_e\s*(\|=|\^=)")
    found = [
        f"{path.name}:{number}"
        for path in sorted(engine.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if adding.search(line) and not line.strip().startswith("self.open_e.update(keys)")
    ]
    assert found == []
