"""Live modules (CPU and meta device) and config-only folders (the model built on the meta device)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from keyguard import SourceError  # noqa: E402
from keyguard._dtypes import canonical_dtype  # noqa: E402
from keyguard.sources import read_config, read_keys, read_module  # noqa: E402

nn = torch.nn


def assert_matches_state_dict(keys: Any, model: Any) -> None:
    state = model.state_dict()
    assert list(keys) == list(state)
    for key, tensor in state.items():
        assert keys[key].shape == tuple(tensor.shape), key
        assert keys[key].dtype == canonical_dtype(tensor.dtype), key


# -- modules -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("meta", [False, True], ids=["cpu", "meta"])
def test_tiny_llama_module(tiny_llama: Callable[..., Any], meta: bool) -> None:
    model = tiny_llama(meta=meta, tie_word_embeddings=True)
    assert model.lm_head.weight.device.type == ("meta" if meta else "cpu")
    keys = read_keys(model)
    assert keys.format == "module"
    assert keys.architecture == "LlamaForCausalLM"
    assert keys.location == "<LlamaForCausalLM module>"
    assert_matches_state_dict(keys, model)
    assert [set(group) for group in keys.tied] == [{"model.embed_tokens.weight", "lm_head.weight"}]
    assert "model.rotary_emb.inv_freq" in keys.non_persistent
    assert all(key.endswith("inv_freq") for key in keys.non_persistent)
    assert not keys.non_persistent & set(keys)
    assert keys.shapes_known
    # tied weights count once
    assert keys.num_parameters == sum(p.numel() for p in model.parameters())


def test_untied_llama_has_no_ties(tiny_llama: Callable[..., Any]) -> None:
    keys = read_module(tiny_llama(meta=True, tie_word_embeddings=False))
    assert keys.tied == ()
    assert keys["lm_head.weight"].shape == (64, 16)


def test_bf16_module(tiny_llama: Callable[..., Any]) -> None:
    keys = read_keys(tiny_llama(meta=True).to(torch.bfloat16))
    assert set(keys.dtype_counts()) == {"BF16"}


class WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("cache", torch.zeros(5), persistent=False)
        self.inner = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        self.inner[0].register_buffer("scratch", torch.zeros(1), persistent=False)


def test_plain_module_with_non_persistent_buffers() -> None:
    module = WithBuffers()
    keys = read_keys(module)
    assert list(keys) == list(module.state_dict())
    assert "cache" not in keys and "inner.0.scratch" not in keys
    assert keys.non_persistent == frozenset({"cache", "inner.0.scratch"})
    assert keys["inner.1.num_batches_tracked"].dtype == "I64"
    assert keys.architecture == "WithBuffers"
    assert keys.tied == ()


def test_shared_submodule_is_tied() -> None:
    shared = nn.Linear(4, 4)
    model = nn.ModuleDict({"a": shared, "b": shared})
    keys = read_keys(model)
    assert list(keys) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert sorted(map(tuple, keys.tied)) == [("a.bias", "b.bias"), ("a.weight", "b.weight")]


class WithExtraState(nn.Module):
    def __init__(self, extra: Any) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.extra = extra

    def get_extra_state(self) -> Any:
        return self.extra

    def set_extra_state(self, state: Any) -> None:
        self.extra = state


def test_module_with_extra_state_object() -> None:
    model = nn.Sequential(WithExtraState({"scale": 1.5, "step": 3}))
    keys = read_keys(model)
    # the key is in the state dict and a strict load insists on it, so it is a key, with an unknown shape
    assert list(keys) == list(model.state_dict())
    assert set(keys) == {"0.linear.weight", "0.linear.bias", "0._extra_state"}
    assert keys["0._extra_state"].shape is None
    assert keys["0._extra_state"].dtype is None
    assert any("0._extra_state" in note for note in keys.notes)
    # and that is what torch says too
    result = model.load_state_dict(
        {"0.linear.weight": torch.zeros(2, 2), "0.linear.bias": torch.zeros(2)}, strict=False
    )
    assert result.missing_keys == ["0._extra_state"]


def test_module_with_extra_state_tensor() -> None:
    keys = read_keys(WithExtraState(torch.zeros(7, dtype=torch.uint8)))
    assert keys["_extra_state"].shape == (7,)
    assert keys["_extra_state"].dtype == "U8"
    assert keys.notes == ()


def test_state_dict_hooks_are_honoured() -> None:
    def drop_bias(module: Any, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        del state[prefix + "bias"]

    model = nn.Linear(2, 2)
    model._register_state_dict_hook(drop_bias)
    assert list(read_keys(model)) == ["weight"]


# -- config folders ----------------------------------------------------------------------------------------------


def test_llama_config_folder(tmp_path: Path, tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama(tie_word_embeddings=True)
    model.config.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    keys = read_keys(tmp_path)
    assert keys.format == "config"
    assert keys.architecture == "LlamaForCausalLM"
    assert keys.files == ("config.json",)
    assert keys.location == str(tmp_path)
    assert_matches_state_dict(keys, model)
    assert [set(g) for g in keys.tied] == [{"model.embed_tokens.weight", "lm_head.weight"}]
    assert "model.rotary_emb.inv_freq" in keys.non_persistent
    assert read_config(tmp_path).tensors == keys.tensors
    assert read_keys(tmp_path / "config.json").tensors == keys.tensors


def test_bert_config_folder(tmp_path: Path, tiny_bert: Callable[..., Any]) -> None:
    model = tiny_bert()
    model.config.save_pretrained(tmp_path)
    keys = read_keys(tmp_path)
    assert keys.architecture == "BertForSequenceClassification"
    assert_matches_state_dict(keys, model)
    assert keys["classifier.weight"].shape == (3, 16)
    assert "bert.embeddings.position_ids" in keys.non_persistent


def test_gpt2_config_folder(tmp_path: Path, tiny_gpt2: Callable[..., Any]) -> None:
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    keys = read_keys(tmp_path)
    assert keys.architecture == "GPT2LMHeadModel"
    assert_matches_state_dict(keys, model)
    assert [set(g) for g in keys.tied] == [{"transformer.wte.weight", "lm_head.weight"}]


def test_architecture_override(tmp_path: Path, tiny_llama_config: Callable[..., Any]) -> None:
    from transformers import LlamaModel

    config = tiny_llama_config()
    config.save_pretrained(tmp_path)
    keys = read_keys(tmp_path, architecture="LlamaModel")
    assert keys.architecture == "LlamaModel"
    assert_matches_state_dict(keys, LlamaModel(config))
    assert "lm_head.weight" not in keys
    assert "embed_tokens.weight" in keys


def test_architecture_override_without_architectures(tmp_path: Path, tiny_bert: Callable[..., Any]) -> None:
    from transformers import BertModel

    model = tiny_bert(architectures=None)
    model.config.save_pretrained(tmp_path)
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "no-architecture"
    assert info.value.path == str(tmp_path / "config.json")
    assert "--architecture" in str(info.value)
    keys = read_keys(tmp_path, architecture="BertModel")
    assert_matches_state_dict(keys, BertModel(model.config))


@pytest.mark.parametrize("architectures", [[], "LlamaForCausalLM", [3]])
def test_malformed_architectures(tmp_path: Path, tiny_llama_config: Callable[..., Any], architectures: Any) -> None:
    tiny_llama_config().save_pretrained(tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["architectures"] = architectures
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "no-architecture"


@pytest.mark.parametrize("name", ["NoSuchModelForCausalLM", "LlamaConfig", "__version__", "os"])
def test_unknown_architecture(tmp_path: Path, tiny_llama_config: Callable[..., Any], name: str) -> None:
    tiny_llama_config(architectures=[name]).save_pretrained(tmp_path)
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "unknown-architecture"
    assert repr(name) in str(info.value)
    assert info.value.ctx["architecture"] == name


def test_model_class_that_does_not_fit_the_config(tmp_path: Path, tiny_llama_config: Callable[..., Any]) -> None:
    tiny_llama_config().save_pretrained(tmp_path)
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path, architecture="BertForSequenceClassification")
    assert info.value.problem == "cannot-build-model"
    assert "\n" not in str(info.value)


def test_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-type", "architectures": ["LlamaModel"]}))
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "cannot-build-model"
    assert "\n" not in str(info.value)


def test_bf16_config(tmp_path: Path, tiny_llama_config: Callable[..., Any]) -> None:
    tiny_llama_config(dtype="bfloat16").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    keys = read_keys(tmp_path)
    assert set(keys.dtype_counts()) == {"BF16"}


def test_bf16_config_keeps_integer_buffers(tmp_path: Path, tiny_bert: Callable[..., Any]) -> None:
    model = tiny_bert(dtype="bfloat16")
    model.config.save_pretrained(tmp_path)
    keys = read_keys(tmp_path)
    assert keys["bert.embeddings.word_embeddings.weight"].dtype == "BF16"
    assert set(keys.dtype_counts()) == {"BF16"}


def test_legacy_torch_dtype_field(tmp_path: Path, tiny_llama_config: Callable[..., Any]) -> None:
    tiny_llama_config().save_pretrained(tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc.pop("dtype", None)
    doc["torch_dtype"] = "float16"  # how transformers 4.x wrote it
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert set(read_keys(tmp_path).dtype_counts()) == {"F16"}


def test_config_json_under_another_name(tmp_path: Path, tiny_llama_config: Callable[..., Any], tiny_bert: Any) -> None:
    # a llama config saved as llama.json next to an unrelated config.json: the named file is the one read
    tiny_bert().config.save_pretrained(tmp_path)
    other = tmp_path / "other"
    tiny_llama_config().save_pretrained(other)
    (other / "config.json").rename(tmp_path / "llama.json")
    keys = read_keys(tmp_path / "llama.json")
    assert keys.architecture == "LlamaForCausalLM"
    assert "lm_head.weight" in keys
    assert keys.files == ("llama.json",)


def test_config_folder_is_not_modified(
    tmp_path: Path, tiny_llama_config: Callable[..., Any], hashes: Callable[..., Any]
) -> None:
    tiny_llama_config().save_pretrained(tmp_path)
    before = hashes(tmp_path)
    read_keys(tmp_path)
    assert hashes(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
