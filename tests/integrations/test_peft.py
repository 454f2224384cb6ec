"""A LoRA adapter loaded into a ``PeftModel`` through keyguard, and the check that an adapter loaded elsewhere
arrived (the common silent failure: module paths that do not match the model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from _integration_models import ARCHS, MISSING_KEY, build, forward, module_path  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from keyguard import KeyMismatchError, LoadResult, UnsupportedModelError  # noqa: E402
from keyguard.integrations import peft as kg_peft  # noqa: E402
from keyguard.integrations._adapters import accepted_keys  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*is_gradient_checkpointing:FutureWarning", "ignore:.*Found missing adapter keys:UserWarning"
)


def peft_model(arch: str, **lora: Any) -> Any:
    """A PeftModel with a fresh (random) ``default`` adapter of the same layout as the test adapters."""
    spec = ARCHS[arch]
    options: dict[str, Any] = {"r": 2, "lora_alpha": 4, "target_modules": list(spec.targets)}
    options.update(lora)
    return peft.get_peft_model(build(arch), peft.LoraConfig(task_type=spec.task, **options))


def assert_adapter_equals_file(model: Any, name: str, folder: Path) -> None:
    """By construction of the test adapters (not keyguard's code): each file tensor is in the PeftModel at
    ``base_model.model.<path>`` with the adapter name after ``lora_A`` / ``lora_B`` (or in the head's copy)."""
    held = model.state_dict()
    for key, tensor in load_file(str(folder / "adapter_model.safetensors")).items():
        path = module_path(key)
        for role in ("lora_A", "lora_B"):
            path = path.replace(f".{role}.", f".{role}.{name}.")
        if ".lora_" not in path:
            owner, _, leaf = path.rpartition(".")
            path = f"{owner}.modules_to_save.{name}.{leaf}"
        live = held["base_model.model." + path]
        assert not live.is_meta and torch.equal(live, tensor.to(live.dtype)), path


def test_load_a_new_adapter(adapters: dict[str, Path]) -> None:
    model = peft_model("llama")
    result = kg_peft.load_adapter(model, adapters["llama"], "mine")
    assert isinstance(result, LoadResult) and result.ok
    assert result.plan.empty and result.report.plan.empty  # a PeftModel takes PEFT's saved keys as they are
    assert result.loaded == result.verified == 8 and result.left_out == [] and result.notes == []
    assert str(result).splitlines() == [
        f"Loaded and verified 8 tensors into adapter 'mine' of PeftModelForCausalLM from {adapters['llama']}.",
        "Plan applied: none (the keys loaded as they stand).",
    ]
    assert_adapter_equals_file(model, "mine", adapters["llama"])
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".mine." in n)  # frozen, as PEFT does
    before = forward(model).logits
    model.set_adapter("mine")
    assert not torch.equal(before, forward(model).logits)
    assert kg_peft.verify_adapter(model, adapters["llama"], "mine").ok


def test_overwrite_an_existing_adapter_with_a_head(adapters: dict[str, Path]) -> None:
    model = peft_model("bert_cls")  # its default adapter (and classifier copy) start random
    assert not kg_peft.verify_adapter(model, adapters["bert_cls"]).ok
    kg_peft.load_adapter(model, adapters["bert_cls"])
    assert_adapter_equals_file(model, "default", adapters["bert_cls"])
    report = kg_peft.verify_adapter(model, adapters["bert_cls"])
    assert report.ok and report.findings[0].ctx["count"] == 10
    assert report.check == "adapter-verify"
    assert report.verdict.message == "OK: every tensor of the adapter equals the file."


def test_module_paths_that_do_not_match_load_silently_with_peft(adapters: dict[str, Path]) -> None:
    folder = adapters["llama_wrapped"]  # trained on a model wrapped once more: every path has an extra `model.`
    model = peft_model("llama")
    model.load_adapter(str(folder), "w")  # stock PEFT: a warning at most, and nothing changes
    report = kg_peft.verify_adapter(model, folder, "w")
    assert not report.ok
    differs = next(f for f in report.findings if f.code == "KG561")
    assert differs.ctx["count"] == differs.ctx["total"] == 8
    assert "the model does not hold the adapter as its file has it" in report.verdict.message
    assert "load_state_dict" not in report.render()
    assert all((ex.detail or "").startswith("differs from the file") for ex in differs.examples)

    loaded = kg_peft.load_adapter(model, folder, "w2")
    assert [rule.describe() for rule in loaded.plan.rules] == ["remove segment 'model'"]
    assert_adapter_equals_file(model, "w2", adapters["llama"])
    assert kg_peft.verify_adapter(model, folder, "w2").ok


def test_a_load_with_a_plan_says_what_it_did(adapters: dict[str, Path]) -> None:
    """The load worked and every tensor was checked: said so, not "FATAL KG404 ... would fail"."""
    model = peft_model("gpt2")
    result = kg_peft.load_adapter(model, adapters["gpt2_extra"], "x")  # every key behind an extra `module.`
    text = str(result)
    assert text.startswith(f"Loaded and verified {result.loaded} tensors into adapter 'x' of PeftModelForCausalLM")
    assert "Plan applied (1 rule): strip prefix 'module.'." in text and "FATAL" not in text
    assert not result.report.ok and result.report.check == "adapter-keys"  # the file as given, before the plan
    assert "which the plan resolved" in text


def test_a_plain_model_is_refused_clearly_and_from_pretrained_wraps_it(adapters: dict[str, Path]) -> None:
    plain = build("llama")
    with pytest.raises(UnsupportedModelError, match=r"from_pretrained\(model, adapter_dir\)") as caught:
        kg_peft.load_adapter(plain, adapters["llama"])
    assert isinstance(caught.value, TypeError) and not hasattr(plain, "peft_config")
    ours = kg_peft.from_pretrained(build("llama"), adapters["llama"])
    theirs = peft.PeftModel.from_pretrained(build("llama"), str(adapters["llama"]))
    assert type(ours) is type(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())  # frozen, in eval, as PEFT
    trainable = kg_peft.from_pretrained(build("llama"), adapters["llama"], is_trainable=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)
    with pytest.raises(UnsupportedModelError, match="load_adapter"):
        kg_peft.from_pretrained(ours, adapters["llama"])


def snapshot(model: Any) -> dict[str, Any]:
    return {
        "modules": [(n, type(m).__name__, id(m)) for n, m in model.named_modules()],
        "configs": sorted(model.peft_config),
        "active": model.active_adapter,
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def assert_unchanged(model: Any, before: dict[str, Any]) -> None:
    after = snapshot(model)
    for part in ("modules", "configs", "active", "grad"):
        assert after[part] == before[part], part
    assert after["tensors"].keys() == before["tensors"].keys()
    assert all(torch.equal(after["tensors"][k], v) for k, v in before["tensors"].items())


@pytest.mark.parametrize("targets", [None, ["k_proj"]], ids=["same-modules", "new-modules"])
def test_ctrl_c_during_load_adapter_leaves_the_model_as_it_was(adapters: dict[str, Path], targets: Any) -> None:
    model = peft_model("llama")
    folder = adapters["llama"]
    if targets is not None:  # an adapter whose LoRA layers PEFT must inject into modules that have none yet
        other = peft.get_peft_model(
            build("llama"), peft.LoraConfig(r=2, target_modules=targets, init_lora_weights=False)
        )
        folder = Path(str(folder) + "-k")
        other.save_pretrained(folder)

    def interrupt(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    layer = model.base_model.model.model.layers[1].self_attn
    handle = layer.register_load_state_dict_pre_hook(interrupt)  # fires while PEFT loads the adapter
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        kg_peft.load_adapter(model, folder, "new")
    assert_unchanged(model, before)
    with pytest.raises(KeyboardInterrupt):  # an existing adapter overwritten: its tensors come back too
        kg_peft.load_adapter(model, adapters["llama_2"], "default")
    assert_unchanged(model, before)
    handle.remove()


def test_a_refusal_leaves_the_model_as_it_was(adapters: dict[str, Path]) -> None:
    model = peft_model("llama")
    before = snapshot(model)
    with pytest.raises(KeyMismatchError):
        kg_peft.load_adapter(model, adapters["llama_missing"], "m")
    assert_unchanged(model, before)
    plain = build("llama")
    tensors = {k: v.clone() for k, v in plain.state_dict().items()}
    with pytest.raises(KeyMismatchError):
        kg_peft.from_pretrained(plain, adapters["llama_missing"])
    assert not hasattr(plain, "peft_config") and plain.state_dict().keys() == tensors.keys()
    assert all(p.requires_grad for p in plain.parameters())


def test_an_adapter_saved_with_its_embedding_loads_and_says_when_it_replaced_it(tmp_path: Path) -> None:
    def save(folder: Path, shift: float) -> Path:
        base = build("llama")
        with torch.no_grad():
            base.get_input_embeddings().weight.add_(shift)
        config = peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["embed_tokens"], init_lora_weights=False)
        with pytest.warns(UserWarning, match="save_embedding_layers"):
            peft.get_peft_model(base, config).save_pretrained(folder)
        return folder

    same, shifted = save(tmp_path / "same", 0.0), save(tmp_path / "shifted", 0.5)
    model = peft_model("llama")
    result = kg_peft.load_adapter(model, same, "same")
    assert result.notes == [] and result.loaded == result.verified == 3
    with pytest.warns(UserWarning, match="KG620"):
        result = kg_peft.load_adapter(model, shifted, "shifted")
    assert [n.code for n in result.notes] == ["KG620"] and "KG620 adapter_base_weight_replaced" in str(result)
    stock = peft_model("llama")
    stock.load_adapter(str(shifted), "shifted")
    embedding = "base_model.model.model.embed_tokens.base_layer.weight"
    assert torch.equal(model.state_dict()[embedding], stock.state_dict()[embedding])  # what stock PEFT does
    assert kg_peft.verify_adapter(model, shifted, "shifted").ok


def test_strict_strategy_refuses_what_needs_a_plan(adapters: dict[str, Path]) -> None:
    model = peft_model("llama")
    with pytest.raises(KeyMismatchError, match="even after the plan"):
        kg_peft.load_adapter(model, adapters["llama_wrapped"], "w", strategy="strict")
    assert "w" not in model.peft_config  # nothing half-made is left behind


def test_a_missing_tensor_is_refused_naming_it(adapters: dict[str, Path]) -> None:
    model = peft_model("llama")
    with pytest.raises(KeyMismatchError, match=MISSING_KEY.replace(".", r"\.")) as caught:
        kg_peft.load_adapter(model, adapters["llama_missing"], "m")
    assert [f.kind for f in caught.value.report.errors()] == ["missing"]
    assert "m" not in model.peft_config


def test_meta_adapter_tensors_are_assigned(adapters: dict[str, Path]) -> None:
    model = peft_model("llama")
    config = peft.LoraConfig.from_pretrained(str(adapters["llama"]))
    model.add_adapter("lazy", config, low_cpu_mem_usage=True)
    assert any(p.is_meta for n, p in model.named_parameters() if ".lazy." in n)
    assert [f.code for f in kg_peft.verify_adapter(model, adapters["llama"], "lazy").errors()] == ["KG562"]
    kg_peft.load_adapter(model, adapters["llama"], "lazy")
    assert_adapter_equals_file(model, "lazy", adapters["llama"])


def test_refusals(adapters: dict[str, Path], tmp_path: Path) -> None:
    model = peft_model("llama")
    with pytest.raises(ValueError, match="no adapter 'nope'"):
        kg_peft.verify_adapter(model, adapters["llama"], "nope")
    ia3 = tmp_path / "ia3"
    shutil.copytree(adapters["llama"], ia3)
    config = json.loads((ia3 / "adapter_config.json").read_text())
    (ia3 / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        kg_peft.load_adapter(model, ia3, "x")


# -- the keys keyguard takes the model to accept, against PEFT's own saved keys -------------------------------------
@pytest.mark.parametrize(
    ("arch", "lora"),
    [
        ("llama", {}),
        ("llama", {"use_dora": True}),
        ("llama_cls", {}),
        ("bert_cls", {"bias": "lora_only"}),
        ("gpt2", {"bias": "all", "fan_in_fan_out": True}),
        ("gpt2", {"fan_in_fan_out": True}),
    ],
)
def test_accepted_keys_are_what_peft_saves(arch: str, lora: dict[str, Any]) -> None:
    model = peft_model(arch, **lora)
    model.add_adapter(
        "second",
        peft.LoraConfig(
            task_type=ARCHS[arch].task,
            r=2,
            target_modules=["dense"] if arch == "bert_cls" else list(ARCHS[arch].targets),
        ),
    )
    for name in ("default", "second"):
        saved = peft.get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
        assert set(accepted_keys(model, name)) == set(saved), name
