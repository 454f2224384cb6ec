"""Helpers that write raw ``.safetensors`` bytes for the reader's tests (no safetensors library involved).

A file is an 8-byte little-endian header length, the header (UTF-8 JSON, padded with spaces by real writers) and
the data buffer. ``write_raw`` writes exactly what it is given, so tests can build broken files as easily as good
ones; ``canonical_header`` and ``json_layout_header`` render a tensor table the way the safetensors library does
and in a freer JSON layout.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from keyguard._dtypes import DTYPE_BITS
from keyguard.sources import _safetensors_fast
from keyguard.sources._keyset import TensorInfo

#: One tensor of a table: name, dtype, shape.
Spec = tuple[str, str, Sequence[int]]


def header_bytes(header: Mapping[str, Any] | str | bytes) -> bytes:
    """The header as bytes: a mapping in canonical (compact, raw UTF-8) JSON, text as UTF-8, bytes unchanged."""
    if isinstance(header, bytes):
        return header
    if isinstance(header, str):
        return header.encode("utf-8")
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write_raw(
    path: str | os.PathLike[str],
    header: Mapping[str, Any] | str | bytes,
    data: bytes = b"",
    *,
    header_len: int | None = None,
    pad_to: int = 1,
) -> Path:
    """Write ``length prefix + header + data`` to ``path``; return it.

    Args:
        header: see ``header_bytes``.
        data: the data buffer, written as is.
        header_len: the length written in the prefix (default: the real length, after padding).
        pad_to: pad the header with trailing spaces to a multiple of this, as writers do.
    """
    raw = header_bytes(header)
    raw += b" " * (-len(raw) % pad_to)
    length = len(raw) if header_len is None else header_len
    path = Path(path)
    path.write_bytes(struct.pack("<Q", length) + raw + data)
    return path


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes taken by a tensor of ``dtype`` and ``shape`` (the shape must fill whole bytes)."""
    bits = DTYPE_BITS[dtype] * math.prod(shape)
    assert bits % 8 == 0, (dtype, shape)
    return bits // 8


def layout(specs: Sequence[Spec], order: Sequence[int] | None = None) -> tuple[list[tuple[int, int]], int]:
    """Offsets of each tensor (relative to the data buffer) when their data is stored in ``order``.

    Returns the ``(start, end)`` of every spec, in spec order, and the data buffer's size.
    """
    offsets: list[tuple[int, int]] = [(0, 0)] * len(specs)
    position = 0
    for index in range(len(specs)) if order is None else order:
        _, dtype, shape = specs[index]
        size = nbytes(dtype, shape)
        offsets[index] = (position, position + size)
        position += size
    return offsets, position


def entries(specs: Sequence[Spec], offsets: Sequence[tuple[int, int]]) -> dict[str, dict[str, Any]]:
    """The header's tensor entries, in spec order."""
    return {
        name: {"dtype": dtype, "shape": list(shape), "data_offsets": list(span)}
        for (name, dtype, shape), span in zip(specs, offsets)
    }


def canonical_header(
    specs: Sequence[Spec], offsets: Sequence[tuple[int, int]], metadata: Mapping[str, str] | None = None
) -> str:
    """The header as the safetensors library writes it: compact, metadata first, fields in a fixed order."""
    obj: dict[str, Any] = {}
    if metadata is not None:
        obj["__metadata__"] = dict(metadata)
    obj.update(entries(specs, offsets))
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_layout_header(
    specs: Sequence[Spec],
    offsets: Sequence[tuple[int, int]],
    metadata: Mapping[str, str] | None = None,
    *,
    rng: random.Random | None = None,
    indent: int | None = 2,
    ensure_ascii: bool = True,
    metadata_position: int | None = None,
) -> str:
    """The same table in a freer JSON layout: indented, each entry's fields shuffled, metadata anywhere.

    ``metadata_position`` is the index among the entries where ``__metadata__`` goes (default: last).
    """
    rng = rng or random.Random(0)
    items: list[tuple[str, Any]] = []
    for name, entry in entries(specs, offsets).items():
        fields = list(entry.items())
        rng.shuffle(fields)
        items.append((name, dict(fields)))
    if metadata is not None:
        position = len(items) if metadata_position is None else metadata_position
        items.insert(position, ("__metadata__", dict(metadata)))
    separators = (", ", ": ") if indent is None else (",", ": ")
    return json.dumps(dict(items), indent=indent, ensure_ascii=ensure_ascii, separators=separators)


def expected_infos(
    specs: Sequence[Spec], offsets: Sequence[tuple[int, int]], data_start: int, label: str
) -> dict[str, TensorInfo]:
    """What the reader should return for the table, offsets counted from the file's start."""
    return {
        name: TensorInfo(tuple(shape), dtype, label, (data_start + start, data_start + end))
        for (name, dtype, shape), (start, end) in zip(specs, offsets)
    }


def write_table(
    path: str | os.PathLike[str],
    specs: Sequence[Spec],
    *,
    metadata: Mapping[str, str] | None = None,
    order: Sequence[int] | None = None,
    canonical: bool = True,
    pad_to: int = 8,
    rng: random.Random | None = None,
) -> tuple[Path, dict[str, TensorInfo]]:
    """Write a valid file for the table; return its path and what the reader should find in it."""
    offsets, size = layout(specs, order)
    if canonical:
        header = canonical_header(specs, offsets, metadata)
    else:
        header = json_layout_header(specs, offsets, metadata, rng=rng)
    raw = header_bytes(header)
    raw += b" " * (-len(raw) % pad_to)
    data = bytes(i % 251 for i in range(size))
    path = write_raw(path, raw, data)
    return path, expected_infos(specs, offsets, 8 + len(raw), Path(path).name)


def snapshot(path: str | os.PathLike[str]) -> tuple[bytes, int, int]:
    """The file's bytes, size and modification time, to check that reading left it alone."""
    stat = os.stat(path)
    return Path(path).read_bytes(), stat.st_size, stat.st_mtime_ns


def fast_parse(text: str, base: int = 8) -> Any:
    """The msgspec path on a header text, as ``read_safetensors`` calls it (``None``: it declines). It must leave
    the header as it found it when it declines, empty it when it succeeds, and give the same answer read a piece at
    a time."""
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    before = bytes(raw)
    result = _safetensors_fast.parse_fast(raw, base, "f")
    assert raw == (before if result is None else b"")  # restored when it declines, emptied when it succeeds
    assert pieces_agree(before, base, result)
    return result


def pieces_agree(header: bytes, base: int, whole: Any) -> bool:
    """Read a piece at a time (a large header is never held whole), the fast path gives the same answer, whatever
    the piece size: cut inside the metadata, a key, a number, or between entries."""
    saved = _safetensors_fast.PIECE
    try:
        for piece in (1, 5, 13, 64, 200):
            _safetensors_fast.PIECE = piece
            assert _safetensors_fast.parse_fast(bytearray(header), base, "f") == whole, piece
    finally:
        _safetensors_fast.PIECE = saved
    return True
