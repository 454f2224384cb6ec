"""Where each safetensors source file's data lies, as ``read_keys`` saw it, and the check that it has not changed.

Kept apart from the writer so that ``keyguard fix`` can start its early copy without importing the plan machinery.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from keyguard._exceptions import WriteError
from keyguard.sources._keyset import KeySet
from keyguard.sources._readfile import open_regular


@dataclass
class FileSpan:
    """One safetensors source file as ``read_keys`` saw it: where its data starts, its size, its tensor count.

    The safetensors reader checked that the tensors cover the data section exactly, so the first tensor's start is
    where the data begins (8 + the header length) and the last one's end is the file's size.
    """

    start: int
    end: int
    count: int


def file_spans(keys: KeySet) -> dict[str | None, FileSpan]:
    spans: dict[str | None, FileSpan] = {}
    if keys.format not in ("safetensors", "safetensors-sharded"):
        return spans
    for info in keys.values():
        start, end = info.offsets or (0, 0)
        span = spans.get(info.file)
        if span is None:
            spans[info.file] = FileSpan(start, end, 1)
        else:
            span.start, span.end, span.count = min(span.start, start), max(span.end, end), span.count + 1
    return spans


def check_sources(sources: Mapping[str, FileSpan]) -> None:
    """Refuse to go on when a source file's size or header length is not what was read (it changed meanwhile)."""
    for path, span in sources.items():
        with open_regular(path) as f:  # a source swapped for a FIFO since it was read would hang a plain open
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
        data_start = 8 + int.from_bytes(head, "little") if len(head) == 8 else -1
        if size != span.end or data_start != span.start:
            raise WriteError(
                f"{path}: the source changed since its keys were read (now {size:,} bytes with data from byte"
                f" {data_start:,}; read as {span.end:,} bytes with data from byte {span.start:,})"
            )
