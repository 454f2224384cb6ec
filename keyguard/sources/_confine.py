"""One rule for files a checkpoint folder names (shards, adapter weights): they stay in the checkpoint's own tree.

A name that is a symlink may lead anywhere; following it would let a folder make keyguard read elsewhere. The
checkpoint's own tree is its folder, or, for a snapshot in the Hugging Face cache
(``models--ORG--NAME/snapshots/REV/``, whose files are symlinks to ``../../blobs/SHA``), that folder and the
blobs of the same cached repository.
"""

from __future__ import annotations

import os

_CACHE_KINDS = ("models--", "datasets--", "spaces--")


def escapes(folder: str, path: str) -> str | None:
    """Where ``path`` (a file named by the checkpoint in ``folder``) really leads, when that is outside the
    checkpoint's own tree; ``None`` when it stays inside."""
    real = os.path.realpath(path)
    return None if any(_within(real, root) for root in roots(folder)) else real


def roots(folder: str) -> list[str]:
    """The real folders a checkpoint in ``folder`` may read from."""
    folder = os.path.abspath(folder)
    allowed = [os.path.realpath(folder)]
    snapshots = os.path.dirname(folder)
    repo = os.path.dirname(snapshots)
    blobs = os.path.join(repo, "blobs")
    if (
        os.path.basename(snapshots) == "snapshots"
        and os.path.basename(repo).startswith(_CACHE_KINDS)
        and os.path.isdir(blobs)
    ):
        allowed.append(os.path.realpath(blobs))
    return allowed


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # different drives
        return False
