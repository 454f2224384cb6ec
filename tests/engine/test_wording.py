"""What the engine's findings say for cases people meet: a base model's weights in a task model, an untied lm_head,
a head of another size, and closest-candidate hints that pair only keys alike where they differ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import keyguard


@pytest.mark.parametrize("tied", [False, True])
def test_a_base_model_loaded_into_a_task_model(tiny_llama: Callable[..., Any], tied: bool) -> None:
    model = tiny_llama(tie_word_embeddings=tied)
    base = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}  # what LlamaModel.save_pretrained holds
    report = keyguard.diagnose(base, model)
    (prefix,) = [f for f in report.findings if f.code == "KG102"]
    assert "saved from a base model, e.g. LlamaModel, without the task head" in prefix.message
    assert "Lightning" not in prefix.message  # not a wrapper: the task model holds the base model under model.
    (missing,) = [f for f in report.findings if f.code == "KG401"]
    assert missing.expected_keys == ["lm_head.weight"]
    assert missing.benign is not None  # noted, tied or not, the way a classifier or score head is
    assert missing.ctx["category"] == ("tied" if tied else "head")


def test_a_classifier_of_another_size_mentions_ignore_mismatched_sizes(tiny_bert: Callable[..., Any]) -> None:
    model = tiny_bert()  # 3 labels
    checkpoint = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    checkpoint["classifier.weight"] = (5, checkpoint["classifier.weight"][1])
    checkpoint["classifier.bias"] = (5,)
    (shape,) = [f for f in keyguard.diagnose(checkpoint, model).findings if f.code == "KG301"]
    assert "number of labels changed (5 -> 3)" in shape.message
    assert shape.hint is not None and "ignore_mismatched_sizes=True" in shape.hint


def test_closest_hints_never_pair_unrelated_modules_sharing_a_frame() -> None:
    common = {f"base_model.model.transformer.h.{i}.mlp.c_fc.lora_A.weight": (2, 4) for i in range(2)}
    checkpoint = {**common, "base_model.model.lm_head.lora_A.weight": (2, 4)}
    expected = {**common, "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": (2, 4)}
    report = keyguard.diagnose(checkpoint, expected)
    assert all(f.hint is None or "lm_head" not in f.hint for f in report.findings)
    renamed = {"encoder.layer.0.attn.q.weight": (4, 4), "norm.weight": (4,)}
    wanted = {"encoder.layers.0.attention.q.weight": (4, 4), "norm.weight": (4,), "pooler.dense.bias": (4,)}
    report = keyguard.diagnose(renamed, wanted)
    hints = [f.hint for f in report.findings if f.hint]
    right = "encoder.layer.0.attn.q.weight ~ encoder.layers.0.attention.q.weight"
    # the pair is offered: as a hint, as an (unsafe) mapping, or as the candidate of an ambiguous finding
    mapped = report.unsafe_plan.rename_key("encoder.layer.0.attn.q.weight")
    offered = [
        t for f in report.findings for t in (f.ctx.get("candidates") or {}).get("encoder.layer.0.attn.q.weight", [])
    ]
    assert (
        any(right in h for h in hints)
        or mapped == "encoder.layers.0.attention.q.weight"
        or offered == ["encoder.layers.0.attention.q.weight"]
    )
