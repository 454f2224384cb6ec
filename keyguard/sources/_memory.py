"""In-memory inputs: a state dict, a mapping of key to shape (and dtype), or a plain iterable of keys."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from keyguard._dtypes import canonical_dtype
from keyguard._exceptions import SourceError
from keyguard.sources._keyset import KeySet, SourceFormat, TensorInfo
from keyguard.sources._torch import is_torch_tensor


def read_mapping(mapping: Mapping[Any, Any], *, location: str | None = None) -> KeySet:
    """Read a state dict (key -> tensor), key -> shape, key -> (shape, dtype), or key -> ``TensorInfo``."""
    if set(map(type, mapping.values())) == {TensorInfo} and set(map(type, mapping)) == {str}:
        return KeySet(tensors=dict(mapping), format="shapes", location=location or "<in-memory mapping>")
    tensors: dict[str, TensorInfo] = {}
    kinds: set[SourceFormat] = set()
    by_identity: dict[object, list[str]] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise SourceError(location, "invalid-key", f"keys must be strings, found {type(key).__name__} {key!r}")
        info, kind = _info(key, value, location)
        tensors[key] = info
        kinds.add(kind)
        if kind == "state-dict":
            by_identity.setdefault(_identity(value), []).append(key)
    fmt: SourceFormat = "state-dict" if kinds == {"state-dict"} else ("keys" if kinds == {"keys"} else "shapes")
    return KeySet(
        tensors=tensors,
        format=fmt,
        location=location or "<in-memory mapping>",
        tied=tuple(tuple(keys) for keys in by_identity.values() if len(keys) > 1),
    )


def read_iterable(keys: Iterable[Any], *, location: str | None = None) -> KeySet:
    """Read a plain iterable of keys (shapes and dtypes unknown)."""
    tensors: dict[str, TensorInfo] = {}
    for key in keys:
        if not isinstance(key, str):
            raise SourceError(location, "invalid-key", f"keys must be strings, found {type(key).__name__} {key!r}")
        tensors[key] = TensorInfo(None, None)
    return KeySet(tensors=tensors, format="keys", location=location or "<in-memory keys>")


def _info(key: str, value: Any, location: str | None) -> tuple[TensorInfo, SourceFormat]:
    if isinstance(value, TensorInfo):
        return value, "shapes"
    if value is None:
        return TensorInfo(None, None), "keys"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # torch tensor, numpy array, ...
        return TensorInfo(tuple(int(d) for d in value.shape), canonical_dtype(value.dtype)), "state-dict"
    if isinstance(value, Mapping) and "shape" in value:
        return TensorInfo(_shape(key, value["shape"], location), _dtype(value.get("dtype"))), "shapes"
    if isinstance(value, (tuple, list)):
        if len(value) == 2 and isinstance(value[0], (tuple, list)) and not isinstance(value[1], int):
            return TensorInfo(_shape(key, value[0], location), _dtype(value[1])), "shapes"
        return TensorInfo(_shape(key, value, location), None), "shapes"
    raise SourceError(
        location,
        "invalid-value",
        f"value for {key!r} is a {type(value).__name__}; expected a tensor, a shape, (shape, dtype) or None",
    )


def _identity(value: Any) -> object:
    """What makes two values one tensor: ``model.state_dict()`` detaches every entry, so tied weights arrive as
    distinct tensor objects over one storage; compare torch tensors by storage and view, anything else by object."""
    if is_torch_tensor(value):
        from keyguard.sources._pickle import _storage_identity

        return _storage_identity(value)
    return id(value)


def _shape(key: str, value: Any, location: str | None) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise SourceError(location, "invalid-shape", f"shape of {key!r} is {value!r}; expected non-negative ints")
    dims = tuple(value)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise SourceError(location, "invalid-shape", f"shape of {key!r} is {value!r}; expected non-negative ints")
    return dims


def _dtype(value: Any) -> str | None:
    return None if value is None else canonical_dtype(value)
