"""X-LoRA with standard LoRA adapters (peft#2132): stock PEFT's behaviour per case, and keyguard's guarded load.

Every passing case compares each loaded LoRA tensor with the adapter file through PEFT's own
``get_peft_model_state_dict`` (not keyguard's code) and runs a forward pass of the X-LoRA model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

import peft.tuners.xlora.model as xlora_module  # noqa: E402
from _integration_models import (  # noqa: E402
    MISSING_KEY,
    assert_expert_equals_file,
    build,
    forward,
    module_path,
    xlora_config,
)

from keyguard import KeyMismatchError, Plan, UnsupportedVersionError  # noqa: E402
from keyguard.fixes import StripPrefix  # noqa: E402
from keyguard.integrations import xlora  # noqa: E402

# PEFT calls a transformers API that transformers 5 deprecates; stock loads into meta tensors warn
# PEFT 0.15 to 0.17: X-LoRA over a model with a modules_to_save wrapper (a sequence-classification head) fails in
# PEFT's own forward (ModulesToSaveWrapper.enable_adapters with X-LoRA's list of active adapters); fixed in 0.18
NEEDS_PEFT_0_18 = pytest.mark.skipif(
    tuple(int(p) for p in peft.__version__.split(".")[:2]) < (0, 18),
    reason="PEFT < 0.18 cannot run X-LoRA over a model with modules_to_save (its forward fails)",
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*is_gradient_checkpointing:FutureWarning", "ignore:.*copying from a non-meta parameter:UserWarning"
)
ORIGINAL = xlora_module._load_adapter_into_lora_model


@pytest.fixture(autouse=True)
def _original_loader_is_back() -> Any:
    yield
    assert xlora_module._load_adapter_into_lora_model is ORIGINAL


def lora_model_of(model: Any) -> Any:
    return model.base_model.lora_model


def guarded(arch: str, experts: dict[str, Path], **kwargs: Any) -> Any:
    """Build through keyguard and check every expert against its file, and a forward pass."""
    config = xlora_config(arch, experts)
    model = xlora.get_peft_model(build(arch), config, **kwargs)
    assert list(config.adapters) == sorted(experts)  # put in the order PEFT saves it
    for name, folder in experts.items():
        assert assert_expert_equals_file(lora_model_of(model), name, folder) > 0
    output = forward(model)
    assert torch.isfinite(output.logits).all()
    report = xlora.verify(model, config)
    assert report.ok, report.render()
    assert report.check == "xlora-verify"
    assert report.verdict.message == "OK: every expert of the X-LoRA model equals its file."
    assert [f.code for f in report.findings] == ["KG563"] * len(experts)
    return model


def stock(arch: str, experts: dict[str, Path], **kwargs: Any) -> Any:
    return peft.get_peft_model(build(arch), xlora_config(arch, experts), **kwargs)


# -- the architectures -------------------------------------------------------------------------------------------------
@NEEDS_PEFT_0_18
def test_bert_sequence_classification_the_2132_case(adapters: dict[str, Path]) -> None:
    with pytest.raises(KeyError, match=r"model\.classifier\.weight"):
        stock("bert_cls", {"0": adapters["bert_cls"]})
    model = guarded("bert_cls", {"0": adapters["bert_cls"]})
    assert forward(model).logits.shape == (1, 3)


@NEEDS_PEFT_0_18
def test_llama_sequence_classification(adapters: dict[str, Path]) -> None:
    with pytest.raises(KeyError, match=r"model\.score\.weight"):
        stock("llama_cls", {"0": adapters["llama_cls"]})
    guarded("llama_cls", {"0": adapters["llama_cls"]})


def test_gpt2_causal_lm(adapters: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"Got unexpected keys[\s\S]*model\.model\.transformer\.h\.0"):
        stock("gpt2", {"0": adapters["gpt2"]})
    guarded("gpt2", {"0": adapters["gpt2"]})


def test_llama_causal_lm_loads_stock_too(adapters: dict[str, Path]) -> None:
    model = stock("llama", {"0": adapters["llama"]})
    assert_expert_equals_file(lora_model_of(model), "0", adapters["llama"])
    forward(model)
    assert xlora.verify(model, xlora_config("llama", {"0": adapters["llama"]})).ok
    guarded("llama", {"0": adapters["llama"]})


def test_two_causal_lm_experts(adapters: dict[str, Path]) -> None:
    experts = {"0": adapters["llama"], "1": adapters["llama_2"]}
    model = guarded("llama", experts)
    assert model.base_model.internal_xlora_classifier.n_classes == 2
    assert lora_model_of(model).active_adapters == ["0", "1"]


# -- names ---------------------------------------------------------------------------------------------------------
def test_experts_named_by_the_user(adapters: dict[str, Path]) -> None:
    experts = {"math": adapters["llama"], "code": adapters["llama_2"]}
    built = stock("llama", experts)  # stock registers "0" and "1": the build passes, the forward pass does not
    with pytest.raises(KeyError, match="math"):
        forward(built)
    report = xlora.verify(built, xlora_config("llama", experts))
    assert not report.ok and {f.code for f in report.errors()} == {"KG554"}

    model = guarded("llama", experts)
    lora_model = lora_model_of(model)
    assert {"math", "code"} <= set(lora_model.peft_config) and not {"0", "1"} & set(lora_model.peft_config)
    assert lora_model.active_adapters == ["code", "math"]  # the order PEFT saves them in: see test_saved_order


def test_numbered_names_in_another_order_keep_their_files(adapters: dict[str, Path]) -> None:
    experts = {"1": adapters["llama"], "0": adapters["llama_2"]}
    built = stock("llama", experts)  # stock: "0" gets the first file, whatever the user called it
    assert_expert_equals_file(lora_model_of(built), "0", adapters["llama"])
    guarded("llama", experts)  # keyguard: "1" is the first file, as written


def test_an_expert_may_not_take_the_x_lora_models_own_name(adapters: dict[str, Path]) -> None:
    with pytest.raises(KeyMismatchError, match="KG554") as caught:
        xlora.get_peft_model(build("llama"), xlora_config("llama", {"default": adapters["llama"]}))
    assert caught.value.report.findings[0].kind == "xlora_adapter_names"
    # a refusal compares nothing, and says so (not "0 checkpoint keys, 0 expected (coverage 100%)")
    refused = caught.value.report
    assert refused.check == "refusal" and not refused.ok
    rendered = refused.render()
    assert "nothing was compared" in rendered and "0 checkpoint keys" not in rendered
    assert "load_state_dict" not in rendered
    assert refused.verdict.message.endswith("refused before any tensor was compared; nothing was loaded.")


# -- broken adapters -----------------------------------------------------------------------------------------------
HANG_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
import peft
from _integration_models import build, xlora_config
config = xlora_config("bert_cls", {{"0": {folder!r}}})
model = build("bert_cls")
print("building", flush=True)
peft.get_peft_model(model, config)
print("returned", flush=True)
"""


@pytest.mark.slow
@NEEDS_PEFT_0_18
def test_stripped_adapter_hangs_stock_and_loads_through_keyguard(
    adapters: dict[str, Path], offline_env: dict[str, str], tmp_path: Path
) -> None:
    folder = adapters["bert_cls_stripped"]
    here = Path(__file__).parent  # its helpers, and the suite's shared ones (tests/_tiny.py) one level up
    paths = [str(here), str(here.parent), offline_env["PYTHONPATH"]]
    env = {**offline_env, "PYTHONPATH": os.pathsep.join(paths)}
    script = textwrap.dedent(HANG_SCRIPT.format(folder=str(folder)))
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "building"  # imports done, the build starts now
        time.sleep(4)  # the tiny build takes milliseconds when it terminates
        assert process.poll() is None, f"stock PEFT returned: {process.stdout.read()}"
    finally:
        process.kill()
        process.wait(timeout=30)

    report = xlora.preflight(build("bert_cls"), xlora_config("bert_cls", {"0": folder}))
    assert [f.code for f in report.findings] == ["KG551", "KG556"]
    with xlora.guard() as session:
        model = peft.get_peft_model(build("bert_cls"), xlora_config("bert_cls", {"0": folder}))
    assert [r.describe() for r in session.experts[0].plan.rules] == [
        "add prefix 'model.' to keys under bert., classifier."
    ]
    assert_expert_equals_file(lora_model_of(model), "0", folder)
    assert forward(model).logits.shape == (1, 3)


def test_extra_prefix(adapters: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="Got unexpected keys"):
        stock("gpt2", {"0": adapters["gpt2_extra"]})
    with xlora.guard() as session:
        model = peft.get_peft_model(build("gpt2"), xlora_config("gpt2", {"0": adapters["gpt2_extra"]}))
    assert [r.describe() for r in session.experts[0].plan.rules] == ["strip prefix 'module.base_model.'"]
    assert_expert_equals_file(lora_model_of(model), "0", adapters["gpt2_extra"])
    forward(model)


def test_missing_lora_b_loads_silently_stock_and_is_refused(adapters: dict[str, Path]) -> None:
    folder = adapters["llama_missing"]
    built = stock("llama", {"0": folder})  # no error: the tensor keeps its random initialisation
    held = peft.get_peft_model_state_dict(lora_model_of(built), adapter_name="0")
    assert "model." + module_path(MISSING_KEY) in held
    report = xlora.verify(built, xlora_config("llama", {"0": folder}))
    assert {f.code for f in report.errors()} == {"KG560", "KG561"}

    with pytest.raises(KeyMismatchError) as caught:
        xlora.get_peft_model(build("llama"), xlora_config("llama", {"0": folder}))
    wanted = "model." + module_path(MISSING_KEY)
    assert wanted in str(caught.value)
    assert [f.kind for f in caught.value.report.errors()] == ["missing"]
    assert caught.value.report.errors()[0].expected_keys == [wanted]


def test_low_cpu_mem_usage(adapters: dict[str, Path]) -> None:
    experts = {"a": adapters["llama"], "b": adapters["llama_2"]}
    built = stock("llama", {"0": adapters["llama"]}, low_cpu_mem_usage=True)
    assert any(t.is_meta for t in built.state_dict().values())
    with pytest.raises(RuntimeError, match="meta"):
        forward(built)
    report = xlora.verify(built, xlora_config("llama", {"0": adapters["llama"]}))
    assert [f.code for f in report.errors()] == ["KG562", "KG562"]  # the expert, the classifier

    with xlora.guard() as session:
        model = peft.get_peft_model(build("llama"), xlora_config("llama", experts), low_cpu_mem_usage=True)
    assert [e.assigned_on_exit for e in session.experts] == [True, True]
    assert not [k for k, t in model.state_dict().items() if t.is_meta]
    for name, folder in experts.items():
        assert_expert_equals_file(lora_model_of(model), name, folder)
    assert torch.isfinite(forward(model).logits).all()
    assert xlora.verify(model, xlora_config("llama", experts)).ok


def test_several_sequence_classification_experts_are_a_peft_limitation(adapters: dict[str, Path]) -> None:
    experts = {"a": adapters["bert_cls"], "b": adapters["bert_cls_2"]}
    report = xlora.preflight(build("bert_cls"), xlora_config("bert_cls", experts))
    assert "KG555" in {f.code for f in report.findings}
    assert "KG556" not in {f.code for f in report.findings}  # keyguard would not load them either
    with pytest.raises(KeyMismatchError, match="KG555") as caught:
        xlora.get_peft_model(build("bert_cls"), xlora_config("bert_cls", experts))
    assert "Only one adapter can be set at a time" in " ".join(str(caught.value).split())
    assert caught.value.report.findings[0].ctx["experts"] == ["a", "b"]


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_a_saved_x_lora_model_reloads_under_the_guard(
    adapters: dict[str, Path], tmp_path: Path, low_cpu_mem_usage: bool
) -> None:
    experts = {"math": adapters["gpt2"], "code": adapters["gpt2_extra"]}
    model = guarded("gpt2", experts)
    expected = forward(model).logits
    model.save_pretrained(tmp_path / "saved")  # the X-LoRA classifier's weights, for from_pretrained
    paths = {name: str(folder) for name, folder in experts.items()}
    with xlora.guard() as session:
        reloaded = peft.PeftModel.from_pretrained(
            build("gpt2"), tmp_path / "saved", adapters=paths, low_cpu_mem_usage=low_cpu_mem_usage
        )
    assert {e.name: e.assigned_on_exit for e in session.experts} == dict.fromkeys(experts, low_cpu_mem_usage)
    for name, folder in experts.items():
        assert_expert_equals_file(lora_model_of(reloaded), name, folder)
    assert torch.equal(forward(reloaded).logits, expected)


# -- strategies ----------------------------------------------------------------------------------------------------
def test_strict_strategy_rewrites_nothing(adapters: dict[str, Path]) -> None:
    with pytest.raises(KeyMismatchError, match="no_overlap"):
        xlora.get_peft_model(build("gpt2"), xlora_config("gpt2", {"0": adapters["gpt2"]}), strategy="strict")


def test_a_plan_of_your_own(adapters: dict[str, Path]) -> None:
    plan = Plan(rules=[StripPrefix(prefix="base_model.")])
    model = xlora.get_peft_model(build("gpt2"), xlora_config("gpt2", {"0": adapters["gpt2"]}), strategy=plan)
    assert_expert_equals_file(lora_model_of(model), "0", adapters["gpt2"])
    forward(model)


def test_bad_strategy() -> None:
    with pytest.raises(ValueError, match="strategy"), xlora.guard("loose"):  # type: ignore[arg-type]
        pass


def test_a_config_that_is_not_x_lora_passes_through_to_peft() -> None:
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"])
    ours = xlora.get_peft_model(build("llama"), config)
    theirs = peft.get_peft_model(build("llama"), peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]))
    assert type(ours) is type(theirs) is peft.PeftModelForCausalLM
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())


# -- the guard itself ----------------------------------------------------------------------------------------------
def test_guard_replaces_the_loader_only_inside() -> None:
    with xlora.guard():
        assert xlora_module._load_adapter_into_lora_model is not ORIGINAL
        xlora.check_supported(peft.__version__, xlora_module._load_adapter_into_lora_model)  # same shape
    assert xlora_module._load_adapter_into_lora_model is ORIGINAL


def test_guard_restores_the_loader_when_an_exception_escapes(adapters: dict[str, Path]) -> None:
    with pytest.raises(ZeroDivisionError), xlora.guard():
        _ = 1 / 0
    assert xlora_module._load_adapter_into_lora_model is ORIGINAL
    with pytest.raises(KeyMismatchError), xlora.guard():  # raised by the guarded loader during the build
        peft.get_peft_model(build("llama"), xlora_config("llama", {"0": adapters["llama_missing"]}))
    assert xlora_module._load_adapter_into_lora_model is ORIGINAL


def test_nested_guards_load_through_the_innermost_and_restore_at_the_last_exit(adapters: dict[str, Path]) -> None:
    with xlora.guard() as outer:
        installed = xlora_module._load_adapter_into_lora_model
        with xlora.guard() as inner:
            assert xlora_module._load_adapter_into_lora_model is installed is not ORIGINAL
            peft.get_peft_model(build("llama"), xlora_config("llama", {"0": adapters["llama"]}))
        assert xlora_module._load_adapter_into_lora_model is installed
        assert [e.name for e in inner.experts] == ["0"] and outer.experts == []
    assert xlora_module._load_adapter_into_lora_model is ORIGINAL


# -- version safety ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "version", ["0.15.0", "0.16.0", "0.17.1", "0.20.1", "0.21.0", "0.21.2", "0.21.9", "0.21.2.post1", "0.21.2+local.1"]
)
def test_supported_versions(version: str) -> None:
    xlora.check_supported(version, ORIGINAL)


@pytest.mark.parametrize(
    "version", ["0.22.0", "0.14.0", "0.13.2", "0.12.0", "1.21.2", "0.21.3rc1", "0.21.0.dev0", "0.21", "nonsense"]
)
def test_other_versions_are_refused(version: str) -> None:
    with pytest.raises(UnsupportedVersionError, match=r"0\.15\.0 to 0\.21\.x; the test suite runs 0\.21\.2") as caught:
        xlora.check_supported(version, ORIGINAL)
    assert repr(version) in str(caught.value)


def test_a_loader_of_another_shape_is_refused() -> None:
    def changed(lora_model: Any, adapter_name: str, model_id: str, torch_device: Any = None, **kwargs: Any) -> None:
        del lora_model, adapter_name, model_id, torch_device, kwargs

    with pytest.raises(UnsupportedVersionError, match="ephemeral_gpu_offload=False") as caught:
        xlora.check_supported("0.21.2", changed)
    assert "refuses to patch it blindly" in str(caught.value)
    with pytest.raises(UnsupportedVersionError):
        xlora.check_supported("0.21.2", len)  # a builtin: no inspectable signature


def test_stock_rewrite_predictor() -> None:
    assert (
        xlora.stock_rewrite("base_model.model.model.layers.0.q.lora_A.weight") == "model.model.layers.0.q.lora_A.weight"
    )
    assert xlora.stock_rewrite("base_model.model.bert.x.weight") == "model.model.bert.x.weight"
    assert xlora.stock_rewrite("bert.encoder.layer.0.q.lora_A.weight") is None
