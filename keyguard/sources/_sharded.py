"""Sharded checkpoints: ``*.safetensors.index.json`` / ``pytorch_model.bin.index.json`` plus their shards."""

from __future__ import annotations

import json
import os
from typing import Any

from keyguard._exceptions import ShardIndexError, SourceError
from keyguard.sources._confine import escapes
from keyguard.sources._jsonfile import load_json_object
from keyguard.sources._keyset import KeySet, TensorInfo
from keyguard.sources._safetensors import read_safetensors

_EXAMPLES = 3


def read_sharded(index_path: str | os.PathLike[str], *, container: str | None = None) -> KeySet:
    """Read every shard named by a sharded checkpoint's index, and check the index against the shards.

    Shard paths must stay inside the index's folder: absolute paths, ``..`` and symlinks that lead outside are
    refused (in the Hugging Face cache, symlinks into the same repository's ``blobs/`` are the layout). Keys listed
    in the index but absent from their shard, keys in a shard but not in the index (a loader would never load
    them), keys found in two shards and missing shards are errors. A ``total_size`` that does not
    match the shards is reported as a note: loaders ignore it.
    """
    index_path = os.fspath(index_path)
    folder = os.path.dirname(os.path.abspath(index_path))
    index = _load_index(index_path)
    weight_map: dict[str, str] = index["weight_map"]

    shard_names = list(dict.fromkeys(weight_map.values()))
    shards: dict[str, KeySet] = {}
    for shard in shard_names:
        shard_path = _inside(index_path, folder, shard)
        shards[shard] = _read_shard(index_path, shard_path, shard, container)

    problems: list[str] = []
    not_in_shard = [key for key, shard in weight_map.items() if key not in shards[shard]]
    if not_in_shard:
        problems.append(_listed(not_in_shard, "key(s) listed in the index are missing from their shard", weight_map))
    owners: dict[str, list[str]] = {}
    for shard, keys in shards.items():
        for key in keys:
            owners.setdefault(key, []).append(shard)
    in_two = {key: names for key, names in owners.items() if len(names) > 1}
    if in_two:
        shown = ", ".join(f"{key!r} ({' and '.join(names)})" for key, names in list(in_two.items())[:_EXAMPLES])
        problems.append(f"{len(in_two)} key(s) appear in more than one shard: {shown}")
    unindexed = [key for key, names in owners.items() if key not in weight_map and len(names) == 1]
    if unindexed:
        problems.append(
            _listed(unindexed, "key(s) in a shard are not in the index (loaders would never load them)", owners)
        )
    if problems:
        raise ShardIndexError(index_path, "index-mismatch", "index disagrees with its shards: " + "; ".join(problems))

    tensors: dict[str, TensorInfo] = {key: shards[shard][key] for key, shard in weight_map.items()}
    notes: list[str] = []
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in index.get("metadata", {}).items()}
    declared = index.get("metadata", {}).get("total_size")
    actual = sum(info.nbytes or 0 for info in tensors.values())
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != actual:
        notes.append(
            f"index total_size is {declared:,} bytes but the shards hold {actual:,} bytes of tensors"
            " (loaders ignore total_size)"
        )
    first = next(iter(shards.values()), None)
    for shard_set in shards.values():
        notes.extend(shard_set.notes)
    is_pickle = first is not None and first.format == "torch-pickle"
    return KeySet(
        tensors=tensors,
        format="torch-pickle-sharded" if is_pickle else "safetensors-sharded",
        location=index_path,
        metadata=metadata,
        unwrapped=first.unwrapped if first is not None else None,
        tied=tuple(group for shard_set in shards.values() for group in shard_set.tied),
        files=tuple(shard_names),
        notes=tuple(dict.fromkeys(notes)),
    )


def _load_index(index_path: str) -> dict[str, Any]:
    index = load_json_object(index_path, ShardIndexError, fields=("metadata", "weight_map"))
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ShardIndexError(
            index_path, "invalid-index", "index has no weight_map mapping tensor names to shard file names"
        )
    if "metadata" in index and not isinstance(index["metadata"], dict):
        raise ShardIndexError(index_path, "invalid-index", "index metadata is not an object")
    return index


def _inside(index_path: str, folder: str, shard: str) -> str:
    """Resolve a shard name, refusing anything that leads outside the index's folder."""
    if (
        not shard
        or "\x00" in shard
        or os.path.isabs(shard)
        or shard.startswith(("/", "\\"))
        or ".." in shard.replace("\\", "/").split("/")
    ):
        raise ShardIndexError(
            index_path,
            "shard-outside-folder",
            f"weight_map names shard {shard!r}, which is not a plain path inside the index's folder; refused",
            shard=shard,
        )
    candidate = os.path.join(folder, shard)
    real = escapes(folder, candidate)
    if real is not None:
        raise ShardIndexError(
            index_path,
            "shard-outside-folder",
            f"shard {shard!r} is a symlink that leads outside the checkpoint's folder (to {real}); refused",
            shard=shard,
        )
    if not os.path.exists(candidate):
        raise ShardIndexError(
            index_path, "missing-shard", f"shard {shard!r} named in weight_map does not exist", shard=shard
        )
    return candidate


def _read_shard(index_path: str, shard_path: str, shard: str, container: str | None) -> KeySet:
    if shard.endswith(".safetensors"):
        return read_safetensors(shard_path, name=shard)
    from keyguard.sources._pickle import read_pickle

    try:
        return read_pickle(shard_path, name=shard, container=container)
    except SourceError:
        raise
    except Exception as exc:  # pragma: no cover - read_pickle converts its own failures
        raise ShardIndexError(index_path, "unreadable-shard", f"shard {shard!r}: {exc}") from exc


def _listed(keys: list[str], what: str, where: dict[str, Any]) -> str:
    shown = ", ".join(f"{key!r} ({_where(where[key])})" for key in keys[:_EXAMPLES])
    more = f" and {len(keys) - _EXAMPLES} more" if len(keys) > _EXAMPLES else ""
    return f"{len(keys)} {what}: {shown}{more}"


def _where(value: Any) -> str:
    return value if isinstance(value, str) else " and ".join(value)
