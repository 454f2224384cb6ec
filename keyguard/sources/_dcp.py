"""``torch.distributed.checkpoint`` folders (``.metadata`` plus ``__0_0.distcp``...), as written by ``dcp.save``,
FSDP2 and Accelerate's sharded FSDP state.

Keys, shapes and dtypes come from the metadata alone (read by ``_dcp_metadata`` without unpickling anything but
DCP's own records); no ``.distcp`` byte is read to list them. Nested state dicts (``{"model": ..., "optimizer":
...}``) are unwrapped like the containers of a pickle: the model's tensors are chosen, the others named in a note.
``load_dcp_tensors`` reads the data (each stored chunk is a ``torch.save`` blob, loaded with ``weights_only=True``)
and puts sharded tensors back together, for ``keyguard fix`` and guarded loading; ``torch.distributed`` is never
initialised and torch's own reader, which unpickles the metadata unsafely, is never used.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable
from typing import Any, Final

from keyguard._dtypes import canonical_dtype
from keyguard._exceptions import SourceError
from keyguard.sources._dcp_metadata import Chunk, Entry, read_metadata
from keyguard.sources._keyset import KeySet, TensorInfo

METADATA_FILE: Final = ".metadata"
DATA_SUFFIX: Final = ".distcp"
#: Containers preferred when a DCP state dict nests several, most wanted first.
DCP_CONTAINERS: Final = ("model", "state_dict", "model_state_dict", "module", "app", "ema")
_EXAMPLES: Final = 3


def is_dcp_folder(folder: str) -> bool:
    """A folder holding a DCP ``.metadata`` file."""
    return os.path.isfile(os.path.join(folder, METADATA_FILE))


def read_dcp(path: str | os.PathLike[str], *, container: str | None = None) -> KeySet:
    """Read the keys, shapes and dtypes of a DCP checkpoint folder from its ``.metadata``.

    Args:
        path: the folder (or its ``.metadata`` / a ``.distcp`` file inside it).
        container: for state dicts nesting several (``{"model": ..., "optimizer": ...}``), the one to read,
            ``/``-separated for deeper ones; by default the model's.

    Raises:
        UnsafePickleError: the metadata names a class outside DCP's own.
        SourceError: the metadata is invalid, or names data files that are missing or too short.
    """
    folder = _folder_of(os.fspath(path))
    meta_path = os.path.join(folder, METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise SourceError(folder, "not-found", f"has no {METADATA_FILE} file (not a torch.distributed.checkpoint)")
    metadata = read_metadata(meta_path)
    chosen, unwrapped, notes = _choose(meta_path, metadata.entries, container)
    files = _check_files(folder, chosen)
    tensors: dict[str, TensorInfo] = {}
    skipped: list[str] = []
    for name, entry in chosen:
        if entry.shape is None:
            skipped.append(name)
            continue
        first = entry.chunks[0].file if entry.chunks else None
        tensors[name] = TensorInfo(entry.shape, canonical_dtype(entry.dtype), first)
    if not tensors:
        raise SourceError(folder, "no-tensors", "the DCP checkpoint holds no tensors" + _under(unwrapped))
    sharded = sum(1 for _, entry in chosen if len(entry.chunks) > 1)
    described = f"torch.distributed.checkpoint folder ({len(files)} data file{'s' if len(files) != 1 else ''}"
    described += f", metadata version {metadata.version})" if metadata.version else ")"
    if sharded:
        described += f"; {sharded:,} tensor(s) are sharded in several chunks (FSDP2 / DTensor), read as whole tensors"
    notes.insert(0, described)
    if skipped:
        shown = ", ".join(repr(k) for k in skipped[:_EXAMPLES])
        more = f" and {len(skipped) - _EXAMPLES} more" if len(skipped) > _EXAMPLES else ""
        notes.append(f"ignored {len(skipped)} non-tensor entr{'y' if len(skipped) == 1 else 'ies'}: {shown}{more}")
    return KeySet(
        tensors=tensors,
        format="torch-dcp",
        location=folder,
        unwrapped=unwrapped,
        files=tuple(files),
        notes=tuple(notes),
    )


def _folder_of(path: str) -> str:
    if os.path.isfile(path) and (os.path.basename(path) == METADATA_FILE or path.endswith(DATA_SUFFIX)):
        return os.path.dirname(path) or "."
    return path


def _under(unwrapped: str | None) -> str:
    return f" under {unwrapped!r}" if unwrapped else ""


def _choose(
    meta_path: str, entries: Iterable[Entry], container: str | None
) -> tuple[list[tuple[str, Entry]], str | None, list[str]]:
    """The entries of the chosen container, named as in it; the container; notes."""
    entries = list(entries)
    notes: list[str] = []
    if container is not None:
        parts = tuple(container.split("/"))
        chosen = [(".".join(e.path[len(parts) :]), e) for e in entries if e.path[: len(parts)] == parts]
        chosen = [(name, e) for name, e in chosen if name]
        if not any(e.shape is not None for _, e in chosen):
            tops = sorted({e.path[0] for e in entries if len(e.path) > 1})
            listed = ", ".join(map(repr, tops)) or "none"
            raise SourceError(
                meta_path, "no-such-container", f"has no container {container!r} holding tensors (containers: {listed})"
            )
        return chosen, container, notes
    direct = [(e.path[0], e) for e in entries if len(e.path) == 1]
    nested: dict[str, list[tuple[str, Entry]]] = {}
    for e in entries:
        if len(e.path) > 1:
            nested.setdefault(e.path[0], []).append((".".join(e.path[1:]), e))
    holding = [top for top, items in nested.items() if any(e.shape is not None for _, e in items)]
    if any(e.shape is not None for _, e in direct) or not holding:
        if holding:
            notes.append(f"also holds {', '.join(map(repr, holding))}; choose one with --container")
        return direct, None, notes
    preferred = [c for c in DCP_CONTAINERS if c in holding] or holding
    top = preferred[0]
    others = [h for h in holding if h != top]
    if others:
        notes.append(f"also holds {', '.join(map(repr, others))}; choose one with --container")
    return nested[top], top, notes


def _check_files(folder: str, chosen: Iterable[tuple[str, Entry]]) -> list[str]:
    """The data files the chosen tensors use, each inside the folder and long enough for its chunks."""
    needed: dict[str, int] = {}
    for name, entry in chosen:
        if entry.shape is None:
            continue
        covered = sum(math.prod(chunk.sizes) for chunk in entry.chunks)
        if covered != math.prod(entry.shape):
            raise SourceError(
                os.path.join(folder, METADATA_FILE),
                "invalid-dcp-metadata",
                f"the chunks of {name!r} cover {covered:,} of its {math.prod(entry.shape):,} elements"
                " (a rank's data is missing from the metadata)",
            )
        for chunk in entry.chunks:
            needed[chunk.file] = max(needed.get(chunk.file, 0), chunk.offset + chunk.length)
    real_folder = os.path.realpath(folder)
    for file, end in needed.items():
        if not file or os.path.isabs(file) or ".." in file.replace("\\", "/").split("/"):
            raise SourceError(folder, "shard-outside-folder", f"the DCP metadata names data file {file!r}; refused")
        target = os.path.join(folder, file)
        if os.path.commonpath([real_folder, os.path.realpath(target)]) != real_folder:
            raise SourceError(folder, "shard-outside-folder", f"data file {file!r} leads outside the folder; refused")
        if not os.path.isfile(target):
            raise SourceError(
                folder, "missing-shard", f"data file {file!r} named by the DCP metadata does not exist", shard=file
            )
        size = os.path.getsize(target)
        if size < end:
            raise SourceError(
                folder,
                "truncated",
                f"data file {file!r} has {size:,} bytes but the metadata places data up to byte {end:,}",
                shard=file,
            )
    return sorted(needed)


def load_dcp_tensors(keys: KeySet, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The tensors of a DCP checkpoint read by ``read_dcp``, whole (sharded tensors put back together).

    Each stored chunk is a ``torch.save`` blob, loaded with ``weights_only=True``; chunks written with a stream
    transform (compression) are refused.
    """
    from keyguard.sources._torch import import_torch

    torch = import_torch(f"to read the tensors of the DCP checkpoint {keys.location}")
    folder = keys.location or "."
    metadata = read_metadata(os.path.join(folder, METADATA_FILE))
    chosen, _, _ = _choose(folder, metadata.entries, keys.unwrapped)
    wanted = set(keys if names is None else names)
    out: dict[str, Any] = {}
    handles: dict[str, Any] = {}
    try:
        for name, entry in chosen:
            if name not in wanted or entry.shape is None:
                continue
            out[name] = _assemble(torch, folder, name, entry, handles)
    finally:
        for handle in handles.values():
            handle.close()
    return out


def _assemble(torch: Any, folder: str, name: str, entry: Entry, handles: dict[str, Any]) -> Any:
    dtype = getattr(torch, entry.dtype or "", None)
    if not isinstance(dtype, torch.dtype):
        raise SourceError(folder, "unknown-dtype", f"tensor {name!r} has dtype {entry.dtype!r}, unknown to torch")
    shape = entry.shape or ()
    if len(entry.chunks) == 1 and entry.chunks[0].sizes == shape:
        return _chunk_tensor(torch, folder, name, entry.chunks[0], handles, dtype)
    whole = torch.empty(shape, dtype=dtype)
    for chunk in entry.chunks:
        piece = _chunk_tensor(torch, folder, name, chunk, handles, dtype)
        view = whole
        for dim, (start, size) in enumerate(zip(chunk.offsets, chunk.sizes)):
            view = view.narrow(dim, start, size)
        view.copy_(piece)
    return whole


def _chunk_tensor(torch: Any, folder: str, name: str, chunk: Chunk, handles: dict[str, Any], dtype: Any) -> Any:
    if chunk.transforms:
        raise SourceError(
            folder,
            "unsupported-dcp",
            f"tensor {name!r} is stored with stream transforms ({', '.join(chunk.transforms)}); keyguard reads plain"
            " DCP data only",
        )
    handle = handles.get(chunk.file)
    if handle is None:
        handle = handles[chunk.file] = open(os.path.join(folder, chunk.file), "rb")  # noqa: SIM115
    handle.seek(chunk.offset)
    blob = handle.read(chunk.length)
    if len(blob) != chunk.length:
        raise SourceError(folder, "file-changed", f"data file {chunk.file!r} ended inside the data of {name!r}")
    try:
        tensor = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # not a torch.save blob: another serialization format, or damaged bytes
        raise SourceError(
            folder,
            "corrupted-dcp",
            f"the data of {name!r} in {chunk.file!r} is not a readable torch.save blob ({type(exc).__name__})",
        ) from None
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != chunk.sizes or tensor.dtype != dtype:
        raise SourceError(
            folder,
            "corrupted-dcp",
            f"the data of {name!r} in {chunk.file!r} is not the {list(chunk.sizes)} {dtype} chunk the metadata says",
        )
    return tensor
