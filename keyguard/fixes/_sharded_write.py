"""Writing a sharded checkpoint: shard by shard into a staging folder, renamed (or swapped) into place at the end."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from keyguard._atomic import atomic_output, fsync_dir, new_mode, temp_prefix
from keyguard._exceptions import SourceError, WriteError
from keyguard._progress import Progress
from keyguard.fixes._block_copy import Stream
from keyguard.fixes._file_spans import file_spans
from keyguard.fixes._file_write import METADATA_KEY, fix_metadata, write_file
from keyguard.fixes._output_plan import Change, OutputItem, item_nbytes
from keyguard.fixes._tensor_data import TensorSource
from keyguard.sources._keyset import KeySet


def write_sharded(
    keys: KeySet,
    items: list[OutputItem],
    changes: list[Change],
    out: str,
    bar: Progress,
    stream: Stream,
    tensors: TensorSource,
) -> tuple[int, list[str]]:
    source_folder = (
        os.path.dirname(keys.location or "") if os.path.isfile(keys.location or "") else (keys.location or "")
    )
    index_name = (
        os.path.basename(keys.location or "") if os.path.isfile(keys.location or "") else "model.safetensors.index.json"
    )
    in_place = os.path.abspath(out) == os.path.abspath(source_folder)
    if os.path.exists(out) and not in_place:
        raise WriteError(f"{out}: already exists; sharded output goes to a new folder (or use --in-place)")
    parent = os.path.dirname(os.path.abspath(out)) or "."
    if not os.path.isdir(parent):
        raise FileNotFoundError(errno.ENOENT, "no such folder", parent)
    if in_place:
        _check_replaceable(out, [os.path.join(out, name) for name in (*keys.files, index_name)])
    staging = tempfile.mkdtemp(prefix=temp_prefix(os.path.basename(os.path.abspath(out))), dir=parent)
    total = 0
    try:
        # mkdtemp makes 0700: the folder gets the source folder's permissions (less the umask for a new one)
        os.chmod(staging, os.stat(out).st_mode & 0o7777 if in_place else new_mode(source_folder))

        by_shard: dict[str, list[OutputItem]] = {}
        for item in items:
            shard = keys[item.sources[0]].file or "model.safetensors"
            by_shard.setdefault(shard, []).append(item)
        weight_map: dict[str, str] = {}
        summary = fix_metadata(keys, changes)[METADATA_KEY]
        spans = file_spans(keys)
        for shard, shard_items in by_shard.items():
            meta = _shard_metadata(os.path.join(source_folder, shard))
            meta[METADATA_KEY] = summary
            total += write_file(
                keys,
                shard_items,
                changes,
                os.path.join(staging, shard),
                bar,
                stream=stream,
                tensors=tensors,
                metadata=meta,
                files=spans,
            )
            weight_map.update({i.name: shard for i in shard_items})
        index_meta = _index_metadata(os.path.join(source_folder, index_name))
        index_meta["total_size"] = sum(item_nbytes(i) for i in items)
        index_meta[METADATA_KEY] = summary
        index = {"metadata": index_meta, "weight_map": dict(sorted(weight_map.items()))}
        with atomic_output(os.path.join(staging, index_name), like=os.path.join(source_folder, index_name)) as f:
            f.write((json.dumps(index, indent=2) + "\n").encode())
        rewritten = {*keys.files, index_name}
        if in_place:
            # everything else in the folder stays: other files and folders are linked (or copied) into the new one
            for extra in sorted(os.listdir(source_folder)):
                if extra not in rewritten:
                    _carry_over(os.path.join(source_folder, extra), os.path.join(staging, extra))
        else:
            for extra in companions(source_folder, rewritten):
                shutil.copy2(os.path.join(source_folder, extra), os.path.join(staging, extra))
        fsync_dir(staging)
        if in_place:
            _swap_folder(staging, out, parent)
        else:
            os.rename(staging, out)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return total, [os.path.join(out, s) for s in by_shard]


def _check_replaceable(folder: str, files: list[str]) -> None:
    """In place, the folder and the files rewritten in it must be this user's to replace: the new ones would be owned
    by this user, and a file the user may not write would be replaced through the folder's permission alone."""
    info = os.stat(folder)
    if hasattr(os, "geteuid") and os.geteuid() not in (0, info.st_uid):
        raise WriteError(
            f"{folder}: not replaced: the folder belongs to uid {info.st_uid}, and replacing it in place would give"
            " it (and its shards) a new owner"
        )
    for path in [folder, *files]:
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise WriteError(f"{path}: not replaced: it is not writable by you")


def _shard_metadata(path: str) -> dict[str, str]:
    """A source shard's own ``__metadata__`` (kept in the rewritten shard)."""
    from keyguard.sources._safetensors import read_safetensors

    try:
        meta = dict(read_safetensors(path).metadata)
    except SourceError as exc:
        raise WriteError(f"{path}: not written: reading the source failed: {exc}") from exc
    meta.setdefault("format", "pt")
    return meta


def _index_metadata(path: str) -> dict[str, Any]:
    """The source index's ``metadata`` as it is (values are not all strings: ``total_size`` is a number)."""
    from keyguard.sources._jsonfile import load_json_object

    try:
        meta = load_json_object(path, fields=("metadata",)).get("metadata")  # bounded, regular files only
    except SourceError:
        return {}
    return dict(meta) if isinstance(meta, dict) else {}


def _carry_over(source: str, target: str) -> None:
    """Put ``source`` at ``target`` without copying data where possible (hard links, same file system)."""
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source: str, target: str) -> str:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return target
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def _swap_folder(new: str, target: str, parent: str) -> None:
    """Put the folder ``new`` at ``target`` (which exists), then remove the old one.

    On Linux the two are exchanged in one atomic ``renameat2(RENAME_EXCHANGE)``, so ``target`` is always either the
    old folder or the new one. Elsewhere (or when the call is refused) the old folder is first renamed aside: a crash
    between the two renames leaves it there, as ``.NAME.keyguard-PID-BOOT-old-*``, and nothing at ``target``.
    """
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
        return
    backup = tempfile.mkdtemp(prefix=temp_prefix(os.path.basename(os.path.abspath(target))) + "old-", dir=parent)
    os.rmdir(backup)
    os.rename(target, backup)
    os.rename(new, target)
    shutil.rmtree(backup, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Atomically exchange two paths with Linux's ``renameat2(RENAME_EXCHANGE)``; False when not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(result == 0)


def companions(folder: str, skip: set[str]) -> list[str]:
    """Small files that travel with a checkpoint (config, tokenizer): copied into a sharded output unchanged."""
    if not folder or not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name in skip or not os.path.isfile(path) or name.endswith((".safetensors", ".bin", ".pt", ".pth")):
            continue
        if name.endswith(".index.json") or os.path.getsize(path) > 64 * 1024 * 1024:
            continue
        out.append(name)
    return out
