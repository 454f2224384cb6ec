"""keyguard's copy of PEFT's matching rules agrees with PEFT itself, module by module, on real models.

keyguard never imports peft at run time (the check must work with safetensors and pydantic alone), so these tests
pin its reproduction of ``check_target_module_exists``, ``get_pattern_key`` and ``_set_trainable`` to the installed
peft.
"""

from __future__ import annotations

from typing import Any

import pytest
from _peft_adapters import model

from keyguard.adapter_checks._peft_conventions import Base, Ranks, select, split_key
from keyguard.sources import AdapterConfig, read_module

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

CASES: list[tuple[str, dict[str, Any]]] = [
    ("llama", {"target_modules": ["q_proj", "v_proj"]}),
    ("llama", {"target_modules": ["self_attn.q_proj", "mlp.up_proj"]}),
    ("llama", {"target_modules": ["model.layers.0.self_attn.q_proj", "layers.1.mlp.down_proj", "proj"]}),
    ("llama", {"target_modules": r".*\.(q|k)_proj"}),
    ("llama", {"target_modules": r".*layers\.1\..*proj"}),
    ("llama", {"target_modules": ["q_proj", "o_proj"], "exclude_modules": ["o_proj"]}),
    ("llama", {"target_modules": ["q_proj", "o_proj"], "exclude_modules": r".*layers\.0\..*"}),
    ("llama", {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1]}),
    ("llama", {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": 0, "layers_pattern": "layers"}),
    ("llama", {"target_modules": ["q_proj", "model.layers.0.self_attn.v_proj"], "layers_to_transform": [1]}),
    ("llama", {"target_modules": ["q_proj", "lm_head", "embed_tokens"], "modules_to_save": ["lm_head"]}),
    ("llama", {"target_modules": ["q_proj", "k_proj"], "modules_to_save": ["self_attn.k_proj"]}),
    ("bert", {"target_modules": ["query", "value", "dense"], "layers_to_transform": [0], "layers_pattern": "layer"}),
    ("bert", {"target_modules": ["attention.output.dense"], "modules_to_save": ["classifier"]}),
    ("gpt2", {"target_modules": ["c_attn", "attn.c_proj"]}),
    ("gpt2", {"target_modules": ["c_attn", "c_proj"], "layers_to_transform": [1], "layers_pattern": ["h"]}),
]


def modules_with_weights(net: Any) -> list[str]:
    return [key[: -len(".weight")] for key in net.state_dict() if key.endswith(".weight")]


@pytest.mark.parametrize(("arch", "fields"), CASES)
def test_targets_match_peft(arch: str, fields: dict[str, Any]) -> None:
    from peft.tuners.tuners_utils import check_target_module_exists

    net = model(arch)
    peft_config = peft.LoraConfig(**fields)
    ours = select(AdapterConfig.model_validate(fields), Base.of(read_module(net)))
    theirs = {m for m in modules_with_weights(net) if bool(check_target_module_exists(peft_config, m))}
    assert ours.targeted == theirs
    assert theirs or fields.get("layers_to_transform") is not None  # every case selects something


def test_unmatched_entries() -> None:
    base = Base.of(read_module(model("llama")))
    config = AdapterConfig(target_modules=["q_proj", "query", "self_attn.v_proj", "attn.v_proj", "mlp"])
    assert select(config, base).unmatched == ["query", "attn.v_proj", "mlp"]
    assert select(AdapterConfig(target_modules=r".*\.query"), base).unmatched == [r".*\.query"]
    assert select(AdapterConfig(target_modules=None), base).targeted is None


def test_ranks_match_peft() -> None:
    from peft.utils.other import get_pattern_key

    pattern = {"v_proj": 2, "layers.1.self_attn.q_proj": 3, r"layers\.0\..*_proj": 5, "mlp.(up|down)_proj": 6}
    ranks = Ranks(AdapterConfig(r=8, rank_pattern=pattern))
    for module in modules_with_weights(model("llama")):
        expected_key = get_pattern_key(list(pattern), module)
        assert ranks.of(module)[0] == pattern.get(expected_key, 8), module


def test_modules_to_save_match_peft() -> None:
    """``_set_trainable`` wraps every module whose path ends with an entry (a plain string suffix)."""
    net = model("bert")
    names = ["classifier", "output.dense", "pooler"]
    wrapped = select(AdapterConfig(target_modules=["query"], modules_to_save=names), Base.of(read_module(net)))
    theirs = {n for n, _ in net.named_modules() if n and any(n.endswith(t) for t in names)}
    outermost = {n for n in theirs if not any(n.startswith(o + ".") for o in theirs)}
    assert wrapped.saved_modules == outermost


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            ("model.layers.0.self_attn.q_proj", "lora_A.weight"),
        ),
        ("base_model.model.transformer.h.0.attn.c_attn.lora_B.bias", ("transformer.h.0.attn.c_attn", "lora_B.bias")),
        ("base_model.model.model.embed_tokens.lora_embedding_A", ("model.embed_tokens", "lora_embedding_A")),
        ("base_model.model.x.lora_magnitude_vector", ("x", "lora_magnitude_vector")),
        ("base_model.model.bert.layer.0.query.base_layer.bias", ("bert.layer.0.query", "base_layer.bias")),
        ("base_model.model.classifier.weight", ("classifier.weight", "")),
        ("base_model.model.q.lora_A.default.weight", ("q.lora_A.default.weight", "")),
        ("model.layers.0.q_proj.lora_A.weight", None),
    ],
)
def test_split_key(key: str, parts: tuple[str, str] | None) -> None:
    assert split_key(key) == parts
