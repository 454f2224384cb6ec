"""``preflight``: what stock PEFT and keyguard will do with each expert, predicted from the files' headers.

The predictions are the behaviours ``test_xlora.py`` observes on real builds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from _integration_models import build, module_path, xlora_config  # noqa: E402

from keyguard import Report, read_keys, write_manifest  # noqa: E402
from keyguard.integrations import xlora  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

CASES = {
    # case: (arch, experts as name -> adapter, extra preflight options, the codes predicted, ok)
    "bert_cls": ("bert_cls", {"0": "bert_cls"}, {}, ["KG550", "KG556"], False),
    "llama_cls": ("llama_cls", {"0": "llama_cls"}, {}, ["KG550", "KG556"], False),
    "gpt2": ("gpt2", {"0": "gpt2"}, {}, ["KG550", "KG556"], False),
    "llama": ("llama", {"0": "llama"}, {}, ["KG556"], True),
    "two_named": ("llama", {"math": "llama", "code": "llama_2"}, {}, ["KG554", "KG556", "KG556", "KG622"], False),
    "stripped": ("bert_cls", {"0": "bert_cls_stripped"}, {}, ["KG551", "KG556"], False),
    "extra_prefix": ("gpt2", {"0": "gpt2_extra"}, {}, ["KG550", "KG556"], False),
    "missing": ("llama", {"0": "llama_missing"}, {}, ["KG552", "KG560"], False),
    "low_cpu_mem_usage": ("llama", {"0": "llama"}, {"low_cpu_mem_usage": True}, ["KG553", "KG556"], False),
    "two_heads": ("bert_cls", {"0": "bert_cls", "1": "bert_cls_2"}, {}, ["KG550", "KG550", "KG555"], False),
}


def codes(report: Report) -> list[str]:
    return sorted(f.code for f in report.findings)


@pytest.mark.parametrize("case", list(CASES))
def test_predictions(case: str, adapters: dict[str, Path]) -> None:
    arch, experts, options, expected, ok = CASES[case]
    report = xlora.preflight(build(arch), xlora_config(arch, {n: adapters[a] for n, a in experts.items()}), **options)
    assert codes(report) == expected, report.render()
    assert report.ok is ok
    assert report.check == "xlora-preflight" and "load_state_dict" not in report.render()
    if ok:
        assert report.verdict.message == "OK: every expert loads, with stock PEFT and through keyguard."
    else:
        assert "stock PEFT would not load every expert as it stands" in report.verdict.message
    for found in report.findings:
        assert found.ctx.get("adapter") is None or found.ctx["adapter"] in experts


def test_a_prediction_names_the_keys_and_the_plan(adapters: dict[str, Path]) -> None:
    report = xlora.preflight(build("bert_cls"), xlora_config("bert_cls", {"0": adapters["bert_cls"]}))
    fails = next(f for f in report.findings if f.code == "KG550")
    assert "KeyError: 'model.classifier.weight'" in fails.message
    assert fails.fix is not None and fails.fix.applicability.value == "safe"
    assert [r.describe() for r in fails.fix.rules] == ["strip prefix 'base_model.'"]
    loads = next(f for f in report.findings if f.code == "KG556")
    assert loads.ctx["plan"] == "strip prefix 'base_model.'"
    assert report.summary.expected == report.summary.checkpoint == 10
    assert report.summary.coverage_after == 1.0
    rendered = report.render()
    assert "KG550" in rendered and "KG556" in rendered


def test_preflight_leaves_model_and_config_alone(adapters: dict[str, Path]) -> None:
    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = xlora_config("llama", {"0": adapters["llama"]})
    fields = dict(vars(config))
    xlora.preflight(model, config)
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert vars(config) == fields


def test_experts_that_are_not_lora(adapters: dict[str, Path], tmp_path: Path) -> None:
    ia3 = tmp_path / "ia3"
    shutil.copytree(adapters["llama"], ia3)
    config: dict[str, Any] = json.loads((ia3 / "adapter_config.json").read_text())
    (ia3 / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    experts = {"0": ia3, "1": tmp_path / "nowhere", "2": adapters["gpt2"]}  # a GPT-2 adapter on a Llama
    report = xlora.preflight(build("llama"), xlora_config("llama", experts))
    assert codes(report) == ["KG557", "KG557", "KG557"]
    assert "IA3" in report.findings[0].message and "no such file" in report.findings[1].message
    assert "c_attn" in report.findings[2].message  # PEFT's own refusal: the target modules are not in a Llama


def test_the_x_lora_models_own_name(adapters: dict[str, Path]) -> None:
    report = xlora.preflight(build("llama"), xlora_config("llama", {"default": adapters["llama"]}))
    assert codes(report) == ["KG554"] and "own adapter name" in report.findings[0].message


def test_expert_keys_for_the_command_line(adapters: dict[str, Path], tmp_path: Path, cli: Any) -> None:
    folder = adapters["bert_cls"]
    keys = xlora.expert_keys(build("bert_cls"), folder)
    assert set(keys) == {"model." + module_path(k) for k in read_keys(folder)}
    assert keys["model.classifier.weight"].shape == (3, 16)
    write_manifest(keys, tmp_path / "bert-lora.xlora.keys.json")
    result = cli("diagnose", folder, "--expected", tmp_path / "bert-lora.xlora.keys.json")
    assert result.code == 1  # the keys do not match as they stand...
    assert "KG101" in result.out and "strip prefix 'base_model.'" in result.out  # ...and the safe plan maps them all
    assert "coverage 0% -> 100%" in " ".join(result.out.split())
