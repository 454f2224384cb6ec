"""In-memory sources (state dicts, shapes, keys) and keyguard's own manifest (snapshot, write, read back)."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from keyguard import KeySet, SourceError, TensorInfo  # noqa: E402
from keyguard.sources import (  # noqa: E402
    MANIFEST_FORMAT,
    manifest_json,
    read_iterable,
    read_keys,
    read_manifest,
    read_mapping,
    write_manifest,
)

# -- in-memory sources --------------------------------------------------------------------------------------------


def test_state_dict_of_tensors() -> None:
    shared = torch.zeros(4, 2)
    state = OrderedDict(
        [("emb", shared), ("w", torch.zeros(3, dtype=torch.float16)), ("head", shared), ("n", torch.tensor(1))]
    )
    keys = read_keys(state)
    assert keys.format == "state-dict"
    assert keys.location == "<in-memory mapping>"
    assert list(keys) == ["emb", "w", "head", "n"]
    assert keys["w"] == TensorInfo((3,), "F16")
    assert keys["n"] == TensorInfo((), "I64")
    assert keys.tied == (("emb", "head"),)


def test_model_state_dict_ties_survive_detach(tiny_gpt2: Callable[..., Any], tiny_llama: Callable[..., Any]) -> None:
    # model.state_dict() detaches every entry: tied weights arrive as two tensor objects over one storage
    state = tiny_gpt2().state_dict()
    assert state["lm_head.weight"] is not state["transformer.wte.weight"]
    keys = read_keys(state)
    assert [set(g) for g in keys.tied] == [{"transformer.wte.weight", "lm_head.weight"}]
    # ... also on the meta device
    meta = read_keys(tiny_llama(meta=True, tie_word_embeddings=True).state_dict())
    assert [set(g) for g in meta.tied] == [{"model.embed_tokens.weight", "lm_head.weight"}]
    assert read_keys(tiny_llama(meta=True, tie_word_embeddings=False).state_dict()).tied == ()


def test_views_of_one_storage_are_not_ties() -> None:
    fused = torch.zeros(6, 4)
    q, k, v = fused.split(2)
    keys = read_keys({"q": q, "k": k, "v": v, "q_again": fused[:2]})
    assert keys.tied == (("q", "q_again"),)


def test_numpy_arrays() -> None:
    np = pytest.importorskip("numpy")
    array = np.zeros((2, 3), dtype=np.float32)
    keys = read_keys({"a": array, "b": array, "c": np.zeros(4, dtype=np.int8)})
    assert keys.format == "state-dict"
    assert keys["a"] == TensorInfo((2, 3), "F32")
    assert keys["c"] == TensorInfo((4,), "I8")
    assert keys.tied == (("a", "b"),)


def test_shapes_and_dtypes_in_every_spelling() -> None:
    keys = read_keys(
        {
            "tuple": (3, 4),
            "list": [5],
            "size": torch.Size([2, 2]),
            "scalar": (),
            "pair": ((3, 4), "bf16"),
            "pair_list": [[7], torch.float16],
            "pair_none": ((1,), None),
            "dict": {"shape": [8, 2], "dtype": "F32"},
            "dict_no_dtype": {"shape": (1, 1)},
            "info": TensorInfo((9,), "I64", "x.safetensors", (8, 80)),
        }
    )
    assert keys.format == "shapes"
    assert {k: (v.shape, v.dtype) for k, v in keys.items()} == {
        "tuple": ((3, 4), None),
        "list": ((5,), None),
        "size": ((2, 2), None),
        "scalar": ((), None),
        "pair": ((3, 4), "BF16"),
        "pair_list": ((7,), "F16"),
        "pair_none": ((1,), None),
        "dict": ((8, 2), "F32"),
        "dict_no_dtype": ((1, 1), None),
        "info": ((9,), "I64"),
    }
    assert keys["info"] == TensorInfo((9,), "I64", "x.safetensors", (8, 80))


def test_keys_only() -> None:
    by_none = read_keys({"a": None, "b": None})
    assert by_none.format == "keys"
    assert by_none["a"] == TensorInfo(None, None)
    assert not by_none.shapes_known
    for source in (["a", "b"], ("a", "b"), iter(["a", "b"]), (k for k in "ab"), dict.fromkeys(["a", "b"]).keys()):
        keys = read_keys(source)
        assert keys.format == "keys"
        assert list(keys) == ["a", "b"]
    assert read_iterable(["x"], location="mine").location == "mine"


def test_keyset_is_returned_as_is() -> None:
    keys = read_keys({"a": (1,)})
    assert read_keys(keys) is keys
    assert read_mapping({"a": (1,)}, location="here").location == "here"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ({1: (2,)}, "invalid-key"),
        ({("a", "b"): (2,)}, "invalid-key"),
        ({"a": object()}, "invalid-value"),
        ({"a": 3.5}, "invalid-value"),
        ({"a": "F32"}, "invalid-value"),
        ({"a": (2, -1)}, "invalid-shape"),
        ({"a": (2.0, 3)}, "invalid-shape"),
        ({"a": (True, 3)}, "invalid-shape"),
        ({"a": ((2, "x"), "F32")}, "invalid-shape"),
        ({"a": {"shape": 5}}, "invalid-shape"),
        ({"a": {"shape": "3,4"}}, "invalid-shape"),
        ({"a": {"dtype": "F32"}}, "invalid-value"),
        (["a", 3], "invalid-key"),
        ([b"a"], "invalid-key"),
    ],
)
def test_invalid_in_memory_sources(source: Any, problem: str) -> None:
    with pytest.raises(SourceError) as info:
        read_keys(source)
    assert info.value.problem == problem
    assert info.value.path is None
    assert str(info.value).startswith("<in-memory source>: ")


@pytest.mark.parametrize("source", [42, 3.5, b"model.safetensors", None, object()])
def test_unsupported_sources(source: Any) -> None:
    with pytest.raises(SourceError) as info:
        read_keys(source)
    assert info.value.problem == "unsupported-source"


# -- manifests ----------------------------------------------------------------------------------------------------


def roundtrip(keys: KeySet, path: Path) -> KeySet:
    write_manifest(keys, path)
    back = read_keys(path)
    assert back.format == "manifest"
    assert back.location == str(path)
    assert list(back) == list(keys)
    assert {k: (v.shape, v.dtype) for k, v in back.items()} == {k: (v.shape, v.dtype) for k, v in keys.items()}
    assert back.tied == keys.tied
    assert back.non_persistent == keys.non_persistent
    assert back.architecture == keys.architecture
    assert back.unwrapped == keys.unwrapped
    assert dict(back.metadata) == dict(keys.metadata)
    assert back.files == keys.files
    assert back.adapter == keys.adapter
    assert back.notes[0].startswith(f"snapshot of {keys.format}")
    assert back.notes[1:] == keys.notes
    return back


def test_manifest_of_a_module(tmp_path: Path, tiny_llama: Callable[..., Any]) -> None:
    keys = read_keys(tiny_llama(meta=True, tie_word_embeddings=True))
    back = roundtrip(keys, tmp_path / "keys.json")
    assert back.architecture == "LlamaForCausalLM"
    assert back.tied and back.non_persistent


def test_write_manifest_takes_the_module_itself(tmp_path: Path, tiny_llama: Callable[..., Any]) -> None:
    """``keyguard.write_manifest(module, path)`` (it raised AttributeError: 'LlamaForCausalLM' has no 'format')."""
    model = tiny_llama(meta=True, tie_word_embeddings=True)
    write_manifest(model, tmp_path / "module.keys.json")
    write_manifest(model.state_dict(), tmp_path / "state.keys.json")
    back = read_keys(tmp_path / "module.keys.json")
    assert list(back) == list(read_keys(model)) and back.architecture == "LlamaForCausalLM" and back.tied
    assert list(read_keys(tmp_path / "state.keys.json")) == list(back)


def test_manifest_of_a_config_folder(tmp_path: Path, tiny_bert: Callable[..., Any]) -> None:
    tiny_bert(dtype="bfloat16").config.save_pretrained(tmp_path / "cfg")
    roundtrip(read_keys(tmp_path / "cfg"), tmp_path / "keys.json")


def test_manifest_of_a_pickle(tmp_path: Path) -> None:
    torch.save({"state_dict": {"a": torch.zeros(2), "b": torch.zeros(3)}, "step": 3}, tmp_path / "x.ckpt")
    back = roundtrip(read_keys(tmp_path / "x.ckpt"), tmp_path / "keys.json")
    assert back.unwrapped == "state_dict"


def test_manifest_of_a_sharded_checkpoint(tmp_path: Path, tiny_llama: Callable[..., Any]) -> None:
    tiny_llama().save_pretrained(tmp_path / "model", max_shard_size="20KB")
    keys = read_keys(tmp_path / "model")
    back = roundtrip(keys, tmp_path / "keys.json")
    assert back.metadata["total_size"] == keys.metadata["total_size"]
    assert len(back.files) > 1
    # a manifest knows no byte offsets: it pins keys, shapes and dtypes
    assert all(info.offsets is None and info.file is None for info in back.values())


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_manifest_of_an_adapter(tmp_path: Path, tiny_llama: Callable[..., Any]) -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"], rank_pattern={"q_proj": 3}, lora_alpha=4)
    )
    model.save_pretrained(tmp_path / "adapter")
    keys = read_keys(tmp_path / "adapter")
    back = roundtrip(keys, tmp_path / "keys.json")
    assert back.adapter.r == 2
    assert back.adapter.rank_pattern == {"q_proj": 3}
    assert back.adapter.model_extra == keys.adapter.model_extra


def test_manifest_of_keys_only_and_odd_names(tmp_path: Path) -> None:
    names = ['quote".key', "newline\nkey", "ünïcödé.weight", "tab\tkey", "back\\slash", ""]
    keys = read_keys(dict.fromkeys(names))
    back = roundtrip(keys, tmp_path / "keys.json")
    assert list(back) == names
    assert not back.shapes_known


def test_manifest_of_an_empty_source(tmp_path: Path) -> None:
    roundtrip(read_keys([]), tmp_path / "empty.json")


def test_manifest_layout_is_one_tensor_per_line(tmp_path: Path, tiny_llama: Callable[..., Any]) -> None:
    keys = read_keys(tiny_llama(meta=True))
    path = tmp_path / "keys.json"
    write_manifest(keys, path)
    text = path.read_text(encoding="utf-8")
    assert text == manifest_json(keys)
    assert text.endswith("}\n")
    doc = json.loads(text)
    assert doc["format"] == MANIFEST_FORMAT == "keyguard.keys/v1"
    assert doc["created_by"].startswith("keyguard ")
    lines = text.splitlines()
    tensor_lines = [line for line in lines if '"shape":' in line and '"source"' not in line]
    assert len(tensor_lines) == len(keys)
    for line, (key, info) in zip(tensor_lines, keys.items()):
        name, _, value = line.strip().rstrip(",").partition(": ")
        assert json.loads(name) == key
        assert json.loads(value) == {"shape": list(info.shape), "dtype": info.dtype}
    assert len(lines) == len(keys) + 7


def _manifest(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc))
    return path


def _valid_doc() -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "source": {"format": "module", "location": "<m>"},
        "tensors": {"a.weight": {"shape": [2, 3], "dtype": "F32"}, "a.bias": {"shape": None, "dtype": None}},
    }


def test_minimal_hand_written_manifest(tmp_path: Path) -> None:
    keys = read_manifest(_manifest(tmp_path, _valid_doc()))
    assert keys["a.weight"] == TensorInfo((2, 3), "F32")
    assert keys["a.bias"] == TensorInfo(None, None)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.update(format="keyguard.keys/v2"), "not-a-manifest"),
        (lambda d: d.pop("format"), "not-a-manifest"),
        (lambda d: d.pop("tensors"), "invalid-manifest"),
        (lambda d: d.pop("source"), "invalid-manifest"),
        (lambda d: d["source"].pop("format"), "invalid-manifest"),
        (lambda d: d.update(tensors=[["a", [1]]]), "invalid-manifest"),
        (lambda d: d["tensors"]["a.weight"].update(offsets=[0, 24]), "invalid-manifest"),
        (lambda d: d["tensors"]["a.weight"].update(shape=[2, -3]), "invalid-manifest"),
        (lambda d: d["tensors"]["a.weight"].update(shape=["2", 3]), "invalid-manifest"),
        (lambda d: d["tensors"]["a.weight"].update(shape=[2.0, 3]), "invalid-manifest"),
        (lambda d: d["tensors"]["a.weight"].update(shape=[True]), "invalid-manifest"),
        (lambda d: d["tensors"]["a.weight"].update(dtype=32), "invalid-manifest"),
        (lambda d: d["tensors"].update(b=[1, 2]), "invalid-manifest"),
        (lambda d: d["source"].update(tied="a.weight"), "invalid-manifest"),
        (lambda d: d["source"].update(adapter_config={"r": -2}), "invalid-manifest"),
        (lambda d: d["source"].update(adapter_config={"bias": "maybe"}), "invalid-manifest"),
    ],
)
def test_invalid_manifests(tmp_path: Path, change: Callable[[dict[str, Any]], Any], problem: str) -> None:
    doc = _valid_doc()
    change(doc)
    path = _manifest(tmp_path, doc)
    with pytest.raises(SourceError) as info:
        read_manifest(path)
    assert info.value.problem == problem
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)


def test_manifest_with_duplicate_tensor(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text(
        '{"format": "keyguard.keys/v1", "source": {"format": "keys"},\n'
        ' "tensors": {"a": {"shape": null, "dtype": null}, "a": {"shape": [1], "dtype": null}}}'
    )
    with pytest.raises(SourceError) as info:
        read_keys(path)
    assert info.value.problem == "duplicate-key"


def test_write_is_atomic_when_the_target_cannot_be_replaced(tmp_path: Path) -> None:
    target = tmp_path / "keys.json"
    target.mkdir()  # a directory in the way: the final rename fails after the data was written
    (target / "inside.txt").write_text("keep me")
    with pytest.raises(OSError):
        write_manifest(read_keys({"a": (1,)}), target)
    assert sorted(os.listdir(tmp_path)) == ["keys.json"]  # no temporary file left behind
    assert (target / "inside.txt").read_text() == "keep me"


def test_failed_write_keeps_the_previous_manifest(tmp_path: Path) -> None:
    class Exploding:
        def model_dump(self, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

    target = tmp_path / "keys.json"
    write_manifest(read_keys({"a": (1,)}), target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        write_manifest(read_keys({"a": (1,), "b": (2,)}).evolve(adapter=Exploding()), target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keys.json"]


def test_write_replaces_an_existing_manifest(tmp_path: Path) -> None:
    target = tmp_path / "keys.json"
    write_manifest(read_keys({"a": (1,)}), target)
    write_manifest(read_keys({"b": (2,)}), target)
    assert list(read_keys(target)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["keys.json"]
