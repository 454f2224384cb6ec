"""Atomic file output: write beside the target, fsync, then rename into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], mode: str = "wb", *, verify: Callable[[str], None] | None = None
) -> Iterator[IO[bytes]]:
    """Yield a file beside ``path``; on success it is fsynced and checked by ``verify(temporary_path)`` when given
    (the two at once), and renamed onto ``path``; on any failure (or a failed check) it is removed and ``path`` is
    untouched.

    A process killed at any moment leaves either the old ``path`` (or none) or the complete new one, never a partial
    file at ``path``; at worst a ``.keyguard-*.tmp`` file remains beside it.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.keyguard-", suffix=".tmp", dir=folder)
    try:
        f = os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with f:
            # mkstemp makes 0600: a replaced file keeps its permissions, a new one gets the usual ones
            os.fchmod(f.fileno(), _mode_of(target))
            yield f
            f.flush()
            _sync_and_verify(f.fileno(), tmp, verify)
        os.replace(tmp, target)
        fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _sync_and_verify(fd: int, tmp: str, verify: Callable[[str], None] | None) -> None:
    """fsync the temporary file and run the check; both must succeed before the rename.

    The check reads back what was written while the kernel puts it on disk (an fsync waits for the device, the
    check mostly for the CPU), so a large verified write pays for the slower of the two, not for both.
    """
    if verify is None:
        os.fsync(fd)
        return
    import threading

    failures: list[BaseException] = []

    def sync() -> None:
        try:
            os.fsync(fd)
        except BaseException as exc:  # re-raised below, in the caller's thread
            failures.append(exc)

    syncer = threading.Thread(target=sync, name="keyguard-fsync", daemon=True)
    syncer.start()
    try:
        verify(tmp)
    finally:
        syncer.join()
    if failures:
        raise failures[0]


def _mode_of(target: str) -> int:
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        return _default_mode()


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as f:
        f.write(text.encode("utf-8"))


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):  # not every platform lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
