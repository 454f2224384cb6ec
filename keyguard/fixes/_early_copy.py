"""Copying a safetensors checkpoint's data section into the output while the diagnosis still runs.

A fix that only renames keys writes the source's data section unchanged; only the header changes. When the new
header is no longer than the old one, the data can sit in the output at the very offset it has in the source, with
the header padded with spaces to its old length (the format allows padding). So ``keyguard fix`` starts copying
the data into the output's temporary file as soon as it has read the keys, before it has imported the diagnosis
engine and chosen a plan, and the disk works while the CPU diagnoses. When the plan turns out to change data or the
header does not fit, the copy is stopped and its temporary file removed, and the write goes the usual way.

Nothing about the guarantees changes: the source is checked before and after, every tensor is checksummed from
the source while it is copied and read back from the output, the header is written last, and the file is fsynced,
verified and renamed into place as any other output (``atomic_output``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Final

from keyguard._atomic import Temp, make_temp
from keyguard._exceptions import WriteError
from keyguard._progress import Progress
from keyguard.fixes._block_copy import ReadBack, Stopped, Stream, copy_range
from keyguard.sources._keyset import KeySet

#: Below this much data the copy is over before the engine is imported: nothing to gain.
MIN_BYTES: Final = 64 * 1024 * 1024


class EarlyCopy:
    """A data section being copied into a temporary file beside the output, at the source's offset.

    ``start`` returns ``None`` where this does not apply; ``take`` hands the temporary file and the checksums over
    once the copy is done (raising what it raised); ``cancel`` stops it and removes the file.
    """

    def __init__(self, path: str, start: int, end: int, bounds: list[tuple[str, int, int]], temp: Temp) -> None:
        self.path = path
        self.data_start = start  # where the data starts, in the source and in the output
        self.end = end
        self.bounds = bounds
        self.checks: dict[str, int] = {}
        self.readback = ReadBack()
        self._temp: Temp | None = temp
        self._stop = threading.Event()
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="keyguard-early-copy", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, keys: KeySet, output: str) -> EarlyCopy | None:
        """Start copying ``keys``' data section into a temporary file for ``output``; ``None`` when ``keys`` is not
        one safetensors file with enough data, the kernel cannot copy between files, or the output's temporary file
        cannot be made (the usual write then reports why)."""
        from keyguard.fixes._file_spans import check_sources, file_spans

        if keys.format != "safetensors" or not hasattr(os, "copy_file_range"):
            return None
        spans = file_spans(keys)
        if len(spans) != 1:
            return None
        ((_, span),) = spans.items()
        if span.end - span.start < MIN_BYTES or keys.location is None:
            return None
        path = keys.location  # a safetensors source is its one file
        try:
            check_sources({path: span})
            temp = make_temp(output, like=path)
        except (OSError, WriteError):
            return None
        bounds = sorted(((name, *(info.offsets or (0, 0))) for name, info in keys.items()), key=lambda b: (b[1], b[2]))
        relative = [(name, start - span.start, end - span.start) for name, start, end in bounds]
        return cls(path, span.start, span.end, relative, temp)

    def matches(self, path: str, base: int, bounds: list[tuple[str, int, int]]) -> bool:
        """True when the write about to happen copies exactly this: the same file, data start and tensor ranges
        (under the old names: renaming keeps the ranges)."""
        own = [(start, end) for _, start, end in self.bounds]
        return path == self.path and base == self.data_start and own == [(start, end) for _, start, end in bounds]

    def take(self, names: Mapping[str, str]) -> tuple[Temp, dict[str, int], ReadBack]:
        """Wait for the copy; hand over the temporary file (``atomic_output`` owns it from here), the source's
        checksums and those read back from the output, keyed by the new names (``names``: old name -> new)."""
        self._thread.join()
        temp = self._temp
        self._temp = None
        if temp is None:
            raise WriteError("the early copy was already taken or cancelled")
        if self._failure:
            temp.discard()
            raise self._failure[0]
        checks = {names[name]: value for name, value in self.checks.items()}
        readback = ReadBack()
        readback.add(
            {names[name]: value for name, value in self.readback.crcs.items()},
            {names[name]: value for name, value in self.readback.positions.items()},
        )
        return temp, checks, readback

    def cancel(self) -> None:
        """Stop the copy (at the next chunk) and remove its temporary file; nothing if it was taken."""
        self._stop.set()
        self._thread.join()
        if self._temp is not None:
            self._temp.discard()
            self._temp = None

    def _run(self) -> None:
        temp = self._temp
        assert temp is not None
        try:
            with os.fdopen(os.dup(temp.fd), "r+b", buffering=0) as f, Stream() as stream:
                f.seek(self.data_start)  # the header's room stays a hole until the header is written
                copy_range(
                    self.path,
                    self.data_start,
                    self.end - self.data_start,
                    self.bounds,
                    f,
                    self.checks,
                    Progress(enabled=False),
                    stream,
                    self.readback,
                    self._stop.is_set,
                )
        except Stopped:
            pass
        except BaseException as exc:  # handed over by take()
            self._failure.append(exc)


def pad_header(header: bytes, size: int) -> bytes | None:
    """``header`` (8-byte length + JSON) padded with spaces to exactly ``size`` bytes, or ``None`` if it is longer."""
    if len(header) > size or size < 8:
        return None
    return (size - 8).to_bytes(8, "little") + header[8:] + b" " * (size - len(header))
