"""keyguard.integrations.transformers: diagnoses that predict what from_pretrained really does (checked against
from_pretrained itself on the same files), and the guarded load."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _tiny import TINY_LLAMA  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from keyguard import KeyMismatchError  # noqa: E402
from keyguard.integrations import transformers as kg_tf  # noqa: E402
from keyguard.integrations._hf_guard import diagnosis, verify  # noqa: E402

MIXTRAL = {**TINY_LLAMA, "num_local_experts": 4, "num_experts_per_tok": 2}


def codes(report: Any) -> dict[str, int]:
    return {f.code: f.count for f in report.findings}


def real_load(cls: Any, folder: Path, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """What transformers itself makes of the folder."""
    return cls.from_pretrained(folder, output_loading_info=True, **kwargs)


def rewrite(source: Path, target: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Path:
    target.mkdir(parents=True)
    shutil.copy(source / "config.json", target / "config.json")
    tensors = load_file(str(source / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in change(tensors).items()}, str(target / "model.safetensors"))
    return target


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_LLAMA))
    folder = tmp_path_factory.mktemp("llama") / "llama"
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A Mixtral checkpoint in the pre-v5 layout: block_sparse_moe, one w1/w2/w3 per expert, no `model.` prefix."""
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**MIXTRAL))
    folder = tmp_path_factory.mktemp("mixtral") / "legacy"
    folder.mkdir()
    model.config.save_pretrained(folder)
    legacy: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        key = key.removeprefix("model.")
        if key.endswith("experts.gate_up_proj"):
            base = key.replace("mlp.experts.gate_up_proj", "block_sparse_moe.experts")
            for e in range(value.shape[0]):
                gate, up = value[e].chunk(2, dim=0)
                legacy[f"{base}.{e}.w1.weight"], legacy[f"{base}.{e}.w3.weight"] = gate, up
        elif key.endswith("experts.down_proj"):
            base = key.replace("mlp.experts.down_proj", "block_sparse_moe.experts")
            for e in range(value.shape[0]):
                legacy[f"{base}.{e}.w2.weight"] = value[e]
        else:
            legacy[key.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = value
    save_file({k: v.contiguous() for k, v in legacy.items()}, str(folder / "model.safetensors"))
    return folder, model


def same_weights(a: Any, b: Any) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


# -- diagnoses, checked against from_pretrained ------------------------------------------------------------------


def test_a_checkpoint_that_loads_is_ok(llama_dir: tuple[Path, Any]) -> None:
    folder, _ = llama_dir
    report = kg_tf.diagnose(folder, transformers.LlamaForCausalLM)
    assert report.ok, report.render("table")
    assert not report.errors()
    _, info = real_load(transformers.LlamaForCausalLM, folder)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_ddp_prefix_is_predicted_silent_and_the_guarded_load_fixes_it(
    llama_dir: tuple[Path, Any], tmp_path: Path
) -> None:
    folder, original = llama_dir
    ddp = rewrite(folder, tmp_path / "ddp", lambda t: {"module." + k: v for k, v in t.items()})
    report = kg_tf.diagnose(ddp, transformers.LlamaForCausalLM)
    found = codes(report)
    assert found["KG101"] == 21 and "KG708" in found
    (silent,) = [f for f in report.findings if f.code == "KG708"]
    assert silent.ctx == {"initialised": 21, "dropped": 21, "weights": 21}
    _, info = real_load(transformers.LlamaForCausalLM, ddp)  # what KG708 predicts, really
    assert len(info["missing_keys"]) == 21 and len(info["unexpected_keys"]) == 21
    assert kg_tf.key_mapping(report) == {"^module\\.": ""}
    loaded = kg_tf.from_pretrained(transformers.LlamaForCausalLM, ddp)
    assert same_weights(loaded, original)


def test_legacy_bert_base_checkpoint_into_a_task_model(tmp_path: Path, tiny_bert: Callable[..., Any]) -> None:
    model = tiny_bert()
    base = {
        k.removeprefix("bert.")
        .replace("LayerNorm.weight", "LayerNorm.gamma")
        .replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in model.state_dict().items()
        if k.startswith("bert.")
    }
    base["embeddings.position_ids"] = torch.arange(32)[None]
    folder = tmp_path / "bert"
    folder.mkdir()
    model.config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in base.items()}, str(folder / "model.safetensors"))
    cls = transformers.BertForSequenceClassification
    report = kg_tf.diagnose(folder, cls)
    found = codes(report)
    assert found["KG701"] == 10  # gamma/beta, renamed by the loader itself
    assert found["KG702"] == len(base) - 1  # `bert.` added by the loader
    assert found["KG705"] == 1  # position_ids: dropped by design
    assert found["KG401"] == 2 and "KG708" in found  # the classifier head: newly initialised
    assert {f.code for f in report.findings if f.severity.value == "info"} >= {"KG701", "KG702", "KG705"}
    _, info = real_load(cls, folder)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"]
    with pytest.raises(KeyMismatchError, match="would not load every weight") as refused:
        kg_tf.from_pretrained(cls, folder)
    assert refused.value.report is not None
    loaded = kg_tf.from_pretrained(cls, folder, ignore=[r"^classifier\."])
    state = loaded.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("bert."):
            assert torch.equal(state[key], value), key


def test_legacy_mixtral_experts_are_converted_by_the_loader(mixtral_dir: tuple[Path, Any]) -> None:
    folder, original = mixtral_dir
    cls = transformers.MixtralForCausalLM
    report = kg_tf.diagnose(folder, cls)
    found = codes(report)
    assert report.ok, report.render("table")
    assert found["KG701"] == 2  # block_sparse_moe -> mlp on the two routers (the experts go through converters)
    assert found["KG703"] > 0 and "KG702" in found
    converted = [f for f in report.findings if f.code == "KG703"]
    assert sum(f.count for f in converted) == 2 * 4 * 3  # 2 layers x 4 experts x (w1, w2, w3)
    _, info = real_load(cls, folder)
    assert not info["missing_keys"] - {"lm_head.weight"} and not info["unexpected_keys"]
    loaded = kg_tf.from_pretrained(cls, folder, ignore=["^lm_head"])
    state = loaded.state_dict()
    for key, value in original.state_dict().items():
        if key != "lm_head.weight":
            assert torch.equal(state[key], value), key


def test_wrong_number_of_experts_is_predicted_to_raise(mixtral_dir: tuple[Path, Any], tmp_path: Path) -> None:
    folder, _ = mixtral_dir
    fewer = rewrite(folder, tmp_path / "fewer", lambda t: {k: v for k, v in t.items() if ".experts.3." not in k})
    report = kg_tf.diagnose(fewer, transformers.MixtralForCausalLM)
    assert "KG709" in codes(report) and "KG301" in codes(report)
    with pytest.raises(RuntimeError):  # what KG709 predicts, really
        real_load(transformers.MixtralForCausalLM, fewer)
    with pytest.raises(KeyMismatchError):
        kg_tf.from_pretrained(transformers.MixtralForCausalLM, fewer)


def test_shape_mismatch_is_predicted_to_raise(llama_dir: tuple[Path, Any], tmp_path: Path) -> None:
    folder, _ = llama_dir
    config = transformers.LlamaConfig(**{**TINY_LLAMA, "vocab_size": 80})
    report = kg_tf.diagnose(folder, transformers.LlamaForCausalLM, config=config)
    (raises,) = [f for f in report.findings if f.code == "KG709"]
    assert raises.ctx["shape_mismatches"] == 2
    config.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        real_load(transformers.LlamaForCausalLM, folder, config=config)


def test_tied_head_missing_from_the_checkpoint_is_tied_by_the_loader(
    tmp_path: Path, tiny_gpt2: Callable[..., Any]
) -> None:
    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "gpt2")
    assert "lm_head.weight" not in load_file(str(tmp_path / "gpt2" / "model.safetensors"))
    report = kg_tf.diagnose(tmp_path / "gpt2", transformers.GPT2LMHeadModel)
    assert report.ok
    (tied,) = [f for f in report.findings if f.code == "KG704"]
    assert tied.expected_keys == ["lm_head.weight"]
    loaded = kg_tf.from_pretrained(transformers.GPT2LMHeadModel, tmp_path / "gpt2")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_verification_catches_a_weight_that_differs(llama_dir: tuple[Path, Any]) -> None:
    folder, _ = llama_dir
    done = diagnosis(folder, transformers.LlamaForCausalLM)
    model = kg_tf.from_pretrained(transformers.LlamaForCausalLM, folder)
    assert verify(model, done).ok
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(1.0)
    report = verify(model, done)
    assert not report.ok
    (differs,) = report.findings
    assert differs.code == "KG710"
    assert differs.expected_keys == ["model.layers.1.mlp.down_proj.weight"]


def test_an_instance_or_a_class_name_and_an_explicit_config(llama_dir: tuple[Path, Any]) -> None:
    folder, model = llama_dir
    by_instance = kg_tf.diagnose(folder / "model.safetensors", model)
    by_name = kg_tf.diagnose(folder / "model.safetensors", "LlamaForCausalLM", config=folder / "config.json")
    assert by_instance.ok and by_name.ok
    auto = kg_tf.diagnose(folder, transformers.AutoModelForCausalLM)
    assert auto.ok and auto.expected.location == "LlamaForCausalLM"


# -- the command line ------------------------------------------------------------------------------------------------


def test_cli_expected_transformers_class_with_config(cli: Any, llama_dir: tuple[Path, Any], tmp_path: Path) -> None:
    folder, _ = llama_dir
    ddp = rewrite(folder, tmp_path / "ddp", lambda t: {"module." + k: v for k, v in t.items()})
    os.remove(ddp / "config.json")
    result = cli("diagnose", ddp, "--expected", "transformers:LlamaForCausalLM", "--config", folder)
    assert result.code == 1
    assert "KG708" in result.out and "KG101" in result.out
    assert cli("diagnose", folder, "--expected", "transformers:LlamaForCausalLM").code == 0
    missing = cli("diagnose", ddp, "--expected", "transformers:LlamaForCausalLM")
    assert missing.code == 2 and "no config.json beside the checkpoint" in missing.err
    unknown = cli("diagnose", folder, "--expected", "transformers:NoSuchModel")
    assert unknown.code == 2 and "has no model class 'NoSuchModel'" in unknown.err


def test_cli_expected_factory_runs_the_code(
    cli: Any, llama_dir: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = llama_dir
    package = tmp_path / "kg_factory_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        f"SIZES = {TINY_LLAMA!r}\n"
        "def build():\n    return LlamaForCausalLM(LlamaConfig(**SIZES))\n"
        "def broken():\n    raise ValueError('no such weights')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert cli("diagnose", folder, "--expected", "kg_factory_pkg.models:build").code == 0
    broken = cli("diagnose", folder, "--expected", "kg_factory_pkg.models:broken")
    assert broken.code == 2 and "no such weights" in broken.err
    absent = cli("diagnose", folder, "--expected", "kg_factory_pkg.models:nope")
    assert absent.code == 2 and "has no attribute 'nope'" in absent.err


def test_importing_the_transformers_integration_is_light(offline_env: dict[str, str], tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys; from keyguard.integrations import transformers as t; "
        "assert t.SUPPORTED_TRANSFORMERS == '5.x'; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not heavy, heavy"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=offline_env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
