"""``keyguard.check_adapter`` on real PEFT adapters, clean and broken the ways exports break.

Each broken adapter is a clean one, saved by PEFT, whose files were rewritten like a faulty export would: the true
problem is known from the construction, so each test checks the code, the keys named, and that nothing else is
reported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from _peft_adapters import Zoo, model, rename_all, set_fields, zoo

import keyguard
from keyguard import Report
from keyguard.adapter_checks import check_adapter
from keyguard.fixes import AddPrefix, Applicability, StripPrefix
from keyguard.report import KINDS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
__all__ = ["zoo"]


def codes(report: Report) -> list[str]:
    return [f.code for f in report.findings]


def only(report: Report, code: str) -> Any:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, (code, codes(report))
    finding = found[0]
    assert finding.severity == KINDS[code].severity and finding.kind == KINDS[code].kind
    return finding


def lora_keys(folder: Path) -> list[str]:
    return [k for k in keyguard.read_keys(folder / "adapter_model.safetensors") if "lora_" in k]


# -- clean adapters pass, whatever the base is given as ----------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize("base_as", ["checkpoint", "config", "manifest"])
def test_clean_adapter_passes(zoo: Zoo, arch: str, base_as: str) -> None:
    adapter = zoo.adapter(arch)
    base = {"checkpoint": zoo.base, "config": zoo.config_folder, "manifest": zoo.manifest}[base_as](arch)
    report = check_adapter(adapter, base)
    assert report.ok, report.render()
    assert report.findings == []
    assert report.summary.coverage_before == 1.0
    assert report.summary.matched == report.summary.expected == len(keyguard.read_keys(adapter))
    assert report.checkpoint.location == str(adapter) and report.checkpoint.format == "peft-adapter"
    assert report.plan.empty


def test_base_as_checkpoint_file_and_adapter_as_a_file_inside(zoo: Zoo) -> None:
    adapter = zoo.adapter("llama")
    report = check_adapter(adapter / "adapter_config.json", zoo.base("llama") / "model.safetensors")
    assert report.ok and report.checkpoint.location == str(adapter)


def test_pickle_adapter(zoo: Zoo) -> None:
    adapter = zoo.adapter("llama", "bin", safe=False)
    assert (adapter / "adapter_model.bin").is_file()
    report = check_adapter(adapter, zoo.manifest("llama"))
    assert report.ok and report.findings == []


def test_dora_embeddings_rank_pattern_modules_to_save_pass(zoo: Zoo) -> None:
    adapter = zoo.adapter(
        "llama",
        "rich",
        target_modules=["q_proj", "v_proj", "embed_tokens"],
        use_dora=True,
        rank_pattern={"v_proj": 2},
        modules_to_save=["lm_head"],
    )
    report = check_adapter(adapter, zoo.base("llama"))
    assert report.ok and report.findings == [], report.render()


def test_conv1d_lora_bias_and_all_linear_pass(zoo: Zoo) -> None:
    gpt2 = zoo.adapter("gpt2", "bias", lora_bias=True, target_modules=["c_attn", "c_proj", "c_fc"])
    assert check_adapter(gpt2, zoo.manifest("gpt2")).findings == []
    for arch in ("llama", "gpt2", "bert"):
        adapter = zoo.adapter(arch, "all-linear", target_modules="all-linear")
        report = check_adapter(adapter, zoo.base(arch))
        assert report.findings == [], (arch, report.render())


def test_layer_selection_and_exclusion_pass(zoo: Zoo) -> None:
    adapter = zoo.adapter(
        "llama",
        "layers",
        target_modules=["q_proj", "v_proj", "o_proj"],
        layers_to_transform=[1],
        layers_pattern="layers",
        exclude_modules=["o_proj"],
    )
    assert {k.split(".")[4] for k in lora_keys(adapter)} == {"1"}
    assert check_adapter(adapter, zoo.base("llama")).findings == []


def test_bias_all_passes(zoo: Zoo) -> None:
    adapter = zoo.adapter("bert", "bias-all", bias="all")
    assert check_adapter(adapter, zoo.base("bert")).findings == []


# -- naming: the engine explains, with the fix ------------------------------------------------------------------
def test_stripped_prefix(zoo: Zoo) -> None:
    adapter = zoo.broken(zoo.adapter("llama"), keys=rename_all(lambda k: k.removeprefix("base_model.model.")))
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG502", "KG102"], report.render()
    fatal = only(report, "KG502")
    assert "would change nothing" in fatal.message and "the safe plan maps 8 keys" in fatal.message
    prefix = only(report, "KG102")
    assert prefix.count == 8 and prefix.fix is not None and prefix.fix.applicability is Applicability.safe
    assert report.plan.rules == [AddPrefix(prefix="base_model.model.", only=["model"], reason="KG102")]
    assert all(report.plan.rename_key(k).startswith("base_model.model.model.") for k in lora_keys(adapter))
    assert report.summary.coverage_before == 0.0 and report.summary.coverage_after == 1.0


def test_doubled_prefix(zoo: Zoo) -> None:
    adapter = zoo.broken(zoo.adapter("llama"), keys=rename_all(lambda k: "base_model.model." + k))
    report = check_adapter(adapter, zoo.manifest("llama"))
    assert codes(report) == ["KG502", "KG101"], report.render()
    assert report.plan.rules and isinstance(report.plan.rules[0], StripPrefix)
    assert report.plan.rules[0].prefix == "base_model.model."


def test_adapter_name_left_in_keys(zoo: Zoo) -> None:
    leak = rename_all(lambda k: k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."))
    adapter = zoo.broken(zoo.adapter("llama"), keys=leak)
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG502", "KG201"], report.render()
    renamed = only(report, "KG201")
    assert renamed.count == 8 and "default" in renamed.message
    assert all(".default." not in report.plan.rename_key(k) for k in lora_keys(adapter))


def test_adapter_for_another_architecture(zoo: Zoo) -> None:
    report = check_adapter(zoo.adapter("bert"), zoo.base("llama"))
    assert codes(report) == ["KG502", "KG402", "KG503"], report.render()
    assert sorted(only(report, "KG503").ctx["entries"]) == ["query", "value"]  # peft saves a set: any order
    assert only(report, "KG402").count == len(keyguard.read_keys(zoo.adapter("bert")))
    assert report.plan.empty


# -- targets, pairs, ranks, shapes --------------------------------------------------------------------------------
def test_target_entry_the_base_lacks(zoo: Zoo) -> None:
    adapter = zoo.broken(zoo.adapter("llama"), config_edit=set_fields(target_modules=["q_proj", "v_proj", "query"]))
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG503"] and report.ok
    assert "target_modules entry `query` matches no module" in only(report, "KG503").message  # one entry: matches


def test_declared_module_without_weights(zoo: Zoo) -> None:
    drop = "base_model.model.model.layers.1.self_attn.v_proj."
    adapter = zoo.broken(zoo.adapter("llama"), keys=lambda s: {k: v for k, v in s.items() if not k.startswith(drop)})
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG504"]
    finding = only(report, "KG504")
    assert finding.patterns == ["model.layers.1.self_attn.v_proj"] and finding.count == 1
    assert set(finding.expected_keys) == {drop + "lora_A.weight", drop + "lora_B.weight"}


def test_weights_the_config_does_not_declare(zoo: Zoo) -> None:
    adapter = zoo.broken(zoo.adapter("llama"), config_edit=set_fields(target_modules=["q_proj"]))
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG505"]
    finding = only(report, "KG505")
    assert finding.count == 4 and all(".v_proj.lora_" in k for k in finding.checkpoint_keys)


def test_one_lora_b_removed(zoo: Zoo) -> None:
    gone = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    adapter = zoo.broken(zoo.adapter("llama"), keys=lambda s: {k: v for k, v in s.items() if k != gone})
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG506"]
    finding = only(report, "KG506")
    assert finding.expected_keys == [gone] and finding.count == 1
    assert finding.checkpoint_keys == [gone.replace("lora_B", "lora_A")]


def test_dora_magnitude_removed(zoo: Zoo) -> None:
    clean = zoo.adapter("llama", "dora", use_dora=True)
    report = check_adapter(
        zoo.broken(clean, keys=lambda s: {k: v for k, v in s.items() if "magnitude" not in k}), zoo.base("llama")
    )
    assert codes(report) == ["KG506"]
    assert only(report, "KG506").ctx["missing"] == {"lora_magnitude_vector": 4}


def test_rank_in_config_differs_from_tensors(zoo: Zoo) -> None:
    adapter = zoo.broken(zoo.adapter("llama"), config_edit=set_fields(r=8))
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG507"]
    finding = only(report, "KG507")
    assert finding.count == 4 and "config r=8, tensors 4" in finding.message


def test_rank_pattern(zoo: Zoo) -> None:
    clean = zoo.adapter("llama", "rank-pattern", rank_pattern={"v_proj": 2})
    assert check_adapter(clean, zoo.base("llama")).findings == []
    report = check_adapter(zoo.broken(clean, config_edit=set_fields(rank_pattern={})), zoo.base("llama"))
    finding = only(report, "KG507")
    assert finding.count == 2 and all(".v_proj." in k for k in finding.checkpoint_keys)
    # a pattern for another module leaves v_proj at r
    wrong = zoo.broken(clean, config_edit=set_fields(rank_pattern={"layers.0.self_attn.v_proj": 2}))
    finding = only(check_adapter(wrong, zoo.base("llama")), "KG507")
    assert finding.count == 1 and "layers.1.self_attn.v_proj" in finding.checkpoint_keys[0]


def test_adapter_for_a_model_of_another_size(zoo: Zoo) -> None:
    report = check_adapter(zoo.adapter("llama"), zoo.base("llama", hidden_size=32, num_attention_heads=4))
    assert codes(report) == ["KG508"]
    finding = only(report, "KG508")
    assert finding.count == 4 and "nn.Linear [out, in]" in finding.examples[0].detail


def test_conv1d_shapes_are_checked_both_ways(zoo: Zoo) -> None:
    """GPT-2's Conv1D stores [in, out]: the clean adapter passes (above); an adapter shaped for nn.Linear does not."""
    clean = zoo.adapter("gpt2")

    def as_linear(state: dict[str, Any]) -> dict[str, Any]:
        # what an exporter treating c_attn as nn.Linear [out=16, in=48] would produce
        return {k: (v.new_zeros(v.shape[0], 48) if k.endswith("c_attn.lora_A.weight") else v) for k, v in state.items()}

    report = check_adapter(zoo.broken(clean, keys=as_linear), zoo.config_folder("gpt2"))
    assert codes(report) == ["KG508"], report.render()
    assert "Conv1D [in, out]: in 16, out 48" in only(report, "KG508").examples[0].detail


def test_modules_to_save_head_of_the_wrong_size(zoo: Zoo) -> None:
    adapter = zoo.adapter("bert", "five-labels", model_overrides={"num_labels": 5})
    report = check_adapter(adapter, zoo.base("bert"))
    assert codes(report) == ["KG509"]
    finding = only(report, "KG509")
    assert set(finding.checkpoint_keys) == {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    assert "adapter [5, 16], base [3, 16]" in {e.detail for e in finding.examples}


def test_modules_to_save_head_missing(zoo: Zoo) -> None:
    adapter = zoo.broken(zoo.adapter("bert"), keys=lambda s: {k: v for k, v in s.items() if "classifier" not in k})
    finding = only(check_adapter(adapter, zoo.base("bert")), "KG510")
    assert set(finding.expected_keys) == {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}


def test_mixed_dtypes(zoo: Zoo) -> None:
    import torch

    odd = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    adapter = zoo.broken(
        zoo.adapter("llama"), keys=lambda s: {k: v.to(torch.bfloat16) if k == odd else v for k, v in s.items()}
    )
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG511"] and report.ok
    assert only(report, "KG511").checkpoint_keys == [odd]


# -- the config ---------------------------------------------------------------------------------------------------
def test_invalid_config_fields_are_a_finding(zoo: Zoo) -> None:
    adapter = zoo.broken(zoo.adapter("llama"), config_edit=set_fields(r="8", bias="some", target_modules=5))
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG501"], report.render()
    finding = only(report, "KG501")
    assert set(finding.ctx["fields"]) == {"r", "bias", "target_modules"}
    for name in ("r:", "bias:", "target_modules:", "'8'"):
        assert name in finding.message


def test_config_that_is_not_json(zoo: Zoo) -> None:
    adapter = zoo.broken(zoo.adapter("llama"))
    (adapter / "adapter_config.json").write_text('{"r": 4, "target_modules": ["q_proj",')
    report = check_adapter(adapter, zoo.base("llama"))
    assert codes(report) == ["KG501"]
    assert only(report, "KG501").ctx["problem"] == "not-json"
    # the structural checks that need no config still run
    stripped = zoo.broken(adapter, keys=rename_all(lambda k: k.removeprefix("base_model.model.")))
    assert codes(check_adapter(stripped, zoo.base("llama"))) == ["KG502", "KG102", "KG501"]


def test_unreadable_adapter_folder_raises(zoo: Zoo, tmp_path: Path) -> None:
    with pytest.raises(keyguard.SourceError, match="no such adapter folder"):
        check_adapter(tmp_path / "nowhere", zoo.base("llama"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(keyguard.SourceError, match="not a PEFT adapter"):
        check_adapter(tmp_path / "empty", zoo.base("llama"))
    with pytest.raises(keyguard.SourceError, match="is a PEFT adapter"):
        check_adapter(zoo.adapter("llama"), zoo.adapter("llama"))


# -- values -------------------------------------------------------------------------------------------------------
def test_nan_with_check_values(zoo: Zoo) -> None:
    poisoned = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"

    def poison(state: dict[str, Any]) -> dict[str, Any]:
        tensor = state[poisoned].clone()
        tensor[0, 0] = math.nan
        tensor[1, 1] = math.inf
        return {**state, poisoned: tensor}

    adapter = zoo.broken(zoo.adapter("llama"), keys=poison)
    assert check_adapter(adapter, zoo.base("llama")).findings == []  # names and shapes are fine
    report = check_adapter(adapter, zoo.base("llama"), check_values=True)
    assert codes(report) == ["KG601"]
    finding = only(report, "KG601")
    assert finding.checkpoint_keys == [poisoned] and finding.ctx["tensors"][poisoned] == {"nan": 1, "inf": 1}
    assert finding.message.startswith("1 tensor holds NaN or infinite values")  # one tensor: holds
    # the keys load: the verdict says what is wrong (the values), not that a load would fail
    assert report.check == "adapter-files"
    assert report.verdict.message == "1 error finding, 0 warnings: tensors hold NaN or infinite values."
    assert "load_state_dict" not in report.render() and "load would fail" not in report.render()


def test_untrained_lora_b(zoo: Zoo) -> None:
    untrained = zoo.adapter("llama", "untrained", trained=False)  # PEFT's default init: lora_B is zero
    assert check_adapter(untrained, zoo.base("llama")).findings == []
    report = check_adapter(untrained, zoo.base("llama"), check_values=True)
    assert codes(report) == ["KG512"] and report.ok
    finding = only(report, "KG512")
    assert finding.count == 4 and "the adapter changes nothing" in finding.message
    assert check_adapter(zoo.adapter("llama"), zoo.base("llama"), check_values=True).findings == []


# -- X-LoRA -------------------------------------------------------------------------------------------------------
def test_xlora_prediction_from_the_keys(zoo: Zoo) -> None:
    assert check_adapter(zoo.adapter("llama"), zoo.base("llama"), xlora=True).findings == []
    gpt2 = check_adapter(zoo.adapter("gpt2"), zoo.manifest("gpt2"), xlora=True)
    assert codes(gpt2) == ["KG550"]
    finding = only(gpt2, "KG550")
    assert finding.ctx["keyguard_loads"] is True and "through keyguard" in finding.message
    assert finding.ctx["predicted_from"] == "keys"
    assert finding.examples[0].expected == "model.model.transformer.h.0.attn.c_attn.lora_A.weight"
    stripped = zoo.broken(zoo.adapter("bert"), keys=rename_all(lambda k: k.removeprefix("base_model.model.")))
    report = check_adapter(stripped, zoo.base("bert"), xlora=True)
    assert codes(report) == ["KG502", "KG551", "KG102"], report.render()
    assert only(report, "KG551").count == len(keyguard.read_keys(stripped))


def test_xlora_through_the_integration_with_a_config_base(zoo: Zoo) -> None:
    """A config.json base can be built, so the X-LoRA integration's preflight simulates stock PEFT exactly."""
    pytest.importorskip("keyguard.integrations.xlora")
    llama = check_adapter(zoo.adapter("llama"), zoo.config_folder("llama"), xlora=True)
    assert llama.ok and codes(llama) == ["KG556"]  # info: the expert loads
    gpt2 = check_adapter(zoo.adapter("gpt2"), zoo.config_folder("gpt2"), xlora=True)
    assert "KG550" in codes(gpt2) and "predicted_from" not in only(gpt2, "KG550").ctx


# -- against PEFT itself ------------------------------------------------------------------------------------------
def test_findings_agree_with_a_real_peft_load(zoo: Zoo) -> None:
    """A clean adapter loads every tensor; a stripped one loads none of them, silently (hence KG502 is fatal)."""
    import peft
    import torch
    from peft.utils.save_and_load import load_peft_weights

    clean = zoo.adapter("llama")
    stripped = zoo.broken(clean, keys=rename_all(lambda k: k.removeprefix("base_model.model.")))
    for folder, loads in ((clean, True), (stripped, False)):
        base = model("llama")
        torch.manual_seed(1)  # LoRA layers PEFT initialises must not repeat the adapter's own random init
        loaded = peft.PeftModel.from_pretrained(base, str(folder))
        state = loaded.state_dict()
        for key, tensor in load_peft_weights(str(clean), device="cpu").items():
            live = state[key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")]
            assert bool((live == tensor).all()) is loads, key
    assert check_adapter(clean, zoo.base("llama")).ok
    assert not check_adapter(stripped, zoo.base("llama")).ok
