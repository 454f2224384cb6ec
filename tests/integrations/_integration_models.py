"""Tiny models, real LoRA adapters saved by PEFT, and an independent tensor check, for the integration tests.

Adapters are trained on nothing: ``init_lora_weights=False`` gives every ``lora_B`` random values, so a tensor left
at PEFT's initialisation (zeros) can never pass for a loaded one. ``conftest.adapters`` saves each adapter once per
session.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _tiny import TINY_LLAMA

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Arch:
    """A tiny model: how to build it, its task and the modules its LoRA adapters target."""

    build: Callable[[], Any]
    task: str
    targets: tuple[str, ...]
    hidden: int = 16


def _llama_config(**overrides: Any) -> Any:
    values: dict[str, Any] = {**TINY_LLAMA, "use_cache": False}  # X-LoRA refuses models with the cache on
    values.update(overrides)
    return transformers.LlamaConfig(**values)


def _bert() -> Any:
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        use_cache=False,
    )
    return transformers.BertForSequenceClassification(config)


def _gpt2() -> Any:
    config = transformers.GPT2Config(
        vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=1, eos_token_id=2, use_cache=False
    )
    return transformers.GPT2LMHeadModel(config)


ARCHS: dict[str, Arch] = {
    "llama": Arch(lambda: transformers.LlamaForCausalLM(_llama_config()), "CAUSAL_LM", ("q_proj", "v_proj")),
    "llama_cls": Arch(
        lambda: transformers.LlamaForSequenceClassification(_llama_config(num_labels=3)),
        "SEQ_CLS",
        ("q_proj", "v_proj"),
    ),
    "bert_cls": Arch(_bert, "SEQ_CLS", ("query", "value")),
    "gpt2": Arch(_gpt2, "CAUSAL_LM", ("c_attn",)),
}


def build(arch: str) -> Any:
    """A fresh tiny base model (same weights every time), in eval mode."""
    torch.manual_seed(0)
    return ARCHS[arch].build().eval()


def save_adapter(arch: str, folder: Path, seed: int) -> Path:
    spec = ARCHS[arch]
    model = build(arch)
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        task_type=spec.task,
        r=2,
        lora_alpha=4,
        target_modules=list(spec.targets),
        init_lora_weights=False,
        fan_in_fan_out=arch == "gpt2",  # GPT-2's Conv1D stores its weights transposed
    )
    peft.get_peft_model(model, config).save_pretrained(folder)
    return folder


def variant(source: Path, folder: Path, rename: Callable[[dict[str, Any]], dict[str, Any]]) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    tensors = load_file(str(source / "adapter_model.safetensors"))
    save_file(rename(tensors), str(folder / "adapter_model.safetensors"))
    return folder


MISSING_KEY = f"{PEFT_PREFIX}model.layers.1.self_attn.v_proj.lora_B.weight"


def xlora_config(arch: str, experts: Mapping[str, Path], **overrides: Any) -> Any:
    return peft.XLoraConfig(
        task_type=ARCHS[arch].task,
        hidden_size=ARCHS[arch].hidden,
        adapters={name: str(path) for name, path in experts.items()},
        xlora_depth=1,
        **overrides,
    )


def module_path(file_key: str) -> str:
    """The module path a test adapter's key stands for, undoing the variants' prefixes (known by construction)."""
    return file_key.removeprefix("module.").removeprefix(PEFT_PREFIX)


def live_key(file_key: str, adapter_name: str) -> str:
    """Where a test adapter's tensor lives in X-LoRA's LoRA model, by construction of the test adapters: under
    ``model.``, with the adapter name after ``lora_A`` / ``lora_B``, or inside the head's ``modules_to_save``."""
    path = module_path(file_key)
    for role in ("lora_A", "lora_B"):
        if f".{role}." in path:
            return "model." + path.replace(f".{role}.", f".{role}.{adapter_name}.")
    owner, _, leaf = path.rpartition(".")
    return f"model.{owner}.modules_to_save.{adapter_name}.{leaf}"


def assert_expert_equals_file(lora_model: Any, adapter_name: str, folder: Path) -> int:
    """Every tensor of the file equals the model's, found by construction (not by keyguard's code), and the model
    holds no other tensor for the adapter. Returns the number of tensors compared.

    (Not through PEFT's ``get_peft_model_state_dict``: with adapters named ``"0"``, ``"1"`` it drops every key of
    layer 1, whose path contains ``.1.``.)"""
    from safetensors.torch import load_file

    held = lora_model.state_dict()
    stored = load_file(str(folder / "adapter_model.safetensors"))
    expected = {live_key(k, adapter_name): v for k, v in stored.items()}
    markers = (f".lora_A.{adapter_name}.", f".lora_B.{adapter_name}.", f".modules_to_save.{adapter_name}.")
    owned = {k for k in held if any(m in k for m in markers)}
    assert owned == set(expected), sorted(owned ^ set(expected))[:6]
    for key, tensor in expected.items():
        assert not held[key].is_meta, key
        assert torch.equal(held[key].detach().cpu(), tensor.to(held[key].dtype)), key
    return len(expected)


def forward(model: Any) -> Any:
    """One forward pass of a tiny model (4 tokens)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([[3, 4, 5, 6]]))
