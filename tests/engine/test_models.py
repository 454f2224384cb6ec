"""End to end with real transformers / PEFT models built from tiny configs.

Each case breaks a real state dict the way the world does (a DDP or torch.compile wrapper, a Lightning attribute,
legacy names, dropped tied weights, legacy buffers...), diagnoses it against the model, against a ``config.json``
folder and against a manifest written by ``keyguard snapshot``, applies the safe plan and proves that a strict load
succeeds with every tensor under its right name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import keyguard
from keyguard.fixes import Fuse, Plan
from keyguard.report import Report

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = {"vocab_size": 64, "max_position_embeddings": 32, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
DECODER = {
    **SMALL,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def build(config_class: str, model_class: str, **values: Any) -> Any:
    config = getattr(transformers, config_class)(architectures=[model_class], **values)
    torch.manual_seed(0)
    return getattr(transformers, model_class)(config).eval()


def trained_state(model_factory: Callable[[], Any]) -> dict[str, Any]:
    """The state dict of another instance with every parameter redrawn (ties kept): a tensor loaded under the
    wrong name, or not loaded at all, shows."""
    other = model_factory()
    generator = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for parameter in other.parameters():  # tied parameters are listed once, so they stay tied
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return dict(other.state_dict())


def legacy_layernorm(key: str) -> str:
    return re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", key))


@dataclass
class Case:
    """A real model, and how a checkpoint of it was broken."""

    build: Callable[[], Any]
    rename: Callable[[str], str]  # model key -> checkpoint key
    drop: Callable[[str], bool] = lambda key: False  # model keys the checkpoint leaves out
    extra: Callable[[Any], dict[str, Any]] = lambda model: {}  # keys the checkpoint holds beyond the model's


def _gpt2_masks(model: Any) -> dict[str, Any]:
    n = model.config.n_positions
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
    return {
        f"_orig_mod.transformer.h.{i}.attn.{name}": mask.clone() if name == "bias" else torch.tensor(-1e4)
        for i in range(model.config.n_layer)
        for name in ("bias", "masked_bias")
    }


def _llama_inv_freq(model: Any) -> dict[str, Any]:
    inv_freq = model.model.rotary_emb.inv_freq
    return {f"model.model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq.clone() for i in range(2)}


CASES: dict[str, Case] = {
    # old TF-port BERT checkpoint, saved from a DDP-wrapped model
    "bert": Case(
        lambda: build(
            "BertConfig",
            "BertForSequenceClassification",
            **SMALL,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=3,
        ),
        lambda k: "module." + legacy_layernorm(k),
    ),
    # torch.compile'd GPT-2, tied lm_head left out as safetensors does, legacy attention-mask buffers kept
    "gpt2": Case(
        lambda: build("GPT2Config", "GPT2LMHeadModel", **SMALL, n_embd=16, n_layer=2, n_head=2, n_positions=32),
        lambda k: "_orig_mod." + k,
        drop=lambda k: k == "lm_head.weight",
        extra=_gpt2_masks,
    ),
    # a Lightning module's `model.` attribute, from a transformers version that saved rotary inv_freq per layer
    "llama": Case(
        lambda: build("LlamaConfig", "LlamaForCausalLM", **DECODER),
        lambda k: "model." + k,
        extra=_llama_inv_freq,
    ),
    # a trunk saved under another attribute name
    "mistral": Case(
        lambda: build("MistralConfig", "MistralForCausalLM", **DECODER),
        lambda k: "transformer." + k[len("model.") :] if k.startswith("model.") else k,
    ),
    # a Megatron-style block list name, from a DDP-wrapped model
    "qwen2": Case(
        lambda: build("Qwen2Config", "Qwen2ForCausalLM", **DECODER),
        lambda k: "module." + k.replace("model.layers.", "model.h."),
    ),
    # a mixture of experts trained with DDP around torch.compile
    "qwen2_moe": Case(
        lambda: build(
            "Qwen2MoeConfig",
            "Qwen2MoeForCausalLM",
            **DECODER,
            moe_intermediate_size=8,
            shared_expert_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
        ),
        lambda k: "module._orig_mod." + k,
    ),
}


RENAMES = {"extra_prefix", "missing_prefix", "replaced_prefix", "renamed", "index_shift"}


def benign_keys(report: Report) -> tuple[set[str], set[str]]:
    """(checkpoint keys the report calls safe to drop, expected keys it calls harmless to leave missing)."""
    unexpected = {k for f in report.findings if f.kind == "unexpected" and f.benign for k in f.checkpoint_keys}
    missing = {k for f in report.findings if f.kind == "missing" and f.benign for k in f.expected_keys}
    return unexpected, missing


def load_as_the_report_says(
    report: Report, checkpoint: Mapping[str, Any], model: Any, truth: Mapping[str, str]
) -> None:
    drop, leave_missing = benign_keys(report)
    kept = {k: v for k, v in checkpoint.items() if k not in drop}
    fixed = report.plan.apply(kept)
    for key, value in kept.items():  # the very same tensor objects, renamed
        assert fixed[report.plan.rename_key(key)] is value
    if leave_missing:
        result = model.load_state_dict(fixed, strict=False)
        assert sorted(result.missing_keys) == sorted(leave_missing) and not result.unexpected_keys
    else:
        model.load_state_dict(fixed, strict=True)
    loaded = model.state_dict()
    for original, target in truth.items():
        assert torch.equal(loaded[target], checkpoint[original]), f"{original} -> {target}"


def check_json_round_trip(report: Report) -> None:
    text = report.render("json")
    data = json.loads(text)
    schema = Report.model_json_schema(mode="serialization")  # what is written: with the computed verdict
    assert data["format"] == "keyguard.report/v1"
    assert set(schema["required"]) <= set(data) <= set(schema["properties"])
    finding_schema = schema["$defs"]["Finding"]
    summary_schema = schema["$defs"]["Summary"]
    assert set(summary_schema["required"]) <= set(data["summary"]) <= set(summary_schema["properties"])
    for finding in data["findings"]:
        assert set(finding_schema["required"]) <= set(finding) <= set(finding_schema["properties"])
    for plan in (data["plan"], data["unsafe_plan"]):
        assert plan["format"] == "keyguard.plan/v1"
    assert Report.model_validate_json(report.model_dump_json()) == report
    assert Report.model_validate_json(text) == report


@pytest.mark.parametrize("name", list(CASES))
def test_real_model_checkpoint_loads_after_the_safe_plan(
    name: str, tmp_path: Path, save_st: Callable[..., Path], cli: Callable[..., Any]
) -> None:
    case = CASES[name]
    model = case.build()
    state = trained_state(case.build)
    truth = {case.rename(k): k for k in state if not case.drop(k)}
    extra = case.extra(model)
    checkpoint = {case.rename(k): v for k, v in state.items() if not case.drop(k)} | extra
    assert len(truth) == len(state) - sum(map(case.drop, state))

    report = keyguard.diagnose(checkpoint, model)
    assert not report.ok and not report.plan.empty
    assert {f.kind for f in report.findings} <= RENAMES | {"no_overlap", "missing", "unexpected"}
    assert report.plan.mapping(truth) == truth  # every key that should load is renamed to its true name
    # what the case added is called harmless, and so is what it left out (a tied weight)
    assert benign_keys(report) == (set(extra), {k for k in state if case.drop(k)})
    assert report.summary.fixable == len(truth) - report.summary.matched
    load_as_the_report_says(report, checkpoint, model, truth)
    check_json_round_trip(report)

    # the same diagnosis from a safetensors file against a config.json folder and a snapshot manifest
    ck_file = save_st(tmp_path / "checkpoint.safetensors", checkpoint)
    model.config.save_pretrained(tmp_path / "config")
    assert cli("snapshot", tmp_path / "config", "-o", tmp_path / "keys.json").code == 0
    for reference in (tmp_path / "config", tmp_path / "keys.json"):
        other = keyguard.diagnose(ck_file, reference)
        assert other.plan == report.plan, reference
        assert [(f.code, f.count, f.benign) for f in other.findings] == [
            (f.code, f.count, f.benign) for f in report.findings
        ], reference
        assert other.summary == report.summary


# -- PEFT LoRA ---------------------------------------------------------------------------------------------------


@pytest.fixture
def lora_model(tiny_llama: Callable[..., Any]) -> Any:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return peft.get_peft_model(tiny_llama(), config)


def test_peft_model_saved_from_ddp(
    lora_model: Any, tmp_path: Path, save_st: Callable[..., Path], cli: Callable[..., Any]
) -> None:
    generator = torch.Generator().manual_seed(5)
    state = {k: torch.randn(v.shape, generator=generator) for k, v in lora_model.state_dict().items()}
    checkpoint = {"module." + k: v for k, v in state.items()}  # DistributedDataParallel(peft_model).state_dict()
    truth = {"module." + k: k for k in state}
    report = keyguard.diagnose(checkpoint, lora_model)
    assert [f.kind for f in report.findings] == ["no_overlap", "extra_prefix"]
    load_as_the_report_says(report, checkpoint, lora_model, truth)
    check_json_round_trip(report)
    # against a manifest of a checkpoint known to load
    save_st(tmp_path / "reference.safetensors", lora_model.state_dict())
    assert cli("snapshot", tmp_path / "reference.safetensors", "-o", tmp_path / "keys.json").code == 0
    assert keyguard.diagnose(checkpoint, tmp_path / "keys.json").plan == report.plan


def test_peft_adapter_folder_into_peft_model(lora_model: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    lora_model.save_pretrained(tmp_path / "adapter")  # adapter_config.json + adapter_model.safetensors
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".lora_" in k and ".default." not in k for k in adapter)
    fresh = lora_model.state_dict()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # change the LoRA weights in the model, so loading the adapter back must restore them
        for key, value in fresh.items():
            if ".lora_" in key:
                value.copy_(torch.randn(value.shape, generator=generator))
    non_lora = r"^(?!.*\.lora_)"
    report = keyguard.diagnose(tmp_path / "adapter", lora_model, ignore=[non_lora])
    assert [f.kind for f in report.findings] == ["no_overlap", "renamed"]
    assert report.summary.coverage_after == 1
    truth = {k: re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", k) for k in adapter}
    assert report.plan.mapping(adapter) == truth
    result = lora_model.load_state_dict(report.plan.apply(adapter), strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(k for k in lora_model.state_dict() if ".lora_" not in k)
    loaded = lora_model.state_dict()
    for key, target in truth.items():
        assert torch.equal(loaded[target], adapter[key])
    check_json_round_trip(report)


# -- mixture of experts through the unsafe plan ------------------------------------------------------------------


def apply_unsafe(plan: Plan, state: Mapping[str, Any]) -> dict[str, Any]:
    """Renames, then the fuse rules as ``keyguard.fixes.Fuse`` documents them."""
    out = plan.apply(state)
    for rule in plan.rules:
        if isinstance(rule, Fuse):
            tensors = [out.pop(s) for s in rule.sources]
            if rule.stack:
                runs = [tensors[i : i + rule.parts] for i in range(0, len(tensors), rule.parts)]
                out[rule.target] = torch.stack([torch.cat(run, dim=rule.dim) for run in runs])
            else:
                out[rule.target] = torch.cat(tensors, dim=rule.dim)
    return out


def test_qwen2_moe_per_expert_checkpoint_into_stacked_experts() -> None:
    factory = CASES["qwen2_moe"].build
    model = factory()
    state = trained_state(factory)
    checkpoint: dict[str, Any] = {}
    for key, value in state.items():  # the per-expert layout of Qwen1.5-MoE checkpoints on the Hub
        base, _, name = key.rpartition(".")
        if base.endswith(".experts") and name == "gate_up_proj":
            inter = value.shape[1] // 2
            for e in range(value.shape[0]):
                checkpoint[f"{base}.{e}.gate_proj.weight"] = value[e, :inter]
                checkpoint[f"{base}.{e}.up_proj.weight"] = value[e, inter:]
        elif base.endswith(".experts") and name == "down_proj":
            for e in range(value.shape[0]):
                checkpoint[f"{base}.{e}.down_proj.weight"] = value[e]
        else:
            checkpoint[key] = value
    report = keyguard.diagnose(checkpoint, model)
    assert {f.kind for f in report.findings} == {"fused_split"}
    assert report.plan.empty  # data changes are never safe
    fixed = apply_unsafe(report.unsafe_plan, checkpoint)
    model.load_state_dict(fixed, strict=True)
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
