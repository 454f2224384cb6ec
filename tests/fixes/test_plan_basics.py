"""``Plan``: storage (keyguard.plan/v1), every renaming rule, collisions, preview, selection, bad plan files."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from keyguard import PlanError
from keyguard.fixes import (
    PLAN_FORMAT,
    AddPrefix,
    Applicability,
    Drop,
    Fuse,
    MapKeys,
    Plan,
    Remap,
    Rename,
    ReplacePrefix,
    ShiftIndex,
    Split,
    StripPrefix,
    Transpose,
)

EVERY_RULE = [
    StripPrefix(prefix="module.", reason="KG101"),
    AddPrefix(prefix="bert.", only=["embeddings", "encoder"], reason="KG102"),
    ReplacePrefix(old="transformer.", new="model.", reason="KG103"),
    Rename(pattern=r"((?:.*\.)?)gamma((?:\..*)?)", replacement=r"\g<1>weight\g<2>", old="gamma", new="weight"),
    ShiftIndex(prefix="model.layers.", offset=-4, reason="KG202"),
    Remap(old="layers.{0}.attention.wq.weight", new="model.layers.{0}.self_attn.q_proj.weight", reason="KG203"),
    Remap(old="blocks.{0}.w", new="stages.{0}.blocks.{1}.w", indices={"0": [0, 0], "1": [0, 1], "2": [1, 0]}),
    Remap(old="a.{0}.b", new="c.{0}.d", origin="hint", reason="KG203"),
    MapKeys(mapping={"a.b": "c.d"}, applicability=Applicability.unsafe),
    Transpose(keys=["h.0.attn.c_attn.weight"]),
    Split(source="qkv.weight", targets=["q.weight", "k.weight", "v.weight"], sizes=[4, 2, 2]),
    Fuse(sources=["e.0.w1", "e.0.w3", "e.1.w1", "e.1.w3"], target="experts.gate_up", stack=True, parts=2),
    Drop(keys=["optimizer.step"]),
    Rename(pattern="x", replacement="y", applicability=Applicability.display_only),
]


# -- storage -----------------------------------------------------------------------------------------------------


def test_json_round_trip_through_a_file(tmp_path: Path) -> None:
    plan = Plan(rules=EVERY_RULE)
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == PLAN_FORMAT == "keyguard.plan/v1"
    assert [rule["op"] for rule in data["rules"]] == [rule.op for rule in EVERY_RULE]
    assert data["rules"][0] == {
        "applicability": "safe",
        "reason": "KG101",
        "origin": "inferred",
        "op": "strip_prefix",
        "prefix": "module.",
    }
    assert [r["origin"] for r in data["rules"] if r["op"] == "remap"] == ["inferred", "inferred", "hint"]
    loaded = Plan.load(path)
    assert loaded == plan
    assert [type(r) for r in loaded.rules] == [type(r) for r in EVERY_RULE]
    keys = ["module.x", "gamma", "model.layers.7.w", "embeddings.y", "transformer.z", "a.b", "blocks.2.w", "a.5.b"]
    assert loaded.mapping(keys) == plan.mapping(keys)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left beside it


def test_a_hand_written_plan_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": "keyguard.plan/v1", "rules": [{"op": "strip_prefix", "prefix": "m."}]}))
    plan = Plan.load(path)
    assert plan.rules == [StripPrefix(prefix="m.")]
    assert plan.rules[0].applicability is Applicability.safe


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"is not valid JSON"),
        ("[1, 2]", r"holds a JSON list, expected an object"),
        ('{"rules": []}', r"not a keyguard plan \(format is None\)"),
        ('{"format": "keyguard.keys/v1", "rules": []}', r"not a keyguard plan \(format is 'keyguard.keys/v1'\)"),
        ('{"format": "keyguard.plan/v1", "rules": [{"op": "teleport"}]}', r"invalid plan: rules\.0"),
        ('{"format": "keyguard.plan/v1", "rules": [{"op": "strip_prefix"}]}', r"rules\.0\.strip_prefix\.prefix"),
        (
            '{"format": "keyguard.plan/v1", "rules": [{"op": "rename", "pattern": "(", "replacement": ""}]}',
            r"invalid regular expression '\('",
        ),
        (
            '{"format": "keyguard.plan/v1", "rules": [{"op": "strip_prefix", "prefix": "a.", "colour": "red"}]}',
            r"colour",
        ),
        (
            '{"format": "keyguard.plan/v1", "rules": [{"op": "map", "mapping": {"a": "b"}, "applicability": "sure"}]}',
            r"applicability",
        ),
        ('{"format": "keyguard.plan/v1", "rules": [], "rules": []}', r"lists the key 'rules' more than once"),
        ('{"format": "keyguard.plan/v1", "rules": [], "comment": "mine"}', r"comment"),
    ],
)
def test_invalid_plan_files_are_refused_clearly(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(PlanError, match=message) as caught:
        Plan.load(path)
    text = str(caught.value)
    assert text.startswith(str(path))  # names the file
    assert "\n" not in text and "Traceback" not in text and "pydantic" not in text.lower()


def test_missing_and_directory_plan_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no such file"):
        Plan.load(tmp_path / "absent.json")
    with pytest.raises(PlanError, match="is a directory"):
        Plan.load(tmp_path)


# -- each renaming rule ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "cases"),
    [
        (StripPrefix(prefix="module."), {"module.a.w": "a.w", "a.module.w": None, "module": None}),
        (AddPrefix(prefix="model."), {"layers.0.w": "model.layers.0.w", "w": "model.w"}),
        (
            AddPrefix(prefix="bert.", only=["embeddings", "encoder"]),
            {"encoder.layer.0.w": "bert.encoder.layer.0.w", "encoder": "bert.encoder", "classifier.w": None},
        ),
        (
            AddPrefix(prefix="bert.", only=["encoder"]),
            {"encoder_extra.w": None, "pooler.encoder.w": None},
        ),
        (
            ReplacePrefix(old="language_model.model.", new="model.language_model."),
            {"language_model.model.layers.0.w": "model.language_model.layers.0.w", "model.language_model.w": None},
        ),
        (
            Rename(pattern=r"((?:.*\.)?)gamma((?:\..*)?)", replacement=r"\g<1>weight\g<2>", old="gamma", new="weight"),
            {"enc.LayerNorm.gamma": "enc.LayerNorm.weight", "gamma": "weight", "enc.gammas": None},
        ),
        (
            Rename(pattern=r"((?:.*\.)?lora_A)\.(weight(?:\..*)?)", replacement=r"\g<1>.default.\g<2>", new="default"),
            {"m.q.lora_A.weight": "m.q.lora_A.default.weight", "m.q.lora_B.weight": None},
        ),
        (
            Rename(pattern=r"(.*)\.h\.([0-9]+)\.(.*)", replacement=r"\1.layers.\2.\3"),
            {"transformer.h.3.attn.w": "transformer.layers.3.attn.w", "transformer.h.x.w": None},
        ),
        (
            ShiftIndex(prefix="model.layers.", offset=-4),
            {
                "model.layers.4.mlp.w": "model.layers.0.mlp.w",
                "model.layers.17": "model.layers.13",
                "model.layers.3.w": None,  # would be negative
                "model.layers.x.w": None,
                "other.layers.5.w": None,
            },
        ),
        (ShiftIndex(prefix="blocks.", offset=16), {"blocks.0.w": "blocks.16.w", "blocks.10.w": "blocks.26.w"}),
        (MapKeys(mapping={"a.w": "b.w", "c": "d.e"}), {"a.w": "b.w", "c": "d.e", "a.w.x": None}),
    ],
)
def test_renaming_rules(rule: object, cases: dict[str, str | None]) -> None:
    assert rule.renames  # type: ignore[attr-defined]
    for key, new in cases.items():
        assert rule.rename(key) == new, key  # type: ignore[attr-defined]
    plan = Plan(rules=[rule])  # type: ignore[list-item]
    assert plan.mapping(cases) == {k: (v if v is not None else k) for k, v in cases.items()}


def test_rename_agrees_with_re_fullmatch_expand() -> None:
    rule = Rename(pattern=r"(a|b)\.(\d+)\.(.*)", replacement=r"\3.\g<2>.\1")
    compiled = re.compile(rule.pattern)
    for key in ["a.1.x", "b.22.y.z", "c.1.x", "a.x.1", "a.1."]:
        match = compiled.fullmatch(key)
        assert rule.rename(key) == (match.expand(rule.replacement) if match else None), key


def test_data_rules_never_rename() -> None:
    for rule in EVERY_RULE:
        if rule.op in ("transpose", "split", "fuse", "drop"):
            assert not rule.renames
            assert rule.rename("qkv.weight") is None and rule.rename("e.0.w1") is None
            assert rule.applicability is Applicability.unsafe
    state = {"qkv.weight": object(), "e.0.w1": object(), "optimizer.step": object()}
    only_data = Plan(rules=[r for r in EVERY_RULE if not r.renames])
    assert only_data.apply(state) == state


def test_rules_apply_in_order_on_what_the_previous_left() -> None:
    plan = Plan(
        rules=[
            StripPrefix(prefix="module."),
            ReplacePrefix(old="transformer.", new="model."),
            Rename(pattern=r"(.*)\.h\.(.*)", replacement=r"\1.layers.\2"),
            ShiftIndex(prefix="model.layers.", offset=-2),
        ]
    )
    assert plan.rename_key("module.transformer.h.2.w") == "model.layers.0.w"
    assert plan.rename_key("transformer.h.5.w") == "model.layers.3.w"
    assert plan.rename_key("lm_head.w") == "lm_head.w"
    reverse = Plan(rules=list(reversed(plan.rules)))
    assert reverse.rename_key("module.transformer.h.2.w") == "transformer.layers.2.w"  # prefix replaced too early


# -- mapping, preview, apply -------------------------------------------------------------------------------------


def test_mapping_refuses_collisions_naming_both_keys() -> None:
    plan = Plan(rules=[StripPrefix(prefix="module.")])
    with pytest.raises(PlanError) as caught:
        plan.mapping(["encoder.w", "module.encoder.w", "decoder.w"])
    text = str(caught.value)
    assert "'encoder.w'" in text and "'module.encoder.w'" in text and "would both become" in text
    with pytest.raises(PlanError, match=re.escape("'a.x' and 'b.x' would both become 'c.x'")):
        Plan(rules=[MapKeys(mapping={"a.x": "c.x", "b.x": "c.x"})]).mapping(["a.x", "b.x"])
    with pytest.raises(PlanError):
        plan.apply({"module.w": 1, "w": 2})


def test_preview_lists_renamed_keys_in_input_order() -> None:
    plan = Plan(rules=[StripPrefix(prefix="module."), AddPrefix(prefix="bert.", only=["encoder"])])
    keys = ["module.encoder.w", "classifier.w", "module.classifier.b", "encoder.x"]
    assert plan.preview(keys) == [
        ("module.encoder.w", "bert.encoder.w"),
        ("module.classifier.b", "classifier.b"),
        ("encoder.x", "bert.encoder.x"),
    ]
    assert Plan().preview(keys) == []


def test_apply_keeps_the_value_objects_and_their_order() -> None:
    values = {f"module.layer.{i}": object() for i in range(5)}
    fixed = Plan(rules=[StripPrefix(prefix="module.")]).apply(values)
    assert list(fixed) == [f"layer.{i}" for i in range(5)]
    for i in range(5):
        assert fixed[f"layer.{i}"] is values[f"module.layer.{i}"]
    assert Plan().apply(values) == values and Plan().apply(values) is not values


# -- selection ---------------------------------------------------------------------------------------------------


def test_at_least_selects_by_applicability() -> None:
    plan = Plan(rules=EVERY_RULE)
    levels = {r.applicability for r in EVERY_RULE}
    assert levels == {Applicability.safe, Applicability.unsafe, Applicability.display_only}
    safe = plan.at_least()
    assert safe == plan.at_least("safe") == plan.at_least(Applicability.safe)
    assert safe.rules == [r for r in EVERY_RULE if r.applicability is Applicability.safe]
    unsafe = plan.at_least("unsafe")
    assert unsafe.rules == [r for r in EVERY_RULE if r.applicability is not Applicability.display_only]
    assert len(unsafe.rules) == len(EVERY_RULE) - 1 and len(safe.rules) < len(unsafe.rules)
    assert plan.at_least("display_only") == plan
    with pytest.raises(ValueError):
        plan.at_least("maybe")
    assert Plan().empty and not plan.empty


def test_applicability_is_ordered() -> None:
    order = [Applicability.display_only, Applicability.unsafe, Applicability.safe]
    for i, low in enumerate(order):
        for j, high in enumerate(order):
            assert high.at_least(low) is (j >= i)


def test_plans_and_rules_are_frozen() -> None:
    plan = Plan(rules=[StripPrefix(prefix="a.")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rules = []  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rules[0].prefix = "b."  # type: ignore[misc]
