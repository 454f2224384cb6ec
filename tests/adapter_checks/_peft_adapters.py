"""Real PEFT adapters and base models for the check-adapter tests, and the ways exports break them.

Models are tiny transformers models built from configs (Llama, BERT, GPT-2 with Conv1D); adapters are saved by
PEFT itself. Breaking an adapter rewrites its files the way a broken export would (keys renamed or dropped, config
fields changed, values poisoned), into a new folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _tiny import TINY_LLAMA

LLAMA = dict(TINY_LLAMA)
BERT = {
    "vocab_size": 64,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
GPT2 = {
    "vocab_size": 64,
    "n_embd": 16,
    "n_layer": 2,
    "n_head": 2,
    "n_positions": 32,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def model(arch: str, **overrides: Any) -> Any:
    """A fresh tiny ``llama`` (causal LM), ``bert`` (sequence classification, 3 labels) or ``gpt2`` (LM head)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if arch == "llama":
        config: Any = transformers.LlamaConfig(**{**LLAMA, **overrides}, architectures=["LlamaForCausalLM"])
        return transformers.LlamaForCausalLM(config).eval()
    if arch == "bert":
        values = {**BERT, "num_labels": 3, **overrides}
        config = transformers.BertConfig(**values, architectures=["BertForSequenceClassification"])
        return transformers.BertForSequenceClassification(config).eval()
    if arch == "gpt2":
        config = transformers.GPT2Config(**{**GPT2, **overrides}, architectures=["GPT2LMHeadModel"])
        return transformers.GPT2LMHeadModel(config).eval()
    raise ValueError(arch)


TASKS = {"llama": "CAUSAL_LM", "bert": "SEQ_CLS", "gpt2": "CAUSAL_LM"}
TARGETS = {"llama": ["q_proj", "v_proj"], "bert": ["query", "value"], "gpt2": ["c_attn", "c_fc"]}


def save_base(arch: str, folder: Path, **overrides: Any) -> Path:
    """``save_pretrained`` of a fresh model: ``model.safetensors`` + ``config.json``."""
    model(arch, **overrides).save_pretrained(folder)
    return folder


def save_adapter(arch: str, folder: Path, *, trained: bool = True, safe: bool = True, **lora: Any) -> Path:
    """A LoRA adapter saved by PEFT. ``trained``: random ``lora_B`` (PEFT's default init leaves it zero)."""
    import peft

    options: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS[arch], "task_type": TASKS[arch]}
    if trained:
        options["init_lora_weights"] = False
    options.update(lora)
    overrides = options.pop("model_overrides", {})
    wrapped = peft.get_peft_model(model(arch, **overrides), peft.LoraConfig(**options))
    wrapped.save_pretrained(folder, safe_serialization=safe)
    return folder


def config_only(source: Path, folder: Path) -> Path:
    """A folder holding only the base's ``config.json``."""
    folder.mkdir(parents=True)
    shutil.copy(source / "config.json", folder / "config.json")
    return folder


def tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(folder / "adapter_model.safetensors")))


def config(folder: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((folder / "adapter_config.json").read_text())
    return loaded


def broken(
    source: Path,
    dest: Path,
    *,
    keys: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    config_edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Path:
    """Copy the adapter at ``source`` to ``dest``, passing its tensors through ``keys`` and its config through
    ``config_edit``."""
    from safetensors.torch import save_file

    shutil.copytree(source, dest)
    if keys is not None:
        state = keys(tensors(source))
        save_file({k: v.contiguous() for k, v in state.items()}, str(dest / "adapter_model.safetensors"))
    if config_edit is not None:
        (dest / "adapter_config.json").write_text(json.dumps(config_edit(config(source)), indent=2))
    return dest


def rename_all(fn: Callable[[str], str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda state: {fn(k): v for k, v in state.items()}


def set_fields(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda raw: {**raw, **fields}


class Zoo:
    """Bases and clean adapters built once per test module (building costs about a second)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}
        self._count = 0

    def get(self, name: str, make: Callable[[Path], Path]) -> Path:
        if name not in self._made:
            self._made[name] = make(self.root / name)
        return self._made[name]

    def base(self, arch: str, **overrides: Any) -> Path:
        name = f"base-{arch}-" + "-".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        return self.get(name, lambda folder: save_base(arch, folder, **overrides))

    def adapter(self, arch: str, name: str = "clean", **lora: Any) -> Path:
        return self.get(f"adapter-{arch}-{name}", lambda folder: save_adapter(arch, folder, **lora))

    def config_folder(self, arch: str) -> Path:
        return self.get(f"config-{arch}", lambda folder: config_only(self.base(arch), folder))

    def manifest(self, arch: str) -> Path:
        from keyguard import read_keys, write_manifest

        def make(path: Path) -> Path:
            write_manifest(read_keys(self.base(arch)), path)
            return path

        return self.get(f"manifest-{arch}.json", make)

    def broken(self, source: Path, **edits: Any) -> Path:
        self._count += 1
        return broken(source, self.root / f"broken-{self._count}-{source.name}", **edits)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    return Zoo(tmp_path_factory.mktemp("zoo"))
