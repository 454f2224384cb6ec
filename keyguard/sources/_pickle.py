"""PyTorch pickle checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``), read with ``weights_only=True`` only.

There is no unsafe fallback: a pickle that needs anything beyond tensors and plain containers is refused, and the
refusal says which global it asked for. Zip-format files are memory-mapped, so no tensor data is read; legacy
(pre-1.6) files are loaded with ``torch.serialization.skip_data``: their storages are allocated (address space
only, never touched) but not read, which keeps tensors that share a storage sharing it, so tied weights are seen.
Where that is unavailable or the allocation fails, they are loaded onto the meta device, where sharing is lost.
"""

from __future__ import annotations

import os
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

from keyguard._dtypes import canonical_dtype
from keyguard._exceptions import SourceError, UnsafePickleError
from keyguard.sources._keyset import KeySet, TensorInfo
from keyguard.sources._pickle_zip import check_zip
from keyguard.sources._readfile import open_regular
from keyguard.sources._torch import import_torch

#: Containers that commonly wrap a state dict, in the order they are preferred.
CONTAINER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "state_dict_ema",
    "model_ema",
    "ema",
    "ema_state_dict",
)
_LIGHTNING_MARKERS = ("pytorch-lightning_version", "lightning_version")
_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global:?)\s*(?:GLOBAL\s*)?([\w.]+)", re.IGNORECASE)
_OPERAND = re.compile(r"Unsupported operand (\d+)")
_CODE_MARKERS = (
    "unrecognized function",
    "Can only create new object",
    "Can only build",
    "must be imported to load",
)
# Pickle instructions that import or call (the ones weights_only implements, GLOBAL, REDUCE, NEWOBJ and BUILD, check
# what they are given and fail with a message naming it)
_CODE_OPCODES = frozenset(
    op.code
    for op in pickletools.opcodes
    if op.name
    in {"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE", "GLOBAL", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4", "BUILD"}
)
_EXAMPLES = 3
_EXTRA_STATE = "_extra_state"  # torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX
_MAX_DEPTH = 3  # levels of containers unwrapped automatically
_MAX_SCANNED_PICKLES = 8
# what torch.save itself writes as globals: tensors, storages, parameters, ordered dicts, bytes, numpy scalars
_TORCH_MODULES = ("torch.", "collections.", "_codecs.", "numpy.")


def read_pickle(path: str | os.PathLike[str], *, name: str | None = None, container: str | None = None) -> KeySet:
    """Read the tensors of a PyTorch pickle checkpoint safely and unwrap the usual containers.

    Args:
        path: the file.
        name: how ``TensorInfo.file`` names it (defaults to the file name).
        container: the key (``/``-separated for nested ones) holding the state dict, when the automatic choice is
            not the one wanted, e.g. ``"model_ema"``.

    Raises:
        UnsafePickleError: the pickle asks for code (a global ``weights_only`` does not allow).
        SourceError: missing, a directory, corrupted, or holding no tensors.
    """
    path = os.fspath(path)
    with open_regular(path) as f:  # torch.load opens the path itself: check that it is a regular file first
        size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise SourceError(path, "empty-file", "is empty (0 bytes)")
    if zipfile.is_zipfile(path):
        check_zip(path, size)  # before torch is even imported: declared sizes and ratios no checkpoint has
    torch = import_torch(f"to read the PyTorch pickle {path}")
    obj = _load(torch, path)
    state, unwrapped, notes = _unwrap(path, obj, container)
    tensors: dict[str, TensorInfo] = {}
    skipped: list[str] = []
    not_dense: list[str] = []
    by_storage: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], list[str]] = {}
    label = name if name is not None else os.path.basename(path)
    for key, value in state.items():
        if isinstance(key, str) and _is_extra_state(key) and not isinstance(value, torch.Tensor):
            tensors[key] = TensorInfo(None, None, label)  # a module's get_extra_state(): a key a strict load needs
            continue
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            skipped.append(str(key))
            continue
        if not key.isascii() and not _is_unicode(key):
            raise SourceError(path, "lone-surrogate", f"holds the key {key!r}, which is not valid Unicode")
        tensors[key] = TensorInfo(tuple(value.shape), canonical_dtype(value.dtype), label)
        if value.layout != torch.strided:  # sparse tensors have no single storage (nor a place in safetensors)
            not_dense.append(f"{key!r} ({str(value.layout).removeprefix('torch.')})")
            continue
        _check_storage(path, key, value, size)
        by_storage.setdefault(_storage_identity(value), []).append(key)
    if skipped:
        shown = ", ".join(repr(k) for k in skipped[:_EXAMPLES])
        more = f" and {len(skipped) - _EXAMPLES} more" if len(skipped) > _EXAMPLES else ""
        notes.append(f"ignored {len(skipped)} non-tensor entr{'y' if len(skipped) == 1 else 'ies'}: {shown}{more}")
    if not_dense:
        more = f" and {len(not_dense) - _EXAMPLES} more" if len(not_dense) > _EXAMPLES else ""
        notes.append(
            f"{len(not_dense)} tensor(s) are not dense: {', '.join(not_dense[:_EXAMPLES])}{more}"
            " (keyguard fix writes safetensors, which hold dense tensors only)"
        )
    if all(info.shape is None for info in tensors.values()):
        raise SourceError(path, "no-tensors", "holds no tensors" + (f" under {unwrapped!r}" if unwrapped else ""))
    tied = tuple(tuple(keys) for keys in by_storage.values() if len(keys) > 1)
    return KeySet(
        tensors=tensors,
        format="torch-pickle",
        location=path,
        unwrapped=unwrapped,
        tied=tied,
        files=(label,),
        notes=tuple(notes),
    )


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_storage(path: str, key: str, tensor: Any, size: int) -> None:
    """A tensor's storage is in the file: one declared larger than the whole file is crafted or truncated.

    (Legacy files are read without their data, so torch itself never notices; ``fix`` would fail to load it.)
    """
    nbytes = tensor.untyped_storage().nbytes()
    if nbytes > size:
        raise SourceError(
            path,
            "storage-too-large",
            f"tensor {key!r} lives in a storage of {nbytes:,} bytes, more than the whole file ({size:,} bytes):"
            " the file is truncated or crafted",
            key=key,
            storage_bytes=nbytes,
            size=size,
        )


def _load(torch: Any, path: str) -> Any:
    import pickle

    is_zip = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write; the outcome (tensors or an error) says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if is_zip:
                return torch.load(path, weights_only=True, mmap=True, map_location="cpu")
            return _load_legacy(torch, path)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = _GLOBAL.search(text)
        name = found.group(1) if found else None
        if not _asks_for_code(text):
            # weights_only stopped at an instruction it does not implement (FRAME of protocol 4, the text
            # instructions of protocol 0) before it met any import: look for imports without executing anything
            foreign = _foreign_globals(path, is_zip)
            if not foreign:
                raise SourceError(
                    path, "corrupted-pickle", f"is not a readable PyTorch checkpoint (torch.load said: {_inner(text)})"
                ) from None
            name = foreign[0]
        wanted = f" asks for {name!r}" if name else " needs more than tensors and plain containers"
        raise UnsafePickleError(
            path,
            "unsafe-pickle",
            f"refused: the pickle{wanted}, which torch.load(weights_only=True) does not allow."
            " keyguard never loads pickles unsafely; if you trust this file, convert it to safetensors"
            " where you trust it",
            global_name=name,
        ) from None
    except Exception as exc:  # truncated or garbage files fail anywhere in torch.load, with any exception type
        first = str(exc).split("\n", 1)[0][:200]
        what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise SourceError(
            path, "corrupted-pickle", f"is not a readable PyTorch checkpoint (torch.load said: {what})"
        ) from None


def _load_legacy(torch: Any, path: str) -> Any:
    # On the meta device torch gives every tensor its own storage, even tensors saved over one storage (the
    # tied weights of `model.state_dict()`); skipping the data keeps real, shared (and untouched) storages.
    skip_data = getattr(torch.serialization, "skip_data", None)
    if skip_data is not None:
        try:
            with skip_data():
                return torch.load(path, weights_only=True, map_location="cpu")
        except RuntimeError as exc:
            if "alloc" not in str(exc):
                raise
    return torch.load(path, weights_only=True, map_location="meta")


def _asks_for_code(message: str) -> bool:
    """Whether a ``weights_only`` refusal is about code (globals, calls, objects) rather than broken bytes."""
    if _GLOBAL.search(message) or any(marker in message for marker in _CODE_MARKERS):
        return True
    operand = _OPERAND.search(message)
    # an instruction the weights-only unpickler does not implement is a request for code when it imports or calls
    # (INST, OBJ, EXT1...); any other byte (GET, or no pickle instruction at all) means broken or foreign bytes
    return operand is not None and chr(int(operand.group(1))) in _CODE_OPCODES


def _foreign_globals(path: str, is_zip: bool) -> list[str]:
    """Globals outside torch and the containers it saves, named by the file's pickles (parsed, never run)."""
    found: list[str] = []
    try:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if n.endswith(".pkl")]
                for member in members[:_MAX_SCANNED_PICKLES]:
                    with archive.open(member) as stream:
                        found += _scan_pickles(stream)
        else:
            with open(path, "rb") as stream:
                found += _scan_pickles(stream)
    except (OSError, zipfile.BadZipFile, RuntimeError):
        pass
    return [name for name in dict.fromkeys(found) if not name.startswith(_TORCH_MODULES)]


def _scan_pickles(stream: Any) -> list[str]:
    """The globals of the pickles at the start of ``stream`` (a legacy checkpoint is five in a row)."""
    names: list[str] = []
    for _ in range(_MAX_SCANNED_PICKLES):
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in {"GLOBAL", "INST"} and isinstance(arg, str):
                    names.append(arg.replace(" ", ".", 1))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # the data after the pickles, or a broken one: nothing more to read
            break
    return names


def _inner(message: str) -> str:
    """The unpickler's own sentence from torch's long ``weights_only`` message."""
    paragraphs = [p.strip() for p in message.split("\n\n") if p.strip()]
    useful = [p for p in paragraphs if not p.startswith(("Weights only load failed", "Check the documentation"))]
    return (useful[-1] if useful else message.strip() or "UnpicklingError").split("\n", 1)[0][:200]


def _is_extra_state(key: str) -> bool:
    return key == _EXTRA_STATE or key.endswith("." + _EXTRA_STATE)


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and any(_looks_like_tensor(v) for v in value.values())


def _holds_tensors(value: Any, levels: int) -> bool:
    """A state dict, or a usual container holding one within ``levels`` levels."""
    if _is_state_dict(value):
        return True
    return (
        levels > 1
        and isinstance(value, Mapping)
        and any(k in value and _holds_tensors(value[k], levels - 1) for k in CONTAINER_KEYS)
    )


def _looks_like_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "untyped_storage")


def _unwrap(path: str, obj: Any, container: str | None) -> tuple[Mapping[Any, Any], str | None, list[str]]:
    notes: list[str] = []
    if not isinstance(obj, Mapping):
        raise SourceError(path, "not-a-state-dict", f"holds a {type(obj).__name__}, not a mapping of tensors")
    if container is not None:
        current: Any = obj
        for part in container.split("/"):
            if not isinstance(current, Mapping) or part not in current:
                raise SourceError(path, "no-such-container", f"has no container {container!r}")
            current = current[part]
        if not _is_state_dict(current):
            raise SourceError(path, "no-such-container", f"{container!r} does not hold tensors")
        return current, container, notes
    trail: list[str] = []
    current = obj
    for depth in range(_MAX_DEPTH):  # e.g. {"model": {"module": {...}}}
        direct = sum(1 for v in current.values() if _looks_like_tensor(v))
        candidates = [k for k in CONTAINER_KEYS if k in current and _holds_tensors(current[k], _MAX_DEPTH - depth)]
        if not candidates or direct > 0:
            break
        if any(marker in current for marker in _LIGHTNING_MARKERS) and not trail:
            notes.append("PyTorch Lightning checkpoint")
        others = candidates[1:]
        if others:
            listed = ", ".join(repr("/".join([*trail, k])) for k in others)
            notes.append(f"also holds {listed}; choose one with --container")
        trail.append(candidates[0])
        current = current[candidates[0]]
    if not trail and not _is_state_dict(current):
        keys = ", ".join(repr(k) for k in list(current)[:6])
        raise SourceError(
            path,
            "no-state-dict",
            f"holds no tensors at its top level and none of the usual containers (top-level keys: {keys});"
            " name the container with --container",
        )
    return current, "/".join(trail) or None, notes


def _storage_identity(tensor: Any) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    storage = tensor.untyped_storage()
    ptr = storage.data_ptr() or storage._cdata
    return ptr, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride())
