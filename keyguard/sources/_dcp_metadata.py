"""The ``.metadata`` file of a ``torch.distributed.checkpoint`` folder, read without running anything it names.

The file is a pickle of ``torch.distributed.checkpoint.metadata.Metadata``, and torch itself reads it with a plain
``pickle.load``: a crafted file runs code. keyguard reads it with an unpickler that knows the few classes DCP
writes (the metadata dataclasses, ``torch.Size``, dtypes, the layout helper, ``pathlib`` paths for the checkpoint
id) and maps each of them to an inert stand-in defined here: nothing from torch is imported or called, and any
other global refuses the file, naming the global. The stand-ins are then read into plain tuples.

The classes were learnt from files written by ``dcp.save`` (torch 2.2 to 2.13) and from torch's
``torch/distributed/checkpoint/metadata.py`` and ``filesystem.py``; older releases kept ``TensorProperties`` and
``ChunkStorageMetadata`` in ``torch.distributed._shard``, which are accepted under those names too.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from keyguard._exceptions import SourceError, UnsafePickleError

#: A ``.metadata`` above this size is not DCP metadata (a 400B-parameter model writes a few MB).
MAX_METADATA_SIZE: Final = 1 << 30

_DCP_MODULES: Final = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed._shard.sharded_tensor.metadata",
    "torch.distributed._shard.metadata",
)
_RECORDS: Final = frozenset(
    {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "ShardMetadata",
    }
)
_PATHS: Final = frozenset({"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"})
# torch.<dtype> globals: the names torch gives its dtypes (float32, bfloat16, float8_e4m3fn, uint16, qint8...)
_DTYPE_NAME: Final = re.compile(
    r"(?:u?int[0-9]+|float[0-9]+(?:_[0-9a-z]+)*|bfloat16|complex[0-9]+|bool|q?u?int[0-9]+(?:x[0-9]+)?|bits[0-9a-z]+"
    r"|half|float|double|long|int|short|cfloat|cdouble|chalf)"
)


class _Record:
    """An inert stand-in for one of DCP's dataclasses: its pickled state, nothing else."""

    kind = "record"
    state: dict[str, Any]
    tuple_state: tuple[Any, ...]

    def __new__(cls, *args: Any) -> _Record:  # NEWOBJ calls __new__ alone; REDUCE calls the class
        self = super().__new__(cls)
        self.state = {}
        self.tuple_state = ()
        return self

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) from __reduce_ex__ of slotted classes
        if isinstance(state, dict):
            self.state.update(state)
        elif isinstance(state, tuple):
            self.tuple_state = state
        else:
            raise pickle.UnpicklingError(f"unexpected state for {self.kind}: {type(state).__name__}")

    def get(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)


_RECORD_CLASSES: Final[dict[str, type[_Record]]] = {
    name: type(f"_{name}", (_Record,), {"kind": name}) for name in _RECORDS
}


_STORAGE_INFO: Final = type("_StorageInfo", (_Record,), {"kind": "_StorageInfo"})


class _DType(str):
    """A torch dtype named by the pickle (``"float32"``); never resolved to torch's object."""


def _size(dims: Any = ()) -> tuple[int, ...]:
    values = tuple(dims)
    if not all(type(d) is int and d >= 0 for d in values):
        raise pickle.UnpicklingError("torch.Size holds something other than non-negative integers")
    return values


def _layout(name: Any) -> str:
    if not isinstance(name, str):
        raise pickle.UnpicklingError("a layout is named by a string")
    return name


def _mem_format(value: Any) -> int:
    if type(value) is not int:
        raise pickle.UnpicklingError("a memory format encoding is an integer")
    return value


def _path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise pickle.UnpicklingError("a path is made of strings")
    return "/".join(parts)


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the globals DCP metadata is made of, each to an inert stand-in; refuses everything else."""

    def __init__(self, file: io.BytesIO, path: str) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module in _DCP_MODULES and name in _RECORDS:
            return _RECORD_CLASSES[name]
        if module in _DCP_MODULES and name == "_MEM_FORMAT_ENCODING":
            return _mem_format
        if module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo":
            return _STORAGE_INFO
        if module == "torch" and name == "Size":
            return _size
        if module == "torch" and _DTYPE_NAME.fullmatch(name):
            return _DType(name)
        if module == "torch.serialization" and name == "_get_layout":
            return _layout
        if module == "pathlib" and name in _PATHS:
            return _path
        if module == "collections" and name == "OrderedDict":
            return dict
        raise UnsafePickleError(
            self.path,
            "unsafe-pickle",
            f"refused: the DCP metadata asks for {module}.{name}, which is not one of the classes"
            " torch.distributed.checkpoint writes; keyguard never unpickles it (torch's own reader would run it)",
            global_name=f"{module}.{name}",
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("DCP metadata has no persistent ids")


class Chunk(NamedTuple):
    """One stored piece of a tensor: where its bytes are, and which part of the tensor it holds."""

    file: str  # relative to the checkpoint folder
    offset: int  # bytes into the file
    length: int  # bytes
    offsets: tuple[int, ...]  # where the piece starts in the tensor, per dimension
    sizes: tuple[int, ...]  # the piece's shape
    transforms: tuple[str, ...]  # stream transforms (compression...) applied when it was written


@dataclass(frozen=True)
class Entry:
    """One entry of the checkpoint: a tensor (shape, dtype, chunks) or a non-tensor object (``shape`` is None)."""

    fqn: str  # the flattened name DCP stores it under
    path: tuple[str, ...]  # the original place in the nested state dict (planner data), or (fqn,)
    shape: tuple[int, ...] | None
    dtype: str | None  # torch's name ("float32")
    chunks: tuple[Chunk, ...] = ()


@dataclass(frozen=True)
class DcpMetadata:
    """What a ``.metadata`` file says, as plain data."""

    entries: tuple[Entry, ...]
    version: str | None


def read_metadata(path: str) -> DcpMetadata:
    """Parse a ``.metadata`` file safely.

    Raises:
        UnsafePickleError: the pickle names a global outside DCP's own classes.
        SourceError: the file is not DCP metadata, or contradicts itself.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_METADATA_SIZE + 1)
    except OSError as exc:
        raise SourceError(path, "unreadable", exc.strerror or type(exc).__name__) from None
    if len(data) > MAX_METADATA_SIZE:
        raise SourceError(path, "not-dcp-metadata", f"is larger than {MAX_METADATA_SIZE:,} bytes; not DCP metadata")
    if not data:
        raise SourceError(path, "empty-file", "is empty (0 bytes)")
    try:
        root = _MetadataUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except RecursionError:
        raise SourceError(path, "not-dcp-metadata", "is nested too deeply to be DCP metadata") from None
    except Exception as exc:  # truncated or foreign bytes fail anywhere inside the unpickler
        first = str(exc).split("\n", 1)[0][:160]
        raise SourceError(
            path, "not-dcp-metadata", f"is not readable DCP metadata ({type(exc).__name__}: {first})"
        ) from None
    return _interpret(path, root)


def _interpret(path: str, root: Any) -> DcpMetadata:
    def bad(detail: str) -> SourceError:
        return SourceError(path, "invalid-dcp-metadata", f"DCP metadata {detail}")

    if not (isinstance(root, _Record) and root.kind == "Metadata"):
        raise bad(f"holds a {getattr(root, 'kind', type(root).__name__)}, not a Metadata record")
    described = root.get("state_dict_metadata")
    if not isinstance(described, Mapping):
        raise bad("has no state_dict_metadata mapping")
    planner = root.get("planner_data")
    storage = _storage_index(root.get("storage_data"), bad)
    entries: list[Entry] = []
    for fqn, item in described.items():
        if not isinstance(fqn, str) or not isinstance(item, _Record):
            raise bad(f"describes {fqn!r} with a {type(item).__name__}")
        where = _planner_path(planner, fqn)
        if item.kind == "BytesStorageMetadata":
            entries.append(Entry(fqn, where, None, None))
            continue
        if item.kind != "TensorStorageMetadata":
            raise bad(f"describes {fqn!r} as a {item.kind}")
        shape = item.get("size")
        properties = item.get("properties")
        chunks = item.get("chunks")
        if not isinstance(shape, tuple) or not isinstance(chunks, list):
            raise bad(f"gives tensor {fqn!r} no size or chunk list")
        dtype = _dtype_of(properties)
        if dtype is None:
            raise bad(f"gives tensor {fqn!r} no dtype")
        pieces: list[Chunk] = []
        for chunk in chunks:
            offsets, sizes = _chunk_bounds(chunk)
            if offsets is None or sizes is None or len(offsets) != len(shape) or len(sizes) != len(shape):
                raise bad(f"gives tensor {fqn!r} a chunk without offsets and sizes of its rank")
            if any(o + s > d for o, s, d in zip(offsets, sizes, shape)):
                raise bad(f"gives tensor {fqn!r} {list(shape)} a chunk outside it (at {list(offsets)}, {list(sizes)})")
            stored = storage.get((fqn, offsets))
            if stored is None:
                raise bad(f"does not say where the chunk of {fqn!r} at {list(offsets)} is stored")
            pieces.append(Chunk(stored[0], stored[1], stored[2], offsets, sizes, stored[3]))
        entries.append(Entry(fqn, where, shape, dtype, tuple(pieces)))
    version = root.get("version")
    return DcpMetadata(tuple(entries), version if isinstance(version, str) else None)


def _storage_index(raw: Any, bad: Any) -> dict[tuple[str, tuple[int, ...]], tuple[str, int, int, tuple[str, ...]]]:
    """``storage_data`` (``MetadataIndex`` -> ``_StorageInfo``) as ``(fqn, offsets)`` -> file, offset, length."""
    out: dict[tuple[str, tuple[int, ...]], tuple[str, int, int, tuple[str, ...]]] = {}
    if raw is None:
        return out
    if not isinstance(raw, Mapping):
        raise bad("has storage_data that is not a mapping")
    for index, info in raw.items():
        if not (isinstance(index, _Record) and isinstance(info, _Record)):
            raise bad("has storage_data entries of unexpected types")
        fqn = index.get("fqn")
        offset = index.get("offset")
        file = info.get("relative_path")
        start = info.get("offset")
        length = info.get("length")
        transforms = info.get("transform_descriptors") or ()
        if (
            not isinstance(fqn, str)
            or not isinstance(file, str)
            or type(start) is not int
            or type(length) is not int
            or start < 0
            or length < 0
            or not all(isinstance(t, str) for t in transforms)
        ):
            raise bad("has a storage_data entry without a file, offset and length")
        key = (fqn, offset if isinstance(offset, tuple) else ())
        out[key] = (file, start, length, tuple(transforms))
    return out


def _planner_path(planner: Any, fqn: str) -> tuple[str, ...]:
    if isinstance(planner, Mapping):
        found = planner.get(fqn)
        if isinstance(found, tuple) and found and all(isinstance(p, (str, int)) for p in found):
            return tuple(str(p) for p in found)
    return (fqn,)


def _dtype_of(properties: Any) -> str | None:
    if not isinstance(properties, _Record):
        return None
    dtype = properties.get("dtype")
    if dtype is None and properties.tuple_state:
        dtype = properties.tuple_state[0]  # TensorProperties pickles (dtype, layout, requires_grad, format, pin)
    return str(dtype) if isinstance(dtype, _DType) else None


def _chunk_bounds(chunk: Any) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    if not isinstance(chunk, _Record):
        return None, None
    offsets = chunk.get("offsets")
    sizes = chunk.get("sizes")
    return (
        offsets if isinstance(offsets, tuple) else None,
        sizes if isinstance(sizes, tuple) else None,
    )
