"""The corpus itself: every case's truth holds by value, transformers' own loader agrees with it, and the scorer
counts a perfect plan as perfect and a wrong one as wrong."""

from __future__ import annotations

import pytest

import keyguard
from corpus import CASES, cases_transformers
from corpus._case import PERMUTE_ROPE, RESHAPE, Case
from corpus._hf import round_trip
from corpus.evaluate import evaluate, simulate, truth_plan
from keyguard.fixes import MapKeys, Plan

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers() -> None:
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


_BUILT: dict[str, Case] = {}


def built(name: str) -> Case:
    if name not in _BUILT:
        _BUILT[name] = CASES[name]()
    return _BUILT[name]


@pytest.mark.parametrize("name", list(CASES))
def test_truth_holds_by_value(name: str) -> None:
    case = built(name)
    assert case.verify() == []
    assert case.needs(), "a corpus case with nothing to rename tests nothing"
    assert len(case.checkpoint) < 2000


@pytest.mark.parametrize("name", list(cases_transformers.CASES))
def test_transformers_loads_the_legacy_layout_as_the_truth_says(name: str) -> None:
    assert round_trip(built(name)) == []


def test_llama_permutation_is_transformers_permute_for_rope() -> None:
    from transformers.core_model_loading import PermuteForRope

    case = built("llama_consolidated")
    heads, kv_heads = case.tags["heads"]
    for link in case.links:
        if link.op != PERMUTE_ROPE:
            continue
        config = type("C", (), {"num_attention_heads": link.heads})()
        converted = PermuteForRope().convert(
            {link.old[0]: case.checkpoint[link.old[0]]}, [link.old[0]], [link.new[0]], config
        )
        assert torch.equal(converted[link.new[0]], case.expected[link.new[0]])
        assert link.heads in (heads, kv_heads)


@pytest.mark.parametrize("name", list(CASES))
def test_the_truth_as_a_plan_scores_perfectly(name: str) -> None:
    case = built(name)
    plan = truth_plan(case)
    report = keyguard.diagnose(case.checkpoint, case.expected)
    report = report.model_copy(update={"plan": plan, "unsafe_plan": plan})
    score = evaluate(case, report)
    assert (score.safe_wrong, score.unsafe_wrong, score.error) == (0, 0, "")
    assert score.safe_right == score.unsafe_right == score.need
    untransformable = sum(1 for link in case.links if link.op in (PERMUTE_ROPE, RESHAPE))
    assert score.value_filled - score.value_right == untransformable
    assert score.explained == score.need


@pytest.mark.parametrize("name", ["mixtral_experts", "gte_fused", "gpt2_to_nanogpt"])
def test_write_fixed_agrees_with_the_simulation(name: str) -> None:
    case = built(name)
    plan = truth_plan(case)
    report = keyguard.diagnose(case.checkpoint, case.expected).model_copy(update={"plan": plan, "unsafe_plan": plan})
    assert evaluate(case, report, write=True).written == "ok"


def test_a_wrong_mapping_is_counted_by_key_and_by_value() -> None:
    case = built("segformer_stages")
    right = truth_plan(case)
    mapping = dict(right.rules[0].mapping)  # type: ignore[union-attr]
    a, b = "encoder.block.0.0.attention.self.query.weight", "encoder.block.0.0.attention.self.key.weight"
    mapping[a], mapping[b] = mapping[b], mapping[a]  # same shapes: only the data tells
    wrong = Plan(rules=[MapKeys(mapping=mapping)])
    report = keyguard.diagnose(case.checkpoint, case.expected).model_copy(update={"plan": wrong, "unsafe_plan": wrong})
    score = evaluate(case, report)
    assert score.safe_wrong == score.unsafe_wrong == 2
    assert score.silent == 2
    assert {(w.checkpoint, w.got) for w in score.wrong if w.plan == "safe"} == {(a, mapping[a]), (b, mapping[b])}
    assert score.invariant_broken


def test_simulate_refuses_a_collision() -> None:
    case = built("bert_gamma_beta")
    keys = list(case.checkpoint)
    with pytest.raises(keyguard.PlanError):
        simulate(Plan(rules=[MapKeys(mapping={keys[0]: keys[1]})]), case.checkpoint)


def test_hints_are_scored_against_the_truth() -> None:
    case = built("vit_legacy")
    report = keyguard.diagnose(case.checkpoint, case.expected)
    right = ("encoder.layer.0.intermediate.dense.weight", "layers.0.mlp.fc1.weight")
    wrong = ("encoder.layer.0.output.dense.weight", "layers.0.attention.o_proj.weight")
    hint = f"closest candidates: {right[0]} ~ {right[1]}; {wrong[0]} ~ {wrong[1]}"
    findings = [f.model_copy(update={"hint": hint if f.kind == "unexpected" else None}) for f in report.findings]
    assert any(f.kind == "unexpected" for f in findings)
    score = evaluate(case, report.model_copy(update={"findings": findings}))
    assert (score.hints, score.hints_right) == (2, 1)
