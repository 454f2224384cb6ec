"""Evidence from data (``--match-values``): fingerprints of tensor bytes, for when both sides hold real weights.

Header-only stays the default. With a reference that holds the original weights (the checkpoint a converted one was
made from, a model loaded with them), equal bytes prove a correspondence that shapes and names can only suggest:
keys left ambiguous are decided where exactly one candidate holds the same bytes, and a match chosen by names is
made safe when every one of its tensors is byte-for-byte the reference's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from keyguard.sources._keyset import KeySet

_RAW_FORMATS = ("safetensors", "safetensors-sharded", "peft-adapter")


class Fingerprints:
    """Digests of tensor bytes by key, computed on first use: raw byte ranges for safetensors files (no torch),
    the tensors themselves for in-memory state dicts, ``torch.load(weights_only=True)`` for pickles."""

    def __init__(self, source: Any, keys: KeySet, *, container: str | None = None) -> None:
        self.source = source
        self.keys = keys
        self.container = container
        self.cache: dict[str, bytes | None] = {}
        self.tensors: Mapping[str, Any] | None = None

    def __call__(self, key: str) -> bytes | None:
        if key not in self.cache:
            self.cache[key] = self._digest(key)
        return self.cache[key]

    def _digest(self, key: str) -> bytes | None:
        info = self.keys.get(key)
        if info is None:
            return None
        if not isinstance(self.source, Mapping) and self.keys.format in _RAW_FORMATS and info.offsets is not None:
            path = self._file(info.file)
            start, end = info.offsets
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(end - start)
            return hashlib.blake2b(data, digest_size=16).digest() if len(data) == end - start else None
        tensor = self._tensors().get(key)
        return None if tensor is None else _tensor_digest(tensor)

    def _file(self, name: str | None) -> str:
        location = self.keys.location or ""
        if name is None or (os.path.isfile(location) and os.path.basename(location) == name):
            return location
        folder = location if os.path.isdir(location) else os.path.dirname(location)
        return os.path.join(folder, name)

    def _tensors(self) -> Mapping[str, Any]:
        if self.tensors is None:
            if isinstance(self.source, Mapping):
                self.tensors = self.source
            elif isinstance(self.source, (str, os.PathLike)):
                from keyguard.fixes._load import load_tensors

                self.tensors = load_tensors(self.source, container=self.container)
            else:
                self.tensors = {}  # a module or a key list: shapes, no data worth comparing
        return self.tensors


def _tensor_digest(tensor: Any) -> bytes | None:
    """Digest of a tensor's bytes (torch or numpy), or ``None`` for anything else (shapes, meta tensors)."""
    if hasattr(tensor, "is_meta") and hasattr(tensor, "detach"):
        if tensor.is_meta:
            return None
        import torch

        flat = tensor.detach().cpu().contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return hashlib.blake2b(data, digest_size=16).digest()
    if hasattr(tensor, "tobytes") and hasattr(tensor, "dtype"):
        return hashlib.blake2b(tensor.tobytes(), digest_size=16).digest()
    return None
