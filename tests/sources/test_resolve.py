"""``read_keys``: which reader a path, folder or object goes to."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keyguard import KeySet, SourceError
from keyguard._st_write import write_safetensors
from keyguard.sources import read_keys, write_manifest


def st(path: Path, *keys: str) -> Path:
    """A small valid .safetensors file (written without torch) holding one F32 [2] tensor per key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, {key: ("F32", [2], bytes(8)) for key in keys})
    return path


def index(path: Path, weight_map: dict[str, str]) -> Path:
    path.write_text(json.dumps({"metadata": {"total_size": 8 * len(weight_map)}, "weight_map": weight_map}))
    return path


def pickle_file(path: Path, *keys: str, legacy: bool = False) -> Path:
    torch = pytest.importorskip("torch")
    torch.save({key: torch.zeros(2) for key in keys}, path, _use_new_zipfile_serialization=not legacy)
    return path


LAYERS: list[tuple[str, list[str], str, str]] = [
    # (what, files, expected format, expected key)
    ("adapter", ["adapter_config.json", "adapter_model.safetensors"], "peft-adapter", "adapter.k"),
    (
        "sharded",
        ["model.safetensors.index.json", "model-00001-of-00001.safetensors"],
        "safetensors-sharded",
        "sharded.k",
    ),
    ("single", ["model.safetensors"], "safetensors", "single.k"),
    (
        "other-index",
        ["extra.safetensors.index.json", "extra-00001-of-00001.safetensors"],
        "safetensors-sharded",
        "oi.k",
    ),
    (
        "pickle-index",
        ["pytorch_model.bin.index.json", "pytorch_model-00001-of-00001.bin"],
        "torch-pickle-sharded",
        "pi.k",
    ),
    ("pickle", ["pytorch_model.bin"], "torch-pickle", "pickle.k"),
    ("any-safetensors", ["weights.safetensors"], "safetensors", "any.k"),
    ("config", ["config.json"], "config", "lm_head.weight"),
]


@pytest.fixture
def full_folder(tmp_path: Path, tiny_llama_config: Callable[..., Any]) -> Path:
    folder = tmp_path / "everything"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    st(folder / "adapter_model.safetensors", "adapter.k")
    st(folder / "model-00001-of-00001.safetensors", "sharded.k")
    index(folder / "model.safetensors.index.json", {"sharded.k": "model-00001-of-00001.safetensors"})
    st(folder / "model.safetensors", "single.k")
    st(folder / "extra-00001-of-00001.safetensors", "oi.k")
    index(folder / "extra.safetensors.index.json", {"oi.k": "extra-00001-of-00001.safetensors"})
    pickle_file(folder / "pytorch_model-00001-of-00001.bin", "pi.k")
    index(folder / "pytorch_model.bin.index.json", {"pi.k": "pytorch_model-00001-of-00001.bin"})
    pickle_file(folder / "pytorch_model.bin", "pickle.k")
    st(folder / "weights.safetensors", "any.k")
    tiny_llama_config().save_pretrained(folder)
    (folder / "README.md").write_text("# a model\n")
    return folder


def test_folder_detection_order(full_folder: Path) -> None:
    seen = []
    for what, files, fmt, key in LAYERS:
        keys = read_keys(full_folder)
        assert (what, keys.format) == (what, fmt)
        assert key in keys, what
        seen.append(what)
        for name in files:
            (full_folder / name).unlink()
    assert seen == [layer[0] for layer in LAYERS]
    with pytest.raises(SourceError) as info:
        read_keys(full_folder)
    assert info.value.problem == "unrecognised-folder"
    assert "README.md" in str(info.value)


def test_safetensors_beat_an_old_pickle_index(tmp_path: Path) -> None:
    # a folder converted to safetensors that kept its sharded pickles: loaders read model.safetensors
    pickle_file(tmp_path / "pytorch_model-00001-of-00001.bin", "old.k")
    index(tmp_path / "pytorch_model.bin.index.json", {"old.k": "pytorch_model-00001-of-00001.bin"})
    st(tmp_path / "model.safetensors", "new.k")
    assert list(read_keys(tmp_path)) == ["new.k"]


def test_index_path_and_folder_agree(full_folder: Path) -> None:
    by_index = read_keys(full_folder / "model.safetensors.index.json")
    assert by_index.format == "safetensors-sharded"
    assert list(by_index) == ["sharded.k"]
    assert list(read_keys(full_folder / "pytorch_model.bin.index.json")) == ["pi.k"]
    assert list(read_keys(full_folder / "extra.safetensors.index.json")) == ["oi.k"]
    assert list(read_keys(full_folder / "weights.safetensors")) == ["any.k"]
    assert list(read_keys(full_folder / "pytorch_model.bin")) == ["pickle.k"]
    assert read_keys(full_folder / "adapter_config.json").format == "peft-adapter"
    assert read_keys(full_folder / "config.json").format == "config"


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "unrecognised-folder"
    assert info.value.path == str(tmp_path)
    assert "an empty folder" in str(info.value)


def test_unrecognised_folder_lists_what_it_found(tmp_path: Path) -> None:
    for name in ("notes.txt", "tokenizer.json", "a.png"):
        (tmp_path / name).write_text("x")
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "unrecognised-folder"
    assert "nothing to read" in str(info.value)
    assert "a.png, notes.txt, tokenizer.json" in str(info.value)


def test_several_candidates(tmp_path: Path) -> None:
    st(tmp_path / "a.safetensors", "a")
    st(tmp_path / "b.safetensors", "b")
    with pytest.raises(SourceError) as info:
        read_keys(tmp_path)
    assert info.value.problem == "unrecognised-folder"
    assert "several candidates; pass the file itself" in str(info.value)


def test_single_safetensors_with_any_name(tmp_path: Path) -> None:
    st(tmp_path / "diffusion_pytorch_model.safetensors", "unet.k")
    keys = read_keys(tmp_path)
    assert list(keys) == ["unet.k"]
    assert keys.location == str(tmp_path / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("name", ["x.safetensors", "x.pt", "x.bin", "model.safetensors.index.json", "m.json"])
def test_directory_where_a_file_is_expected(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    with pytest.raises(SourceError) as info:
        read_keys(folder)
    assert info.value.problem == "is-a-directory"
    assert str(info.value) == f"{folder}: is a directory, expected a checkpoint file"


def test_folder_with_a_file_suffix_that_is_a_real_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "llama.pt"
    st(folder / "model.safetensors", "k")
    assert list(read_keys(folder)) == ["k"]


# -- files without a known suffix -----------------------------------------------------------------------------------


def test_sniff_safetensors(tmp_path: Path) -> None:
    path = st(tmp_path / "weights", "a", "b")
    keys = read_keys(path)
    assert keys.format == "safetensors"
    assert list(keys) == ["a", "b"]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_sniff_pickles(tmp_path: Path, legacy: bool) -> None:
    path = pickle_file(tmp_path / "checkpoint.data", "a", legacy=legacy)
    keys = read_keys(path)
    assert keys.format == "torch-pickle"
    assert list(keys) == ["a"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"hello, I am a text file\n", "unknown-format"),
        (bytes(range(256)) * 4, "unknown-format"),
        (b"", "empty-file"),
        (b"\x01", "unknown-format"),
    ],
    ids=["text", "binary", "empty", "one-byte"],
)
def test_sniff_unknown(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "mystery"
    path.write_bytes(content)
    with pytest.raises(SourceError) as info:
        read_keys(path)
    assert info.value.problem == problem
    assert info.value.path == str(path)


# -- JSON files -------------------------------------------------------------------------------------------------


def test_json_by_content(tmp_path: Path) -> None:
    manifest = tmp_path / "pinned-keys.json"
    write_manifest(read_keys({"a": (1,)}), manifest)
    assert read_keys(manifest).format == "manifest"

    st(tmp_path / "shard.safetensors", "s")
    weights = index(tmp_path / "weights.json", {"s": "shard.safetensors"})
    assert read_keys(weights).format == "safetensors-sharded"

    other = tmp_path / "tokenizer_config.json"
    other.write_text(json.dumps({"model_max_length": 512}))
    with pytest.raises(SourceError) as info:
        read_keys(other)
    assert info.value.problem == "unknown-json"

    array = tmp_path / "list.json"
    array.write_text("[1, 2]")
    with pytest.raises(SourceError) as info:
        read_keys(array)
    assert info.value.problem == "not-an-object"


def test_broken_index_by_name(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text("{")
    with pytest.raises(SourceError) as info:
        read_keys(path)
    assert info.value.problem == "not-json"


# -- objects and missing paths -----------------------------------------------------------------------------------


def test_keyset_is_returned_unchanged(tmp_path: Path) -> None:
    keys = read_keys(st(tmp_path / "a.safetensors", "k"))
    assert isinstance(keys, KeySet)
    assert read_keys(keys) is keys
    assert read_keys(keys, container="model", architecture="X") is keys


@pytest.mark.parametrize("kind", [str, Path])
def test_missing_path(tmp_path: Path, kind: Callable[[str], Any]) -> None:
    missing = tmp_path / "nope" / "model.safetensors"
    with pytest.raises(SourceError) as info:
        read_keys(kind(str(missing)))
    assert info.value.problem == "not-found"
    assert str(info.value) == f"{missing}: no such file or folder"


def test_broken_symlink(tmp_path: Path) -> None:
    link = tmp_path / "model.safetensors"
    link.symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(SourceError) as info:
        read_keys(link)
    assert info.value.problem == "not-found"


def test_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st(tmp_path / "model.safetensors", "k")
    monkeypatch.chdir(tmp_path)
    assert list(read_keys("model.safetensors")) == ["k"]
    assert list(read_keys(".")) == ["k"]
    shutil.copy("model.safetensors", "shard.safetensors")
    index(Path("model.safetensors.index.json"), {"k": "shard.safetensors"})
    assert read_keys("model.safetensors.index.json")["k"].file == "shard.safetensors"
