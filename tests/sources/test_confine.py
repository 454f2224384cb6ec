"""Files a checkpoint folder names stay in the checkpoint's own tree: its folder, or in the Hugging Face cache the
same repository's blobs. One rule for shards and adapter weights."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from keyguard import ShardIndexError, SourceError  # noqa: E402
from keyguard.adapter_checks import check_adapter  # noqa: E402
from keyguard.sources import read_keys  # noqa: E402

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the cache layout uses symlinks")


def to_blob(repo: Path, snapshot: Path, source: Path, name: str) -> Path:
    """Move ``source`` into ``repo/blobs/<sha256>`` and link ``snapshot/name`` to it, as huggingface_hub does."""
    data = source.read_bytes()
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    source.unlink()
    link = snapshot / name
    link.symlink_to(os.path.relpath(blob, snapshot))
    return link


@pytest.fixture
def cached_sharded(tmp_path: Path, save_st: Callable[..., Path]) -> Path:
    """``hub/models--org--tiny/snapshots/<rev>/``: two shards and the index, all symlinks into ``../../blobs``."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    staging = tmp_path / "staging"
    weight_map = {}
    for i, name in enumerate(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]):
        save_st(staging / name, {f"layers.{i}.weight": torch.zeros(2, 2)})
        to_blob(repo, snapshot, staging / name, name)
        weight_map[f"layers.{i}.weight"] = name
    index = staging / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    to_blob(repo, snapshot, index, index.name)
    return snapshot


def test_a_sharded_checkpoint_in_the_hugging_face_cache_is_read(cached_sharded: Path) -> None:
    keys = read_keys(cached_sharded)
    assert keys.format == "safetensors-sharded"
    assert sorted(keys) == ["layers.0.weight", "layers.1.weight"]


def test_a_link_into_another_cached_repository_is_refused(
    cached_sharded: Path, tmp_path: Path, save_st: Callable[..., Path]
) -> None:
    other = tmp_path / "hub" / "models--someone--else" / "blobs"
    other.mkdir(parents=True)
    foreign = save_st(other / ("b" * 64), {"layers.1.weight": torch.zeros(2, 2)})
    shard = cached_sharded / "model-00002-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to(os.path.relpath(foreign, cached_sharded))
    with pytest.raises(ShardIndexError, match="leads outside the checkpoint's folder") as info:
        read_keys(cached_sharded)
    assert info.value.problem == "shard-outside-folder"


def test_a_folder_that_only_looks_like_a_snapshot_gets_no_blobs(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    """``snapshots/<rev>`` outside a ``models--*`` repository is an ordinary folder: its links stay inside it."""
    repo = tmp_path / "plain-folder"
    snapshot = repo / "snapshots" / "main"
    snapshot.mkdir(parents=True)
    save_st(tmp_path / "staging" / "model-00001-of-00001.safetensors", {"w": torch.zeros(2)})
    to_blob(
        repo, snapshot, tmp_path / "staging" / "model-00001-of-00001.safetensors", "model-00001-of-00001.safetensors"
    )
    (snapshot / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}})
    )
    with pytest.raises(ShardIndexError) as info:
        read_keys(snapshot)
    assert info.value.problem == "shard-outside-folder"


# -- adapter weights follow the same rule --------------------------------------------------------------------------
def adapter(folder: Path, save_st: Callable[..., Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "target_modules": ["q"]}))
    save_st(folder / "staging" / "adapter_model.safetensors", {"base_model.model.q.lora_A.weight": torch.zeros(2, 2)})
    return folder / "staging" / "adapter_model.safetensors"


def test_adapter_weights_symlinked_outside_the_folder_are_refused(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    folder = tmp_path / "adapter"
    weights = adapter(folder, save_st)
    outside = tmp_path / "elsewhere.safetensors"
    weights.rename(outside)
    (folder / "adapter_model.safetensors").symlink_to(outside)
    for read in (lambda: read_keys(folder), lambda: check_adapter(folder, {"q.weight": (2, 2)})):
        with pytest.raises(SourceError, match="leads outside the adapter's folder") as info:
            read()
        assert info.value.problem == "weights-outside-folder"


def test_an_adapter_in_the_hugging_face_cache_is_read(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    repo = tmp_path / "hub" / "models--org--lora"
    snapshot = repo / "snapshots" / ("c" * 40)
    weights = adapter(snapshot, save_st)
    to_blob(repo, snapshot, weights, "adapter_model.safetensors")
    assert read_keys(snapshot).format == "peft-adapter"
    report = check_adapter(snapshot, {"q.weight": (2, 2)})
    assert report.checkpoint.location == str(snapshot)


def test_a_link_inside_the_folder_is_fine(tmp_path: Path, save_st: Callable[..., Path]) -> None:
    folder = tmp_path / "adapter"
    weights = adapter(folder, save_st)
    (folder / "adapter_model.safetensors").symlink_to(weights)  # staging/ is inside the folder
    assert len(read_keys(folder)) == 1
