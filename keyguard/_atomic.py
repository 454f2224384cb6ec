"""Atomic file output: write beside the target, fsync, then rename into place."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    verify: Callable[[str], None] | None = None,
    like: str | os.PathLike[str] | None = None,
    temp: Temp | None = None,
) -> Iterator[IO[bytes]]:
    """Yield a file beside ``path``; on success it is fsynced and checked by ``verify(temporary_path)`` when given
    (the two at once), and renamed onto ``path``; on any failure (or a failed check) it is removed and ``path`` is
    untouched.

    A replaced file keeps its permissions and its owner; a new one gets the permissions of ``like`` (the file it is
    made from) less the umask, as ``cp`` does, or the usual ones. A file this process could not write itself, or
    whose owner it could not keep, is refused before anything is written (``PermissionError``), as is a missing
    folder (``FileNotFoundError`` naming the folder).

    A process killed at any moment leaves either the old ``path`` (or none) or the complete new one, never a partial
    file at ``path``; at worst a ``.NAME.keyguard-PID-BOOT-*.tmp`` file remains beside it, which
    ``keyguard fix --clean-stale`` recognises and removes once that process is gone.

    ``temp`` is one made beforehand by ``make_temp`` (already holding data written to it); it is used, not made.
    """
    target = os.fspath(path)
    if temp is None:
        temp = make_temp(target, like=like)
    tmp = temp.path
    try:
        f = os.fdopen(temp.fd, mode)
    except BaseException:
        os.close(temp.fd)
        os.unlink(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            _sync_and_verify(f.fileno(), tmp, verify)
        os.replace(tmp, target)
        fsync_dir(temp.folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Temp:
    """A temporary file beside a target, with the permissions (and owner) the target will have; ``atomic_output``
    takes it over (closes it, and removes it unless it renames it onto the target)."""

    fd: int
    path: str
    folder: str

    def discard(self) -> None:
        """Close and remove it (when ``atomic_output`` did not take it over)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def make_temp(path: str | os.PathLike[str], *, like: str | os.PathLike[str] | None = None) -> Temp:
    """A new temporary file beside ``path``, for ``atomic_output``; refused as ``atomic_output`` refuses (a file
    this process could not write itself, an owner it could not keep, a missing folder)."""
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    existing = _replaceable(target, folder)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(os.path.basename(target)), suffix=".tmp", dir=folder)
    try:
        # mkstemp makes 0600: a replaced file keeps its permissions (and owner), a new one gets its source's
        if existing is not None:
            _keep_owner(fd, existing, target)
            os.fchmod(fd, existing.st_mode & 0o7777)
        else:
            os.fchmod(fd, new_mode(like))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return Temp(fd, tmp, folder)


def temp_prefix(name: str) -> str:
    """How every temporary file or folder keyguard makes beside ``name`` starts: ``.NAME.keyguard-PID-HOST-``.

    The process id and the host token (this boot of this machine, in this process-id namespace) let a later run
    prove that a leftover is stale, its writer gone, before removing it; see ``keyguard.fixes.find_stale_temps``.
    """
    return f".{name}.keyguard-{os.getpid()}-{host_token()}-"


@functools.cache
def host_token() -> str:
    """Eight hex digits naming where process ids mean something: this boot of this machine, and this process-id
    namespace (containers sharing a folder have their own); ``UNKNOWN_HOST`` when the system does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return UNKNOWN_HOST
    return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:8]


#: The token of a system that names neither its boot nor its process-id namespace: leftovers are never proven stale.
UNKNOWN_HOST = "00000000"


def new_mode(like: str | os.PathLike[str] | None) -> int:
    """Permissions for a new file: those of ``like`` less the umask (as ``cp`` does), else the usual ones."""
    umask = _umask()
    if like is not None:
        with contextlib.suppress(OSError):
            return os.stat(like).st_mode & 0o777 & ~umask
    return 0o666 & ~umask


def _replaceable(target: str, folder: str) -> os.stat_result | None:
    """The existing target's status, after checking that this process may replace it; ``None`` when it is new."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "no such folder", folder)
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(existing.st_mode) and not os.access(target, os.W_OK):
        # the folder may let us rename over it, but the file itself says no: replacing it would go around that
        raise PermissionError(errno.EACCES, "permission denied: this file is not writable by you; not replaced", target)
    return existing


def _keep_owner(fd: int, existing: os.stat_result, target: str) -> None:
    """Give the new file the old one's owner and group; refuse when that is not possible (it would change them)."""
    if not hasattr(os, "fchown") or (existing.st_uid, existing.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.fchown(fd, existing.st_uid, existing.st_gid)
    except PermissionError:
        raise PermissionError(
            errno.EPERM,
            f"permission denied: replacing this file would change its owner or group"
            f" (uid {existing.st_uid}, gid {existing.st_gid}); not replaced",
            target,
        ) from None


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


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


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
