"""Guarded ``keyguard.load_state_dict`` on real transformers models built from tiny configs: wrapper prefixes, strict
mode, user plans, meta-device models, ties, ``ignore`` and ``drop_unexpected``, and refusals that leave the model as
it was. Every loaded parameter is compared with the tensor it came from."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import keyguard  # noqa: E402
from keyguard import KeyMismatchError, LoadResult, PlanError, Report  # noqa: E402
from keyguard.fixes import Drop, Plan, StripPrefix, Transpose  # noqa: E402

ModelFactory = Callable[..., Any]


@pytest.fixture
def models(tiny_llama: ModelFactory, tiny_bert: ModelFactory, tiny_gpt2: ModelFactory) -> dict[str, ModelFactory]:
    return {"llama": tiny_llama, "bert": tiny_bert, "gpt2": tiny_gpt2}


def build(factory: ModelFactory, *, seed: int, meta: bool = False, **config: Any) -> Any:
    """A model whose parameters are drawn from ``seed`` (so source and destination differ before loading)."""
    if meta:
        import inspect

        if "meta" in inspect.signature(factory).parameters:  # tiny_llama picks its device itself
            return factory(meta=True, **config)
        with torch.device("meta"):
            return factory(**config)
    model = factory(**config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=g))
    return model


def snapshot(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_loaded(model: Any, state: dict[str, Any]) -> None:
    """Every entry of the model's state dict equals the source tensor of the same name."""
    got = model.state_dict()
    assert sorted(got) == sorted(state)
    for key, value in state.items():
        assert not got[key].is_meta, key
        assert torch.equal(got[key], value), key


def assert_unchanged(model: Any, before: dict[str, Any]) -> None:
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in before.items())


WRAPPERS = {
    "ddp": lambda k: "module." + k,
    "compile": lambda k: "_orig_mod." + k,
    "ddp+compile": lambda k: "module._orig_mod." + k,
    "peft": lambda k: "base_model.model." + k,
}


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_wrapped_checkpoints_load_exactly(
    tmp_path: Path, save_st: Callable[..., Path], models: dict[str, ModelFactory], kind: str, wrapper: str
) -> None:
    source = build(models[kind], seed=0)
    state = snapshot(source)
    path = save_st(tmp_path / "ckpt.safetensors", {WRAPPERS[wrapper](k): v for k, v in state.items()})
    model = build(models[kind], seed=1)
    assert not all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # really different before
    result = keyguard.load_state_dict(model, path)
    assert isinstance(result, LoadResult) and result.ok
    assert result.loaded == result.verified == len(state) and result.source == str(path)
    assert result.plan == result.report.plan and not result.plan.empty  # the safe plan, applied
    assert isinstance(result.report, Report) and not result.report.ok  # the diagnosis as the checkpoint stands
    assert_loaded(model, state)


def test_an_in_memory_state_dict_loads_with_the_same_tensors(tiny_llama: ModelFactory) -> None:
    source = build(tiny_llama, seed=0)
    state = snapshot(source)
    model = build(tiny_llama, seed=1)
    result = keyguard.load_state_dict(model, {"module." + k: v for k, v in state.items()})
    assert result.plan.rules == [StripPrefix(prefix="module.", reason=result.plan.rules[0].reason)]
    assert result.source is None and result.target == "LlamaForCausalLM"
    assert_loaded(model, state)


def test_a_successful_load_says_so(tmp_path: Path, save_st: Callable[..., Path], tiny_llama: ModelFactory) -> None:
    """The load worked and every tensor was checked: the result says that, not "FATAL KG404 ... would fail"."""
    state = snapshot(build(tiny_llama, seed=0))
    path = save_st(tmp_path / "ddp.safetensors", {"module." + k: v for k, v in state.items()})
    result = keyguard.load_state_dict(build(tiny_llama, seed=1), path)
    text = str(result)
    n = len(state)
    assert text.splitlines()[:2] == [
        f"Loaded and verified {n} tensors into LlamaForCausalLM from {path}.",
        "Plan applied (1 rule): strip prefix 'module.'.",
    ]
    assert "FATAL" not in text and "would fail" not in text
    assert "As given, the source had 2 error findings (KG404 no_overlap, KG101 extra_prefix)" in text
    assert LoadResult.model_validate_json(result.render("json")) == result
    clean = keyguard.load_state_dict(build(tiny_llama, seed=1), state)
    assert str(clean).splitlines() == [
        f"Loaded and verified {n} tensors into LlamaForCausalLM.",
        "Plan applied: none (the keys loaded as they stand).",
    ]


def test_a_real_peft_state_dict_loads_its_base_weights(tiny_llama: ModelFactory) -> None:
    """``PeftModel.state_dict()``: ``base_model.model.`` plus ``base_layer`` plus LoRA tensors (left out)."""
    from peft import LoraConfig, get_peft_model

    base = build(tiny_llama, seed=0)
    state = snapshot(base)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_state = peft_model.state_dict()
    assert any(".base_layer." in k for k in peft_state) and any("lora_A" in k for k in peft_state)
    model = build(tiny_llama, seed=1)
    before = snapshot(model)
    with pytest.raises(KeyMismatchError, match="unexpected"):
        keyguard.load_state_dict(model, peft_state)  # the LoRA tensors are not the model's
    assert_unchanged(model, before)
    result = keyguard.load_state_dict(model, peft_state, drop_unexpected=True)
    assert_loaded(model, state)
    unexpected = {k for f in result.findings if f.kind == "unexpected" for k in f.checkpoint_keys}
    assert unexpected and all("lora_" in k for k in unexpected)
    assert set(result.left_out) == unexpected and result.loaded == result.verified == len(state)


# -- strict and user plans ---------------------------------------------------------------------------------------


def test_strict_raises_with_the_rendered_report_and_leaves_the_model(tiny_bert: ModelFactory) -> None:
    state = snapshot(build(tiny_bert, seed=0))
    model = build(tiny_bert, seed=1)
    before = snapshot(model)
    with pytest.raises(KeyMismatchError) as info:
        keyguard.load_state_dict(model, {"module." + k: v for k, v in state.items()}, strategy="strict")
    error = info.value
    assert isinstance(error.report, Report) and not error.report.ok
    assert error.report.render("table") in str(error)
    assert "0 rule(s) applied" in str(error)
    assert {f.kind for f in error.report.findings} >= {"missing", "unexpected"} or any(
        f.kind == "no_overlap" for f in error.report.findings
    )
    assert_unchanged(model, before)
    # a checkpoint that already matches loads strictly
    keyguard.load_state_dict(model, state, strategy="strict")
    assert_loaded(model, state)


def test_a_user_plan(tiny_gpt2: ModelFactory) -> None:
    state = snapshot(build(tiny_gpt2, seed=0))
    ckpt = {"net." + k: v for k, v in state.items()}
    model = build(tiny_gpt2, seed=1)
    keyguard.load_state_dict(model, ckpt, strategy=Plan(rules=[StripPrefix(prefix="net.")]))
    assert_loaded(model, state)


def test_a_user_plan_with_data_rules_needs_unsafe_fixes(tiny_llama: ModelFactory) -> None:
    state = snapshot(build(tiny_llama, seed=0))
    key = "model.layers.0.mlp.down_proj.weight"
    ckpt = {**state, key: state[key].t().contiguous(), "optimizer.step": torch.tensor(3)}
    plan = Plan(rules=[Transpose(keys=[key]), Drop(keys=["optimizer.step"])])
    model = build(tiny_llama, seed=1)
    before = snapshot(model)
    with pytest.raises(KeyMismatchError):
        keyguard.load_state_dict(model, ckpt, strategy=plan)  # unsafe rules left out: shape and unexpected key
    assert_unchanged(model, before)
    keyguard.load_state_dict(model, ckpt, strategy=plan, unsafe_fixes=True)
    assert_loaded(model, state)


def test_a_colliding_plan_is_refused_and_the_model_untouched(tiny_llama: ModelFactory) -> None:
    state = snapshot(build(tiny_llama, seed=0))
    ckpt = {**{"module." + k: v for k, v in state.items()}, "model.norm.weight": state["model.norm.weight"]}
    model = build(tiny_llama, seed=1)
    before = snapshot(model)
    with pytest.raises(PlanError, match=r"'model\.norm\.weight'"):
        keyguard.load_state_dict(model, ckpt, strategy=Plan(rules=[StripPrefix(prefix="module.")]))
    assert_unchanged(model, before)


def test_an_unknown_strategy_is_refused(tiny_llama: ModelFactory) -> None:
    model = build(tiny_llama, seed=0)
    with pytest.raises(ValueError, match="strategy must be"):
        keyguard.load_state_dict(model, snapshot(model), strategy="lenient")  # type: ignore[arg-type]


# -- meta device -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
def test_a_meta_model_is_loaded_with_assign_and_nothing_stays_on_meta(
    tmp_path: Path, save_st: Callable[..., Path], models: dict[str, ModelFactory], kind: str
) -> None:
    source = build(models[kind], seed=0)
    state = snapshot(source)
    path = save_st(tmp_path / "ckpt.safetensors", {"module." + k: v for k, v in state.items()})
    model = build(models[kind], seed=1, meta=True)
    assert all(p.is_meta for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left on meta to warn about
        result = keyguard.load_state_dict(model, path)
    assert result.assigned and result.on_meta == [] and result.loaded == result.verified == len(state)
    assert str(result).startswith(f"Assigned and verified {len(state)} tensors into ")
    assert_loaded(model, state)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert leftover == []
    # non-persistent buffers (rotary inv_freq, position ids) have the values the model computes itself
    for (name, buffer), (_, reference) in zip(model.named_buffers(), source.named_buffers()):
        assert torch.equal(buffer, reference), name
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, source(ids).logits)


def test_a_meta_model_keeps_its_tied_weights(tiny_gpt2: ModelFactory) -> None:
    source = build(tiny_gpt2, seed=0)
    state = snapshot(source)
    model = build(tiny_gpt2, seed=1, meta=True)
    assert model.lm_head.weight is model.transformer.wte.weight
    keyguard.load_state_dict(model, state)
    assert model.lm_head.weight is model.transformer.wte.weight  # still one parameter, not two copies
    assert torch.equal(model.lm_head.weight, state["transformer.wte.weight"])


# -- ignore and drop_unexpected ------------------------------------------------------------------------------------


def test_ignored_tied_lm_head_follows_the_embeddings(tiny_llama: ModelFactory) -> None:
    source = build(tiny_llama, seed=0, tie_word_embeddings=True)
    state = snapshot(source)
    ckpt = {k: v for k, v in state.items() if k != "lm_head.weight"}  # what save_pretrained leaves out
    model = build(tiny_llama, seed=1, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(KeyMismatchError, match=r"lm_head\.weight"):
        keyguard.load_state_dict(model, ckpt)
    result = keyguard.load_state_dict(model, ckpt, ignore=[r"^lm_head\.weight$"])
    assert result.kept == ["lm_head.weight"] and result.loaded == result.verified == len(ckpt)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, state["model.embed_tokens.weight"])
    assert_loaded(model, state)


@pytest.mark.parametrize("meta", [False, True], ids=["cpu", "meta"])
def test_ignored_tied_lm_head_on_an_untied_source_key(tiny_gpt2: ModelFactory, meta: bool) -> None:
    state = snapshot(build(tiny_gpt2, seed=0))
    ckpt = {"module." + k: v for k, v in state.items() if k != "lm_head.weight"}
    model = build(tiny_gpt2, seed=1, meta=meta)
    keyguard.load_state_dict(model, ckpt, ignore=[r"^lm_head\.weight$"])
    assert model.lm_head.weight is model.transformer.wte.weight
    assert_loaded(model, state)


def test_ignore_an_unexpected_key(tiny_bert: ModelFactory) -> None:
    state = snapshot(build(tiny_bert, seed=0))
    model = build(tiny_bert, seed=1)
    result = keyguard.load_state_dict(model, {**state, "extra.ema_decay": torch.tensor(0.99)}, ignore=[r"^extra\."])
    assert result.left_out == ["extra.ema_decay"]
    assert_loaded(model, state)


def test_drop_unexpected_legacy_rotary_buffers(tiny_llama: ModelFactory) -> None:
    state = snapshot(build(tiny_llama, seed=0))
    legacy = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.rand(4) for i in range(2)}
    ckpt = {**{"module." + k: v for k, v in state.items()}, **{"module." + k: v for k, v in legacy.items()}}
    model = build(tiny_llama, seed=1)
    before = snapshot(model)
    with pytest.raises(KeyMismatchError, match="inv_freq"):
        keyguard.load_state_dict(model, ckpt)
    assert_unchanged(model, before)
    result = keyguard.load_state_dict(model, ckpt, drop_unexpected=True)
    assert_loaded(model, state)
    dropped = {k for f in result.findings if f.kind == "unexpected" for k in f.checkpoint_keys}
    assert dropped == {"module." + k for k in legacy} == set(result.left_out)


def test_a_genuinely_missing_key_raises_and_nothing_is_loaded(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    state = snapshot(LlamaForCausalLM(config))
    missing = "model.layers.1.mlp.up_proj.weight"
    path = save_st(tmp_path / "ckpt.safetensors", {"module." + k: v for k, v in state.items() if k != missing})
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    before = snapshot(model)
    with pytest.raises(KeyMismatchError) as info:
        keyguard.load_state_dict(model, path, drop_unexpected=True)
    assert missing in str(info.value)
    assert [f.kind for f in info.value.report.findings if f.severity.value in ("error", "fatal")] == ["missing"]
    assert_unchanged(model, before)  # never strict=False: not even the keys that would have matched
