"""Leftovers of killed ``keyguard fix`` runs: found, named, and removed only when provably stale.

A run killed mid-write leaves its temporary file (``.NAME.keyguard-PID-HOST-XXXXXXXX.tmp``) or staging folder
(``.NAME.keyguard-PID-HOST-XXXXXXXX``, up to a whole checkpoint) beside its target. The name says which process made
it and where process ids mean what they say (``HOST``: this boot of this machine, in this process-id namespace).
A leftover is removed only when all of these hold: its name is keyguard's, it is a plain file or folder (not a
symlink), it belongs to the current user, it was made under this host token, and its process is gone. Anything else
that looks like one is listed with the reason it stays.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from dataclasses import dataclass
from typing import Final, Literal

from keyguard._atomic import UNKNOWN_HOST, host_token

_OURS: Final = re.compile(
    r"\.(?P<target>.+)\.keyguard-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-(?:old-)?[A-Za-z0-9_]+(?:\.tmp)?"
)
# what keyguard 0.1 named its temporaries: no process id, so never provably stale
_OLD: Final = re.compile(r"\.(?P<target>.+)\.keyguard-(?:old-)?[a-z0-9_]{8}(?:\.tmp)?")


@dataclass(frozen=True)
class StaleTemp:
    """A leftover of a ``keyguard fix`` run, and whether it may be removed.

    Attributes:
        path: the file or folder.
        target: the output it was being written as (its name without keyguard's decoration).
        kind: ``"file"`` or ``"folder"``.
        size: bytes it holds (a folder: its files).
        pid: the process that made it, when its name says.
        removable: provably stale (see the module's docstring).
        reason: why it may be removed, or why it stays.
    """

    path: str
    target: str
    kind: Literal["file", "folder"]
    size: int
    pid: int | None
    removable: bool
    reason: str


def find_stale_temps(folder: str | os.PathLike[str]) -> list[StaleTemp]:
    """Every leftover of a ``keyguard fix`` run in ``folder`` (not below it), removable or not, by name."""
    folder = os.fspath(folder)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = []
    for name in names:
        if ".keyguard-" not in name:
            continue
        ours, old = _OURS.fullmatch(name), _OLD.fullmatch(name)
        if ours is None and old is None:
            continue
        path = os.path.join(folder, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue  # gone meanwhile
        match = ours if ours is not None else old
        assert match is not None
        kind: Literal["file", "folder"] = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        pid = int(ours.group("pid")) if ours is not None else None
        reason = _keeps(info, ours)
        found.append(
            StaleTemp(
                path=path,
                target=match.group("target"),
                kind=kind,
                size=_size(path, info),
                pid=pid,
                removable=reason is None,
                reason=reason or f"left by a keyguard run (process {pid}) that is gone",
            )
        )
    return found


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[StaleTemp]:
    """Remove the provably stale leftovers in ``folder``; returns what was found (``removable`` ones are gone)."""
    found = find_stale_temps(folder)
    for temp in found:
        if not temp.removable:
            continue
        if temp.kind == "folder":
            shutil.rmtree(temp.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp.path)
    return found


def _keeps(info: os.stat_result, ours: re.Match[str] | None) -> str | None:
    """Why a leftover stays (``None``: it may go)."""
    if ours is None:
        return "named by an older keyguard, without the process that made it: remove it by hand if no keyguard runs"
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return "not a plain file or folder"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return f"belongs to another user (uid {info.st_uid})"
    host = ours.group("host")  # checked before the process: off Linux, os.kill(pid, 0) would end the process
    if host == UNKNOWN_HOST or host != host_token():
        return "made on another machine, boot or container: whether its process is gone cannot be told from here"
    pid = int(ours.group("pid"))
    if _alive(pid):
        return f"process {pid} is still running (perhaps still writing it)"
    return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True  # cannot tell: keep it
    return True


def _size(path: str, info: os.stat_result) -> int:
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
