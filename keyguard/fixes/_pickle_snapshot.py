"""A PyTorch pickle's tensors for ``keyguard fix``, loaded from a private copy of the file.

``torch.load(mmap=True)`` maps the file: if anyone truncates it while the tensors are copied out, the next page
read kills the process with SIGBUS (no message, nothing cleaned up). So the file is first copied (by the kernel,
in bounded memory) into an unnamed file beside the output that no other process can reach, and loaded from there.
The source is checked around the copy (size, modification time, inode: a file changed meanwhile is refused) and
the loaded tensors against the keys, shapes and dtypes the plan was made from (a file replaced since it was read is
refused).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

from keyguard._dtypes import canonical_dtype
from keyguard._exceptions import SourceError
from keyguard.sources._keyset import TensorInfo
from keyguard.sources._readfile import open_regular

_COPY_CHUNK = 64 * 1024 * 1024


def load_snapshot(
    path: str, *, container: str | None, expected: Mapping[str, TensorInfo], scratch: str
) -> dict[str, Any]:
    """The tensors of the pickle ``path`` named in ``expected``, from a private copy made in the folder ``scratch``.

    Raises:
        SourceError: the file changed while (or since) it was read (``file-changed``), cannot be loaded
            (``corrupted-pickle``), or holds a tensor safetensors cannot store (``not-dense``).
    """
    from keyguard.sources._pickle import _unwrap
    from keyguard.sources._torch import import_torch

    torch = import_torch(f"to read the PyTorch pickle {path}")
    with open_regular(path) as source:
        before = os.fstat(source.fileno())
        fd, copy_path, unlink = _private_file(scratch, os.path.basename(path))
        try:
            copied = _copy(source.fileno(), fd, before.st_size)
            after = os.stat(path)
            if copied != before.st_size or _identity(after) != _identity(before):
                raise SourceError(
                    path,
                    "file-changed",
                    "changed while it was being copied (size, time or inode differ): not written",
                )
            obj = _load(torch, path, copy_path)
        finally:
            os.close(fd)  # torch maps (or has read) the copy: the mapping keeps it alive, nothing else can reach it
            if unlink:
                _remove(copy_path)
    state, _, _ = _unwrap(path, obj, container)
    tensors: dict[str, Any] = {}
    for key, info in expected.items():
        value = state.get(key)
        if (
            not isinstance(value, torch.Tensor)
            or tuple(value.shape) != info.shape
            or canonical_dtype(value.dtype) != info.dtype
        ):
            raise SourceError(
                path,
                "file-changed",
                f"tensor {key!r} is not what was read before (the file changed since its keys were read): not written",
                key=key,
            )
        if value.layout != torch.strided:
            raise SourceError(
                path,
                "not-dense",
                f"tensor {key!r} is a {str(value.layout).removeprefix('torch.')} tensor; safetensors holds dense"
                " tensors only (convert it with .to_dense() where you trust the file)",
                key=key,
            )
        tensors[key] = value
    return tensors


def _private_file(folder: str, name: str) -> tuple[int, str, bool]:
    """A new file in ``folder`` that no other process can open: ``(fd, path torch can open, unlink after load)``."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.open(folder, tmpfile | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError:  # the file system does not support unnamed files
            pass
        else:
            return fd, f"/proc/self/fd/{fd}", False
    from keyguard._atomic import temp_prefix

    fd, copy = tempfile.mkstemp(prefix=temp_prefix(name), suffix=".tmp", dir=folder)
    return fd, copy, True


def _copy(source: int, target: int, size: int) -> int:
    """Copy ``size`` bytes from the start of ``source``; returns how many there were (fewer when it shrank)."""
    done = 0
    use_kernel = hasattr(os, "copy_file_range")
    while done < size:
        want = min(_COPY_CHUNK, size - done)
        n = 0
        if use_kernel:
            try:
                n = os.copy_file_range(source, target, want, done, done)
            except OSError:
                use_kernel = False
        if not use_kernel:
            data = os.pread(source, want, done)
            n = len(data)
            if n:
                os.pwrite(target, data, done)
        if n == 0:
            break
        done += n
    return done


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def _load(torch: Any, path: str, copy: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            is_zip = zipfile.is_zipfile(copy)
            return torch.load(copy, weights_only=True, mmap=is_zip, map_location="cpu")
    except Exception as exc:  # torch raises anything on broken bytes; read_keys already refused unsafe pickles
        first = str(exc).split("\n", 1)[0][:200]
        raise SourceError(
            path,
            "corrupted-pickle",
            f"cannot be loaded for writing (torch.load said: {type(exc).__name__}: {first})",
        ) from None


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
