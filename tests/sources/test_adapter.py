"""PEFT adapter folders: ``adapter_config.json`` (validated) plus ``adapter_model.safetensors`` or ``.bin``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from keyguard import AdapterConfig, AdapterConfigError, SourceError  # noqa: E402
from keyguard.sources import parse_adapter_config, read_adapter, read_keys  # noqa: E402

# peft calls a transformers API that transformers 5 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


@pytest.fixture
def make_adapter(tiny_llama: Callable[..., Any], tmp_path: Path) -> Callable[..., Path]:
    """``make_adapter(name, **lora_kwargs)``: a real LoRA adapter on a tiny Llama, saved by PEFT."""

    def make(name: str = "adapter", *, safe: bool = True, **lora: Any) -> Path:
        options: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
        options.update(lora)
        model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(task_type="CAUSAL_LM", **options))
        folder = tmp_path / name
        model.save_pretrained(folder, safe_serialization=safe)
        return folder

    return make


def saved_keys(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118


def test_real_lora_adapter(make_adapter: Callable[..., Path]) -> None:
    folder = make_adapter()
    keys = read_keys(folder)
    assert keys.format == "peft-adapter"
    assert keys.location == str(folder)
    assert keys.files == ("adapter_model.safetensors",)
    assert {k: v.shape for k, v in keys.items()} == saved_keys(folder)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert keys["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 16)
    assert keys["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].shape == (8, 4)  # 1 kv head of 8
    assert len(keys) == 2 * 2 * 2  # layers x targets x (A, B)

    config = keys.adapter
    assert isinstance(config, AdapterConfig)
    assert config.peft_type == "LORA"
    assert config.task_type == "CAUSAL_LM"
    assert config.r == 4
    assert config.lora_alpha == 8
    assert sorted(config.target_modules) == ["q_proj", "v_proj"]
    assert config.bias == "none"
    assert config.use_dora is False
    # every field PEFT wrote is kept, known or not
    raw = json.loads((folder / "adapter_config.json").read_text())
    assert config.model_dump(mode="json").keys() >= raw.keys()


def test_adapter_through_its_config_file_and_read_adapter(make_adapter: Callable[..., Path]) -> None:
    folder = make_adapter()
    by_folder = read_keys(folder)
    assert read_keys(folder / "adapter_config.json").tensors == by_folder.tensors
    assert read_adapter(folder).tensors == by_folder.tensors


def test_adapter_with_rank_pattern_and_modules_to_save(make_adapter: Callable[..., Path]) -> None:
    folder = make_adapter(
        r=2,
        target_modules=["q_proj", "o_proj"],
        rank_pattern={"o_proj": 6},
        modules_to_save=["lm_head"],
        use_dora=True,
    )
    keys = read_keys(folder)
    assert keys.adapter.rank_pattern == {"o_proj": 6}
    assert keys.adapter.modules_to_save == ["lm_head"]
    assert keys.adapter.use_dora is True
    assert keys["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"].shape == (6, 16)
    assert any("lora_magnitude_vector" in key for key in keys)
    assert "base_model.model.lm_head.weight" in keys  # modules_to_save: the whole module is saved
    assert {k: v.shape for k, v in keys.items()} == saved_keys(folder)


def test_adapter_model_bin(make_adapter: Callable[..., Path]) -> None:
    safe = read_keys(make_adapter("safe"))
    folder = make_adapter("unsafe", safe=False)
    if not (folder / "adapter_model.bin").exists():  # pragma: no cover - depends on the peft version
        folder = make_adapter("bin")
        torch.save({k: torch.zeros(v.shape) for k, v in safe.items()}, folder / "adapter_model.bin")
        (folder / "adapter_model.safetensors").unlink()
    keys = read_keys(folder)
    assert keys.format == "peft-adapter"
    assert keys.files == ("adapter_model.bin",)
    assert {k: v.shape for k, v in keys.items()} == {k: v.shape for k, v in safe.items()}
    assert keys.adapter.r == 4


def test_safetensors_weights_win_over_bin(make_adapter: Callable[..., Path]) -> None:
    folder = make_adapter()
    torch.save({"something.else": torch.zeros(1)}, folder / "adapter_model.bin")
    assert read_keys(folder).files == ("adapter_model.safetensors",)


def _rewrite(folder: Path, **changes: Any) -> Path:
    path = folder / "adapter_config.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc, indent=2))
    return path


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"r": -1}, ["r"]),
        ({"r": 0}, ["r"]),
        ({"r": "x"}, ["r"]),
        ({"r": "8"}, ["r"]),  # PEFT would crash on a string rank
        ({"r": 8.5}, ["r"]),
        ({"r": True}, ["r"]),
        ({"bias": "maybe"}, ["bias"]),
        ({"use_dora": "false"}, ["use_dora"]),  # a truthy string: PEFT would enable DoRA
        ({"rank_pattern": {"q_proj": 0}}, ["rank_pattern"]),
        ({"lora_alpha": "big"}, ["lora_alpha"]),
        ({"target_modules": 7}, ["target_modules"]),
        ({"r": -1, "bias": "maybe", "lora_alpha": "x"}, ["r", "bias", "lora_alpha"]),
    ],
)
def test_invalid_adapter_config(make_adapter: Callable[..., Path], changes: dict[str, Any], fields: list[str]) -> None:
    folder = make_adapter()
    path = _rewrite(folder, **changes)
    with pytest.raises(AdapterConfigError) as info:
        read_keys(folder)
    error = info.value
    assert error.problem == "invalid-adapter-config"
    assert error.path == str(path)
    message = str(error)
    assert message.startswith(f"{path}: invalid adapter config: ")
    assert "\n" not in message
    for field in fields:
        assert f"{field}" in message
    assert message.count(";") == len(fields) - 1 or len(fields) == 1
    with pytest.raises(AdapterConfigError):
        parse_adapter_config(path)


def test_every_problem_is_listed(make_adapter: Callable[..., Path]) -> None:
    folder = make_adapter()
    _rewrite(folder, r=-1, bias="maybe")
    with pytest.raises(AdapterConfigError) as info:
        read_keys(folder)
    message = str(info.value)
    assert "r: Input should be greater than 0 (got -1)" in message
    assert "bias: Input should be 'none', 'all' or 'lora_only' (got 'maybe')" in message


def test_unknown_fields_are_tolerated(make_adapter: Callable[..., Path]) -> None:
    folder = make_adapter()
    _rewrite(folder, future_option={"enabled": True}, another_one=[1, 2])
    keys = read_keys(folder)
    assert keys.adapter.model_extra["future_option"] == {"enabled": True}
    assert keys.adapter.r == 4


@pytest.mark.parametrize(("text", "problem"), [("{oops", "not-json"), ("[1, 2]", "not-an-object")])
def test_adapter_config_not_json(make_adapter: Callable[..., Path], text: str, problem: str) -> None:
    folder = make_adapter()
    (folder / "adapter_config.json").write_text(text)
    with pytest.raises(AdapterConfigError) as info:
        read_keys(folder)
    assert info.value.problem == problem
    assert info.value.path == str(folder / "adapter_config.json")


def test_config_without_weights(make_adapter: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_adapter()
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(folder / "adapter_config.json", lonely)
    with pytest.raises(SourceError) as info:
        read_keys(lonely)
    assert info.value.problem == "missing-adapter-weights"
    assert info.value.path == str(lonely)
    assert "adapter_model.safetensors" in str(info.value)


def test_damaged_adapter_weights(make_adapter: Callable[..., Path]) -> None:
    folder = make_adapter()
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SourceError) as info:
        read_keys(folder)
    assert info.value.path == str(weights)


def test_adapter_folder_is_not_modified(make_adapter: Callable[..., Path], hashes: Callable[..., Any]) -> None:
    folder = make_adapter()
    before = hashes(folder)
    read_keys(folder)
    assert hashes(folder) == before
