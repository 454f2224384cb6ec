"""Verifying a written file: re-read it, compare its header with the plan and every tensor's checksum with the
source's."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from keyguard._exceptions import SourceError, WriteError
from keyguard._progress import Progress
from keyguard.fixes._block_copy import ReadBack, Spans, Stream


def verify_written(
    path: str,
    rows: list[tuple[str, str, tuple[int, ...], int, int]],
    checks: dict[str, int],
    meta: Mapping[str, str],
    stream: Stream | None = None,
    bar: Progress | None = None,
    readback: ReadBack | None = None,
) -> None:
    """Re-read the written file: its header must be exactly the planned one, every tensor's bytes the source's.

    ``readback`` holds checksums of the output read back while it was written (the kernel copy's follower): when
    they cover every tensor at the positions the written header gives, the data is not read a third time."""
    from keyguard.sources._safetensors import read_safetensors

    try:
        written = read_safetensors(path)
    except SourceError as exc:
        raise WriteError(f"verification failed: the written file is not valid safetensors ({exc.detail})") from None
    planned = {name: (dtype, tuple(shape)) for name, dtype, shape, _, _ in rows}
    got = {k: (v.dtype, v.shape) for k, v in written.items()}
    if got != planned:
        missing = sorted(planned.keys() - got.keys())[:3]
        raise WriteError(f"verification failed: written header differs from the plan (e.g. {missing or 'shapes'})")
    if dict(written.metadata) != dict(meta):
        raise WriteError("verification failed: written metadata differs")
    # the reader checked that the tensors cover the data section exactly: read it in one sequential pass
    bounds = sorted(((name, *(info.offsets or (0, 0))) for name, info in written.items()), key=lambda b: (b[1], b[2]))
    if not bounds:
        return
    first, last = bounds[0][1], bounds[-1][2]
    if readback is not None and all(readback.positions.get(name) == (start, end) for name, start, end in bounds):
        if bar is not None:
            bar.phase("verifying")
            bar.update(last - first)
            bar.phase("writing")
        _compare(bounds, readback.crcs, checks)
        return
    spans = Spans([(name, start - first, end - first) for name, start, end in bounds])
    with Stream() if stream is None else contextlib.nullcontext(stream) as reader, open(path, "rb", buffering=0) as f:
        try:
            if bar is not None:
                bar.phase("verifying")
            reader.run(f, first, last - first, spans.feed, None, bar)
            if bar is not None:
                bar.phase("writing")  # the next shard, if any
        except WriteError:
            raise WriteError("verification failed: the written file is truncated") from None
    _compare(bounds, spans.result(), checks)


def _compare(bounds: list[tuple[str, int, int]], crcs: Mapping[str, int], checks: Mapping[str, int]) -> None:
    for name, _, _ in bounds:
        if crcs[name] != checks.get(name):
            raise WriteError(f"verification failed: the bytes of {name!r} differ from the source")
