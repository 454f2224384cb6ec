"""Opening untrusted paths for reading: regular files only, and reads with a bound.

Every reader opens its input through ``open_regular``. A FIFO would block ``open`` (or the first ``read``) until some
writer shows up, and a device such as ``/dev/zero`` never ends; neither is a checkpoint. The path is checked before
it is opened (so opening a device never happens: some devices act when opened) and again on the opened descriptor
(so a path swapped in between is caught). The descriptor is opened non-blocking, then switched back to blocking, so
even a FIFO that appears in the race cannot hang the ``open`` itself.

``read_bounded`` reads a whole small file (JSON indexes, configs, manifests, plans) and refuses one above its limit
by reading at most ``limit + 1`` bytes, whatever the file system says its size is.

The API is two functions and is kept small on purpose: every reader (safetensors headers included) calls them.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from keyguard._exceptions import SourceError

_CHUNK = 1024 * 1024

_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def open_regular(path: str | os.PathLike[str], *, error: type[SourceError] = SourceError) -> BinaryIO:
    """Open ``path`` for reading (binary, buffered) when it is a regular file, or a symlink to one.

    Raises:
        error: (a ``SourceError`` subclass) with problem ``not-found``, ``is-a-directory``, ``not-a-regular-file``,
            ``unreadable`` or ``invalid-path``; nothing is opened.
    """
    name = os.fspath(path)
    if "\x00" in name:
        raise error(name.replace("\x00", "\\0"), "invalid-path", "the path contains a NUL byte")
    try:
        _check_mode(name, os.stat(name).st_mode, error)  # before opening: some devices act when opened
        fd = os.open(name, _FLAGS)
    except SourceError:
        raise
    except OSError as exc:
        raise _os_error(name, exc, error) from None
    try:
        _check_mode(name, os.fstat(fd).st_mode, error)  # the file actually opened, whatever the path is now
        if _FLAGS & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike[str], limit: int, *, error: type[SourceError] = SourceError) -> bytes:
    """The whole content of the regular file ``path``, refused when it holds more than ``limit`` bytes.

    At most ``limit + 1`` bytes are ever read, so a file that grows while it is read, or a file system that reports
    no size, cannot make the read unbounded.

    Raises:
        error: as ``open_regular``, or with problem ``file-too-large``.
    """
    name = os.fspath(path)
    with open_regular(name, error=error) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            data = b"" if size > limit else _read_upto(f, size, limit)
        except OSError as exc:
            raise _os_error(name, exc, error) from None
    if size > limit or len(data) > limit:
        shown = f"{size:,} bytes" if size > limit else f"more than {limit:,} bytes"
        raise error(name, "file-too-large", f"is {shown}, above the {limit:,}-byte limit for this kind of file")
    return data


def _read_upto(f: BinaryIO, size: int, limit: int) -> bytes:
    """The file's bytes, at most ``limit + 1`` of them; one read when it holds the ``size`` it says (no buffer of
    ``limit`` bytes is allocated up front), small reads beyond that (a file that grows, or says 0 like /proc's)."""
    parts = [f.read(size + 1)]
    total = len(parts[0])
    while size < total <= limit:
        chunk = f.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def _check_mode(path: str, mode: int, error: type[SourceError]) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise error(path, "is-a-directory", "is a directory, expected a file")
    raise error(
        path,
        "not-a-regular-file",
        f"is a {_kind(mode)}, not a regular file; keyguard reads only regular files (a pipe or a device could"
        " block or never end)",
        kind=_kind(mode),
    )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _os_error(path: str, exc: OSError, error: type[SourceError]) -> SourceError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return error(path, "not-found", "no such file")
    if exc.errno == errno.EISDIR:
        return error(path, "is-a-directory", "is a directory, expected a file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return error(path, "unreadable", "permission denied")
    return error(path, "unreadable", f"cannot be read ({exc.strerror or type(exc).__name__})")
