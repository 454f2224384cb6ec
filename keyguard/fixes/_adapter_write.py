"""Writing a fixed PEFT adapter folder: the weights with the plan applied, the config and small companions copied.

The folder is assembled in a staging folder beside the output (``.NAME.keyguard-PID-HOST-*``) and renamed into place
in one step, so the output is either absent or complete. The weights go through ``write_fixed`` (verified: every
tensor's bytes against the source's), as ``adapter_model.safetensors`` whatever the source held (PEFT loads it
before a ``.bin``). ``adapter_config.json`` is copied unchanged: the plan renames tensors, and the config names
modules of the base, which a renamed key does not change.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence

from keyguard._atomic import atomic_output, fsync_dir, new_mode, temp_prefix
from keyguard._exceptions import WriteError
from keyguard._progress import Progress
from keyguard.fixes._plan import Plan
from keyguard.fixes._sharded_write import companions
from keyguard.fixes._writer import WriteResult, write_fixed
from keyguard.sources._adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_weights
from keyguard.sources._jsonfile import MAX_JSON_FILE
from keyguard.sources._readfile import read_bounded

WEIGHTS = "adapter_model.safetensors"


def write_fixed_adapter(
    adapter_dir: str | os.PathLike[str],
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    drop: Sequence[str] = (),
    progress: bool | Progress | None = None,
) -> WriteResult:
    """Write the PEFT adapter folder ``adapter_dir`` with ``plan`` applied to its weights, as the new folder ``output``.

    Args:
        adapter_dir: the adapter folder (``adapter_config.json`` and ``adapter_model.safetensors`` or ``.bin``).
        plan: the rules to apply to the weights' keys (``check_adapter(...).plan``, or a reviewed plan).
        output: the folder to create; it must not exist.
        drop: keys to leave out of the weights.
        progress: as for ``write_fixed``.

    Raises:
        PlanError: the plan does not fit the weights; nothing is written.
        WriteError: the output exists, its parent does not, or writing or verification failed; nothing is left.
        SourceError: the adapter folder cannot be read.
    """
    from keyguard.sources._resolve import read_keys

    folder, out = os.fspath(adapter_dir), os.fspath(output)
    weights = adapter_weights(folder)
    keys = read_keys(weights)  # the weights file in its own format: safetensors, or a pickle read safely
    parent = os.path.dirname(os.path.abspath(out)) or "."
    if os.path.lexists(out):
        raise WriteError(f"{out}: already exists; a fixed adapter goes to a new folder")
    if not os.path.isdir(parent):
        raise WriteError(f"{out}: writing failed: {FileNotFoundError(errno.ENOENT, 'no such folder', parent)}")
    config = read_bounded(os.path.join(folder, ADAPTER_CONFIG), MAX_JSON_FILE)
    try:
        staging = tempfile.mkdtemp(prefix=temp_prefix(os.path.basename(os.path.abspath(out))), dir=parent)
    except OSError as exc:
        raise WriteError(f"{out}: writing failed: {exc}") from exc
    try:
        os.chmod(staging, new_mode(folder))  # mkdtemp makes 0700: the folder's own permissions, less the umask
        result = write_fixed(keys, plan, os.path.join(staging, WEIGHTS), drop=drop, progress=progress)
        with atomic_output(os.path.join(staging, ADAPTER_CONFIG), like=os.path.join(folder, ADAPTER_CONFIG)) as f:
            f.write(config)
        for name in companions(folder, {ADAPTER_CONFIG, *ADAPTER_WEIGHTS}):
            shutil.copy2(os.path.join(folder, name), os.path.join(staging, name))
        fsync_dir(staging)
        os.rename(staging, out)
        fsync_dir(parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, WriteError):
            raise
        raise WriteError(f"{out}: writing failed: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = [os.path.join(out, WEIGHTS), os.path.join(out, ADAPTER_CONFIG)]
    return WriteResult(out, result.changes, result.bytes_written + len(config), files)
