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
    """Yield a file beside ``path``; on success it is fsynced, checked by ``verify(temporary_path)`` when given,
    and renamed onto ``path``; on any failure (or a failed check) it is removed and ``path`` is untouched.

    A process killed at any moment leaves either the old ``path`` (or none) or the complete new one, never a partial
    file at ``path``; at worst a ``.keyguard-*.tmp`` file remains beside it.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.keyguard-", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, _default_mode())  # mkstemp makes 0600; a written checkpoint gets the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, target)
        fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
