"""Writing ``.safetensors`` files in the safetensors library's canonical layout, without torch.

The header is compact JSON padded with spaces to a multiple of 8 bytes, metadata first, then the tensors in data
order. Data is laid out largest alignment first, then by name, as the library does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence

from keyguard._atomic import atomic_output
from keyguard._dtypes import DTYPE_BITS, nbytes_of


def layout(entries: Mapping[str, tuple[str, Sequence[int]]]) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """Order tensors as the safetensors library does and give each its ``(start, end)`` in the data buffer."""
    order = sorted(entries, key=lambda name: (-DTYPE_BITS.get(entries[name][0], 8), name))
    rows = []
    offset = 0
    for name in order:
        dtype, shape = entries[name]
        numel = 1
        for dim in shape:
            numel *= dim
        size = nbytes_of(numel, dtype)
        if size is None:
            raise ValueError(f"unknown dtype {dtype!r} for {name!r}")
        rows.append((name, dtype, tuple(shape), offset, offset + size))
        offset += size
    return rows


def encode_header(
    rows: Iterable[tuple[str, str, Sequence[int], int, int]], metadata: Mapping[str, str] | None = None
) -> bytes:
    """The 8-byte length plus the padded JSON header for ``rows`` in data order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name, dtype, shape, start, end in rows:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [start, end]}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, tuple[str, Sequence[int], bytes]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write small in-memory tensors (``name -> (dtype, shape, raw little-endian bytes)``) atomically."""
    rows = layout({name: (dtype, shape) for name, (dtype, shape, _) in tensors.items()})
    with atomic_output(path) as f:
        f.write(encode_header(rows, metadata))
        for name, _, _, start, end in rows:
            data = tensors[name][2]
            if len(data) != end - start:
                raise ValueError(f"{name!r}: {len(data)} bytes of data for a tensor of {end - start} bytes")
            f.write(data)
