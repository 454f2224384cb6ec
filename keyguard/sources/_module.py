"""Live ``torch.nn.Module`` objects, including modules on the meta device."""

from __future__ import annotations

from typing import Any

from keyguard._dtypes import canonical_dtype
from keyguard.sources._keyset import KeySet, SourceFormat, TensorInfo


def read_module(module: Any, *, format: SourceFormat = "module", location: str | None = None) -> KeySet:
    """Keys a module's ``load_state_dict(strict=True)`` expects, with shapes, dtypes, ties and non-persistent buffers.

    The keys come from ``module.state_dict(keep_vars=True)``, so state-dict hooks are honoured and no tensor data
    is copied. Parameters shared by several names (tied embeddings) are reported in ``tied``. Entries that are not
    tensors (the ``_extra_state`` of modules overriding ``get_extra_state``) are still keys a strict load
    requires; they are kept with unknown shape and dtype.
    """
    state = module.state_dict(keep_vars=True)
    tensors: dict[str, TensorInfo] = {}
    by_identity: dict[int, list[str]] = {}
    skipped: list[str] = []
    for key, value in state.items():
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            skipped.append(key)  # e.g. `_extra_state` objects
            tensors[key] = TensorInfo(None, None)
            continue
        tensors[key] = TensorInfo(tuple(value.shape), canonical_dtype(value.dtype))
        by_identity.setdefault(id(value), []).append(key)
    non_persistent = frozenset(
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules(remove_duplicate=False)
        for name in getattr(sub, "_non_persistent_buffers_set", ())
    )
    notes = (
        [
            f"{len(skipped)} state entr{'y is' if len(skipped) == 1 else 'ies are'} not a tensor (shape unknown):"
            f" {', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}"
        ]
        if skipped
        else []
    )
    return KeySet(
        tensors=tensors,
        format=format,
        location=location if location is not None else f"<{type(module).__name__} module>",
        tied=tuple(tuple(keys) for keys in by_identity.values() if len(keys) > 1),
        non_persistent=non_persistent,
        architecture=type(module).__name__,
        notes=tuple(notes),
    )
