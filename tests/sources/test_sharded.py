"""Sharded checkpoints: an index (``*.index.json``) plus shards, checked against each other."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from keyguard import ShardIndexError, SourceError  # noqa: E402
from keyguard.sources import read_keys, read_sharded  # noqa: E402

INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def _shards() -> dict[str, dict[str, Any]]:
    torch.manual_seed(0)
    return {
        "model-00001-of-00002.safetensors": {
            "embed.weight": torch.randn(8, 4),
            "layers.0.w": torch.randn(4, 4),
            "layers.0.b": torch.arange(4, dtype=torch.int64),
        },
        "model-00002-of-00002.safetensors": {
            "layers.1.w": torch.randn(4, 4, dtype=torch.float64).to(torch.bfloat16),
            "head.weight": torch.randn(3, 4, dtype=torch.float16),
        },
    }


def write_index(
    folder: Path,
    weight_map: Mapping[str, str],
    *,
    total_size: int | None = None,
    name: str = INDEX,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    doc: dict[str, Any] = {"metadata": {"total_size": total_size if total_size is not None else 0}}
    doc["weight_map"] = dict(weight_map)
    doc.update(extra or {})
    path = folder / name
    path.write_text(json.dumps(doc, indent=2))
    return path


def write_sharded(
    folder: Path,
    save_st: Callable[..., Path],
    shards: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    weight_map: Mapping[str, str] | None = None,
    total_size: int | None = None,
) -> Path:
    """Write shards with ``safetensors.torch.save_file`` and an index like transformers writes."""
    shards = _shards() if shards is None else shards
    for shard, tensors in shards.items():
        save_st(folder / shard, tensors)
    if weight_map is None:
        weight_map = {key: shard for shard, tensors in shards.items() for key in tensors}
    if total_size is None:
        total_size = sum(t.numel() * t.element_size() for tensors in shards.values() for t in tensors.values())
    return write_index(folder, weight_map, total_size=total_size)


DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def test_read_through_folder_and_index_file(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    shards = _shards()
    index = write_sharded(tmp_path, save_st, shards)
    by_folder = read_keys(tmp_path)
    by_index = read_keys(index)
    direct = read_sharded(index)
    assert by_folder.format == by_index.format == direct.format == "safetensors-sharded"
    assert dict(by_folder) == dict(by_index) == dict(direct)
    assert set(by_folder.files) == set(shards)
    assert by_folder.notes == ()  # total_size is right
    assert by_folder.metadata["total_size"] == str(
        sum(t.numel() * t.element_size() for s in shards.values() for t in s.values())
    )
    expected = {key: (shard, tensor) for shard, tensors in shards.items() for key, tensor in tensors.items()}
    assert set(by_folder) == set(expected)
    for key, info in by_folder.items():
        shard, tensor = expected[key]
        assert info.shape == tuple(tensor.shape)
        assert info.dtype == DTYPES[tensor.dtype]
        assert info.file == shard
        start, end = info.offsets
        # the offsets are absolute positions in the shard: its bytes there are the tensor's bytes
        raw = (tmp_path / shard).read_bytes()[start:end]
        assert raw == tensor.contiguous().view(torch.uint8).numpy().tobytes()


def test_keys_follow_the_index_order(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    shards = _shards()
    order = ["head.weight", "layers.0.b", "embed.weight", "layers.1.w", "layers.0.w"]
    where = {key: shard for shard, tensors in shards.items() for key in tensors}
    index = write_sharded(tmp_path, save_st, shards, weight_map={k: where[k] for k in order})
    assert list(read_keys(index)) == order


def test_shard_in_a_subfolder_is_allowed(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    save_st(tmp_path / "parts" / "a.safetensors", {"x": torch.zeros(2)})
    index = write_index(tmp_path, {"x": "parts/a.safetensors"}, total_size=8)
    keys = read_keys(index)
    assert keys["x"].file == "parts/a.safetensors"
    assert keys.files == ("parts/a.safetensors",)


def test_real_save_pretrained_sharded_folder(tmp_path: Path, tiny_llama: Callable[..., Any]) -> None:
    model = tiny_llama()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / INDEX).read_text())
    shard_names = set(index["weight_map"].values())
    assert len(shard_names) > 1, "the model must really be sharded for this test"

    keys = read_keys(tmp_path)
    assert keys.format == "safetensors-sharded"
    state = model.state_dict()
    assert set(keys) == set(state)
    assert set(keys.files) == shard_names
    assert keys.notes == ()
    for key, tensor in state.items():
        assert keys[key].shape == tuple(tensor.shape)
        assert keys[key].dtype == "F32"
        assert keys[key].file == index["weight_map"][key]
    assert keys.total_bytes == index["metadata"]["total_size"]


# -- hostile and inconsistent indexes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shard",
    ["../outside.safetensors", "sub/../../outside.safetensors", "..\\outside.safetensors", "bad\x00name.safetensors"],
)
def test_shard_paths_leaving_the_folder_are_refused(tmp_path: Path, save_st: Callable[..., Path], shard: str) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_st(tmp_path / "outside.safetensors", {"x": torch.zeros(2)})
    index = write_index(folder, {"x": shard})
    with pytest.raises(ShardIndexError) as info:
        read_keys(index)
    assert info.value.problem == "shard-outside-folder"
    assert info.value.path == str(index)
    assert info.value.ctx["shard"] == shard


def test_absolute_shard_path_is_refused(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    outside = save_st(tmp_path / "outside.safetensors", {"x": torch.zeros(2)})
    write_index(folder, {"x": str(outside.resolve())})
    with pytest.raises(ShardIndexError) as info:
        read_keys(folder)
    assert info.value.problem == "shard-outside-folder"
    assert str(outside.resolve()) in str(info.value)


def test_symlink_leading_outside_is_refused(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    outside = save_st(tmp_path / "secret" / "outside.safetensors", {"x": torch.zeros(2)})
    (folder / "model-00001-of-00001.safetensors").symlink_to(outside)
    write_index(folder, {"x": "model-00001-of-00001.safetensors"})
    with pytest.raises(ShardIndexError) as info:
        read_keys(folder)
    assert info.value.problem == "shard-outside-folder"
    assert "symlink" in info.value.detail


def test_symlink_staying_inside_is_fine(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    save_st(tmp_path / "blobs" / "abc123", {"x": torch.zeros(2)})
    (tmp_path / "model-00001-of-00001.safetensors").symlink_to(Path("blobs") / "abc123")
    write_index(tmp_path, {"x": "model-00001-of-00001.safetensors"}, total_size=8)
    assert read_keys(tmp_path)["x"].shape == (2,)


def test_missing_shard(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    shards = _shards()
    first = next(iter(shards))
    save_st(tmp_path / first, shards[first])
    weight_map = {key: shard for shard, tensors in shards.items() for key in tensors}
    index = write_index(tmp_path, weight_map)
    with pytest.raises(ShardIndexError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "missing-shard"
    assert info.value.path == str(index)
    assert "model-00002-of-00002.safetensors" in str(info.value)


def test_key_in_index_but_not_in_its_shard(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    shards = _shards()
    weight_map = {key: shard for shard, tensors in shards.items() for key in tensors}
    weight_map["ghost.weight"] = "model-00001-of-00002.safetensors"
    write_sharded(tmp_path, save_st, shards, weight_map=weight_map)
    with pytest.raises(ShardIndexError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "index-mismatch"
    assert "'ghost.weight'" in str(info.value)
    assert "missing from their shard" in str(info.value)


def test_key_in_shard_but_not_in_index(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    shards = _shards()
    weight_map = {key: shard for shard, tensors in shards.items() for key in tensors}
    del weight_map["layers.1.w"]
    write_sharded(tmp_path, save_st, shards, weight_map=weight_map)
    with pytest.raises(ShardIndexError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "index-mismatch"
    assert "'layers.1.w'" in str(info.value)
    assert "not in the index" in str(info.value)


def test_same_key_in_two_shards(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    shards = _shards()
    shards["model-00002-of-00002.safetensors"]["layers.0.w"] = torch.ones(4, 4)
    weight_map = {key: shard for shard, tensors in shards.items() for key in tensors}
    write_sharded(tmp_path, save_st, shards, weight_map=weight_map)
    with pytest.raises(ShardIndexError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "index-mismatch"
    message = str(info.value)
    assert "more than one shard" in message
    assert "'layers.0.w'" in message
    assert "model-00001-of-00002.safetensors" in message and "model-00002-of-00002.safetensors" in message


def test_many_mismatches_are_counted_and_some_listed(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    shards = {"a.safetensors": {f"k.{i}": torch.zeros(1) for i in range(10)}}
    weight_map = {f"k.{i}": "a.safetensors" for i in range(10)} | {f"ghost.{i}": "a.safetensors" for i in range(7)}
    write_sharded(tmp_path, save_st, shards, weight_map=weight_map)
    with pytest.raises(ShardIndexError) as info:
        read_keys(tmp_path)
    message = str(info.value)
    assert "7 key(s)" in message
    assert "'ghost.0'" in message
    assert "and 4 more" in message


def test_wrong_total_size_is_a_note_not_an_error(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    write_sharded(tmp_path, save_st, total_size=123)
    keys = read_keys(tmp_path)
    assert len(keys) == 5
    assert len(keys.notes) == 1
    assert "total_size is 123 bytes" in keys.notes[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not-json"),
        ('["model-00001.safetensors"]', "not-an-object"),
        ('{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}', "duplicate-key"),
        ('{"weight_map": ["a", "x.safetensors"]}', "invalid-index"),
        ('{"weight_map": {"a": 3}}', "invalid-index"),
        ('{"metadata": {}}', "invalid-index"),
        ('{"metadata": [], "weight_map": {}}', "invalid-index"),
        (b"\xff\xfe{}".decode("latin-1"), "not-utf8"),
        ('{"weight_map": {}, "weight_map": {"a": "x.safetensors"}}', "duplicate-key"),
        ('{"weight_map": {"\\ud800": "x.safetensors"}}', "lone-surrogate"),
        ('{"weight_map": {}, "padding": [NaN]}', "not-json"),
        ('{"weight_map": {}, "padding": ["\\udc00"]}', "lone-surrogate"),
        (b'{"weight_map": {}, "padding": ["\xff"]}'.decode("latin-1"), "not-utf8"),
        ('{"weight_map": {}} []', "not-json"),
        ('{"weight_map": {}, "padding": ' + "[" * 5000 + "]" * 5000 + "}", "not-json"),
        ('{"weight_map": {"a": "x.safetensors"}, "metadata": {"total_size": 1, "total_size": 2}}', "duplicate-key"),
    ],
)
@pytest.mark.parametrize("large", [False, True], ids=["small", "read-as-large"])
def test_malformed_index(tmp_path: Path, text: str, problem: str, large: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from keyguard.sources import _jsonfile

    if large:  # as if the file were above the size where only the fields keyguard needs are decoded
        monkeypatch.setattr(_jsonfile, "TYPED_ABOVE", 0)
    index = tmp_path / INDEX
    index.write_bytes(text.encode("latin-1"))
    with pytest.raises(ShardIndexError) as info:
        read_keys(index)
    assert info.value.problem == problem
    assert info.value.path == str(index)
    assert str(info.value).startswith(str(index) + ": ")


def test_a_large_index_is_read_without_building_its_unknown_fields(
    tmp_path: Path, save_st: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyguard.sources import _json_fields, _jsonfile

    write_sharded(tmp_path, save_st)
    index = tmp_path / INDEX
    doc = json.loads(index.read_text())
    doc["padding"] = [{}] * 50_000 + [{"deep": [[{"a": 1}]]}]
    doc["notes"] = "caf\u00e9, \\n and \\\\"  # UTF-8 and escapes in a skipped value
    index.write_text(json.dumps(doc, ensure_ascii=False))
    expected = read_keys(tmp_path)  # small: decoded whole, strictly
    built: list[Any] = []
    decode = _json_fields.decode_fields

    def recording(raw: bytes, fields: Any, strict: Any, skipped: Any) -> Any:
        result = decode(raw, fields, strict, skipped)
        built.append(result)
        return result

    monkeypatch.setattr(_jsonfile, "TYPED_ABOVE", 0)
    monkeypatch.setattr(_json_fields, "decode_fields", recording)
    keys = read_keys(tmp_path)
    assert dict(keys) == dict(expected) and keys.metadata == expected.metadata
    assert built and all(result is not None for result in built)  # the fast reading took every read of the index
    assert all(result.get("padding") is _jsonfile.SKIPPED for result in built)
    other = tmp_path / "weights.json"  # not named like an index: told by its fields
    other.write_bytes(index.read_bytes())
    built.clear()
    assert read_keys(other).tensors == keys.tensors
    assert len(built) == 2 and built[0]["weight_map"] is _jsonfile.SKIPPED  # telling the kind decodes no weight_map


def test_a_large_index_without_msgspec_is_read_strictly(
    tmp_path: Path, save_st: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyguard.sources import _json_fields, _jsonfile

    write_sharded(tmp_path, save_st)
    expected = read_keys(tmp_path)
    monkeypatch.setattr(_jsonfile, "TYPED_ABOVE", 0)
    monkeypatch.setattr(_json_fields, "HAVE_MSGSPEC", False)
    keys = read_keys(tmp_path)
    assert dict(keys) == dict(expected)
    index = tmp_path / INDEX
    index.write_text(index.read_text().replace('"metadata"', '"weight_map": {}, "metadata"', 1))
    with pytest.raises(ShardIndexError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "duplicate-key"


def test_corrupted_shard_names_the_shard(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    write_sharded(tmp_path, save_st)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path)
    assert info.value.path == str(shard)


# -- sharded pickles --------------------------------------------------------------------------------------------


def _pickle_shards(folder: Path, **save_kwargs: Any) -> dict[str, dict[str, Any]]:
    shards = {
        "pytorch_model-00001-of-00002.bin": {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)},
        "pytorch_model-00002-of-00002.bin": {"b.weight": torch.zeros(4, 2, dtype=torch.float16)},
    }
    for name, tensors in shards.items():
        torch.save(tensors, folder / name, **save_kwargs)
    weight_map = {key: shard for shard, tensors in shards.items() for key in tensors}
    write_index(folder, weight_map, total_size=2 * 3 * 4 + 2 * 4 + 4 * 2 * 2, name=PICKLE_INDEX)
    return shards


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_sharded_pickle(tmp_path: Path, legacy: bool) -> None:
    shards = _pickle_shards(tmp_path, _use_new_zipfile_serialization=not legacy)
    keys = read_keys(tmp_path)
    assert keys.format == "torch-pickle-sharded"
    assert keys.location == str(tmp_path / PICKLE_INDEX)
    assert set(keys.files) == set(shards)
    assert keys.notes == ()
    assert keys["a.weight"].shape == (2, 3)
    assert keys["a.weight"].file == "pytorch_model-00001-of-00002.bin"
    assert keys["b.weight"].dtype == "F16"
    assert keys["b.weight"].file == "pytorch_model-00002-of-00002.bin"
    assert read_keys(tmp_path / PICKLE_INDEX).tensors == keys.tensors


def test_sharded_pickle_in_containers_uses_the_container(tmp_path: Path) -> None:
    torch.save({"state_dict": {"a": torch.zeros(1)}, "ema": {"a": torch.zeros(5)}}, tmp_path / "p-1.bin")
    torch.save({"state_dict": {"b": torch.zeros(2)}, "ema": {"b": torch.zeros(6)}}, tmp_path / "p-2.bin")
    write_index(tmp_path, {"a": "p-1.bin", "b": "p-2.bin"}, total_size=12, name=PICKLE_INDEX)
    auto = read_keys(tmp_path)
    assert auto.unwrapped == "state_dict"
    assert auto["a"].shape == (1,)
    chosen = read_keys(tmp_path, container="ema")
    assert chosen.unwrapped == "ema"
    assert (chosen["a"].shape, chosen["b"].shape) == ((5,), (6,))
    # the same through the index file, under its own name or any other
    assert read_keys(tmp_path / PICKLE_INDEX, container="ema").tensors == chosen.tensors
    renamed = tmp_path / "weights.json"
    renamed.write_text((tmp_path / PICKLE_INDEX).read_text())
    assert read_keys(renamed, container="ema").tensors == chosen.tensors


def test_sharded_pickle_mismatch(tmp_path: Path) -> None:
    _pickle_shards(tmp_path)
    index = tmp_path / PICKLE_INDEX
    doc = json.loads(index.read_text())
    doc["weight_map"]["c.weight"] = "pytorch_model-00002-of-00002.bin"
    index.write_text(json.dumps(doc))
    with pytest.raises(ShardIndexError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "index-mismatch"
    assert "'c.weight'" in str(info.value)


def test_index_is_not_modified(tmp_path: Path, save_st: Callable[..., Path], hashes: Callable[..., Any]) -> None:
    write_sharded(tmp_path, save_st, total_size=1)
    before = hashes(tmp_path)
    read_keys(tmp_path)
    assert hashes(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == sorted([INDEX, *_shards()])
