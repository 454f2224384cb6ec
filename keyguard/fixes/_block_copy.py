"""Copying byte ranges between files with a running checksum per tensor, in bounded memory.

Two reusable buffers carry the bytes; checksums run in a helper thread while the next chunk is read. On Linux the
kernel copies between files (``copy_file_range``) while a helper thread reads and checksums the source.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol

from keyguard._exceptions import WriteError
from keyguard._progress import Progress
from keyguard.fixes import _checksum as checksum

CHUNK = 8 * 1024 * 1024  # two reusable buffers of this size: the memory a write needs, whatever the checkpoint
INLINE = 1024 * 1024  # ranges up to this size are checksummed in line (no hand-off to the checksum thread)


class Spans:
    """The checksum of each of consecutive, sorted byte ranges of one stream, fed chunk by chunk in stream order.

    A range inside one chunk is checksummed in one call; one that spans chunks is fed piece by piece.
    """

    def __init__(self, bounds: Sequence[tuple[str, int, int]]) -> None:
        self.bounds = bounds  # (name, start, end), sorted, not overlapping, relative to the stream's start
        self.index = 0
        self.crcs: dict[str, int] = {}
        self.partial: dict[str, checksum.Running] = {}

    def feed(self, view: memoryview, position: int) -> None:
        end = position + len(view)
        while self.index < len(self.bounds):
            name, start, stop = self.bounds[self.index]
            if start >= end:
                break
            a, b = max(start, position), min(stop, end)
            if a == start and b == stop:
                self.crcs[name] = checksum.digest(view[a - position : b - position])
            elif b > a:
                state = self.partial.get(name)
                if state is None:
                    state = self.partial[name] = checksum.running()
                state.update(view[a - position : b - position])
                if b == stop:
                    self.crcs[name] = self.partial.pop(name).value()
            if stop > end:
                break
            self.index += 1

    def result(self) -> dict[str, int]:
        for name, _, _ in self.bounds:
            self.crcs.setdefault(name, checksum.digest(b""))  # 0-byte tensors
        return self.crcs


class Source(Protocol):
    name: Any

    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def read(self, size: int = -1, /) -> bytes: ...
    def readinto(self, buffer: memoryview, /) -> int | None: ...
    def close(self) -> None: ...


class Stream:
    """Reads (and copies) byte ranges through two reusable buffers; checksums run in a helper thread while the
    next chunk is read and this one written (the checksums and file I/O release the GIL), so memory stays at two
    buffers and the checksum costs little wall time. Source files stay open for the whole write."""

    def __init__(self) -> None:
        self.buffers: tuple[bytearray, bytearray] | None = None  # allocated on first use
        self.pool: Any = None
        self.files: dict[str, Source] = {}

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        for f in self.files.values():
            f.close()

    def source(self, path: str) -> Source:
        f = self.files.get(path)
        if f is None:
            f = self.files[path] = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in __exit__
        return f

    def run(
        self,
        src: Source,
        start: int,
        length: int,
        feed: Callable[[memoryview, int], None],
        out: IO[bytes] | None,
        bar: Progress | None,
        *,
        overlap: bool = True,
    ) -> None:
        """Read ``length`` bytes of ``src`` from ``start``; feed each chunk (and its position) to ``feed``, in
        order; write them to ``out`` when given. Large ranges are fed in the helper thread unless ``overlap`` is
        false (the caller is a helper thread itself)."""
        src.seek(start)
        if length <= INLINE:
            data = b""
            while len(data) < length:
                piece = src.read(length - len(data))  # a raw file may return less than asked
                if not piece:
                    break
                data += piece
            if len(data) != length:
                raise WriteError(f"{src.name}: the file ended early (it changed?)")
            feed(memoryview(data), 0)
            if out is not None:
                out.write(data)
            if bar is not None:
                bar.update(length)
            return
        if self.buffers is None:
            self.buffers = (bytearray(CHUNK), bytearray(CHUNK))
        if overlap and self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyguard-crc")
        buffers = self.buffers
        pending = None
        position = 0
        turn = 0
        try:
            while position < length:
                view = memoryview(buffers[turn])[: min(CHUNK, length - position)]
                n = src.readinto(view)
                if not n:
                    raise WriteError(f"{src.name}: the file ended early (it changed?)")
                view = view[:n]
                if pending is not None:
                    pending.result()  # the previous chunk's checksum, in order (and its buffer free again)
                    pending = None
                if overlap:
                    pending = self.pool.submit(feed, view, position)
                else:
                    feed(view, position)
                if out is not None:
                    out.write(view)
                if bar is not None:
                    bar.update(n)
                position += n
                turn ^= 1
        finally:
            if pending is not None:
                pending.result()


def copy_data_section(
    path: str,
    base: int,
    rows: list[tuple[str, str, tuple[int, ...], int, int]],
    f: IO[bytes],
    checks: dict[str, int],
    bar: Progress,
    stream: Stream,
    readback: ReadBack | None = None,
) -> None:
    """Copy the whole data section, checksumming each tensor's bytes."""
    end = rows[-1][4] if rows else 0
    bounds = [(name, start, stop) for name, _, _, start, stop in rows]
    copy_range(path, base, end, bounds, f, checks, bar, stream, readback)


class ReadBack:
    """Checksums of tensors read back from the output right after the kernel wrote them, with where they were read
    (absolute positions in the output): verification uses them for the tensors whose positions the written header
    confirms, and reads the others again."""

    def __init__(self) -> None:
        self.crcs: dict[str, int] = {}
        self.positions: dict[str, tuple[int, int]] = {}

    def add(self, crcs: dict[str, int], positions: dict[str, tuple[int, int]]) -> None:
        self.crcs.update(crcs)
        self.positions.update(positions)


class _Follower:
    """Re-reads, in a helper thread, each range of the output as soon as the kernel copy reports it written, and
    checksums the tensors in it: the verification's reading runs beside the copy (and the disk's writeback) instead
    of after it. The range is mapped (``mmap``: the checksum reads the page cache in place, no copy into a buffer,
    which halves the CPU time of this pass); where mapping fails it is read into one reusable buffer with
    ``os.preadv``. Either leaves the writer's file offset alone. Only the output, a private temporary file, is
    mapped: a source truncated by another process while mapped would kill the process (SIGBUS), so sources are
    read."""

    def __init__(self, fd: int, out_start: int, bounds: Sequence[tuple[str, int, int]]) -> None:
        import queue
        import threading

        self.fd = fd
        self.out_start = out_start
        self.spans = Spans(bounds)
        self.queue: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="keyguard-crc-output", daemon=True)
        self.thread.start()

    def written(self, position: int, n: int) -> None:
        self.queue.put((position, n))

    def finish(self) -> dict[str, int] | None:
        """The output's checksums, or ``None`` when reading back failed (verification then reads it again)."""
        self.queue.put(None)
        self.thread.join()
        return None if self.failure else self.spans.result()

    def _run(self) -> None:
        buffer: memoryview | None = None
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.failure:
                continue  # drain: the copy goes on, verification will read everything again
            position, n = item
            try:
                if not self._mapped(position, n):
                    buffer = buffer or memoryview(bytearray(CHUNK))
                    self._read(buffer, position, n)
            except BaseException as exc:  # any failure only means "read it again later"
                self.failure.append(exc)

    def _mapped(self, position: int, n: int) -> bool:
        """Checksum ``n`` bytes from ``position`` through mappings of at most ``CHUNK`` bytes (mapped pages count
        in the process's resident size while mapped); False, with nothing fed, when the first mapping fails."""
        import mmap

        done = 0
        while done < n:
            start = self.out_start + position + done
            aligned = start - start % mmap.ALLOCATIONGRANULARITY
            size = min(CHUNK, n - done)
            try:
                mapped = mmap.mmap(self.fd, start + size - aligned, prot=mmap.PROT_READ, offset=aligned)
            except (OSError, ValueError, TypeError, AttributeError):  # no mmap here (or not of this file)
                if done:
                    raise
                return False
            with mapped:
                view = memoryview(mapped)
                try:
                    self.spans.feed(view[start - aligned :], position + done)
                finally:
                    view.release()
            done += size
        return True

    def _read(self, buffer: memoryview, position: int, n: int) -> None:
        done = 0
        while done < n:
            got = os.preadv(self.fd, [buffer[: min(CHUNK, n - done)]], self.out_start + position + done)
            if got <= 0:
                raise WriteError("the output ended early")
            self.spans.feed(buffer[:got], position + done)
            done += got


def copy_range(
    path: str,
    base: int,
    length: int,
    bounds: list[tuple[str, int, int]],
    f: IO[bytes],
    checks: dict[str, int],
    bar: Progress,
    stream: Stream,
    readback: ReadBack | None = None,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Append ``length`` bytes of ``path`` from ``base`` to ``f``, with the checksum of each of ``bounds`` (relative
    to ``base``). ``stop()`` is asked between chunks: when true, the copy ends with ``Stopped``.

    Where the kernel copies between files (Linux ``copy_file_range``) it does, while a helper thread reads the
    source and checksums it, and, with ``readback``, another one re-reads each range of the output as soon as it
    is written and checksums that: verification then compares those with the source's instead of reading the whole
    output again after the copy. Elsewhere the bytes go through the two buffers, checksummed on the way (and
    verification re-reads the output)."""
    if length > INLINE and hasattr(os, "copy_file_range"):
        import threading

        spans = Spans(bounds)
        failure: list[BaseException] = []

        def feed(view: memoryview, position: int) -> None:
            _check(stop)
            spans.feed(view, position)

        def checksum() -> None:
            try:
                with open(path, "rb", buffering=0) as src:  # the stream is not used by this thread meanwhile
                    stream.run(src, base, length, feed, None, None, overlap=False)
            except BaseException as exc:  # handed over to the writing thread below
                failure.append(exc)

        f.flush()
        out_start = os.lseek(f.fileno(), 0, os.SEEK_CUR)
        worker = threading.Thread(target=checksum, name="keyguard-crc-source", daemon=True)
        worker.start()
        follower = _Follower(f.fileno(), out_start, bounds) if readback is not None else None
        try:
            copied = _kernel_copy(path, base, f, length, bar, None if follower is None else follower.written, stop)
        finally:
            worker.join()
            crcs = None if follower is None else follower.finish()
        if failure:
            raise failure[0]
        if not copied:  # the kernel declined: copy through the buffers (the source is checksummed already)
            stream.run(stream.source(path), base, length, lambda view, position: _check(stop), f, bar)
        elif readback is not None and crcs is not None:
            readback.add(crcs, {name: (out_start + start, out_start + stop) for name, start, stop in bounds})
        checks.update(spans.result())
        return
    spans = Spans(bounds)
    stream.run(stream.source(path), base, length, spans.feed, f, bar)
    checks.update(spans.result())


class Stopped(Exception):
    """A copy ended early because its ``stop()`` said so."""


def _check(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        raise Stopped


def _kernel_copy(
    path: str,
    start: int,
    f: IO[bytes],
    length: int,
    bar: Progress,
    written: Callable[[int, int], None] | None,
    stop: Callable[[], bool] | None = None,
) -> bool:
    """Append ``length`` bytes of ``path`` from ``start`` to ``f`` with ``copy_file_range``; False, with nothing
    written, when the kernel or the file systems do not offer it. ``written(position, n)`` is told of each range
    copied (positions relative to the copy's start)."""
    import errno

    declined = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM, errno.EBADF}
    out = f.fileno()
    out_start = os.lseek(out, 0, os.SEEK_CUR)
    position = 0
    with open(path, "rb", buffering=0) as src:
        while position < length:
            _check(stop)
            try:
                n = os.copy_file_range(src.fileno(), out, min(8 * CHUNK, length - position), start + position)
            except OSError as exc:
                if position == 0 and exc.errno in declined:
                    return False
                raise
            if n == 0:
                raise WriteError(f"{path}: the file ended early (it changed while being read?)")
            start_writeback(out, out_start + position, n)
            if written is not None:
                written(position, n)
            position += n
            bar.update(n)
    f.seek(0, os.SEEK_END)  # the kernel moved the descriptor's offset: keep the file object in step
    return True


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the range's dirty pages back, do not wait
_sync_file_range: Any = None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a just-written range to disk without waiting for it (Linux), so the fsync at
    the end of a large write finds little left to do: the copy and the disk work at the same time, as in a
    ``cp`` whose ``sync`` began with the first byte. A no-op where ``sync_file_range`` is not available."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = _load_sync_file_range()
    if _sync_file_range is not False:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a failure only loses the head start


def _load_sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function
